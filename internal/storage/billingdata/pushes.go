package billingdata

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/usagemeter/metering/internal/storage"
)

// Push statuses: a push is recorded as an intent and moves forward to
// sent, dead (the billing DLQ), cancelled or discarded; or it is held
// (StatusHeld, holds.go) and approved back to intent or discarded.
const (
	StatusIntent    = "intent"
	StatusSent      = "sent"
	StatusDead      = "dead"
	StatusCancelled = "cancelled"
	StatusDiscarded = "discarded"
)

// Intent is a push about to be sent: it claims Delta of (Tenant, Metric,
// GroupKey, Period), bringing the claimed total to Cumulative, and is billed in the
// month Billed of the Stripe customer's EventName meter.
type Intent struct {
	Tenant, Metric      string
	GroupKey            string // as usage_windows stores it; "" for a meter without groups
	Period, Billed      time.Time
	Customer, EventName string
	Cumulative, Delta   string // decimal integers
	Identifier          string
	EventTime           time.Time
	Carried             bool
	CreatedAt           time.Time // also its updated_at
	// Snapshot is the snapshot Cumulative was read in ("": unknown).
	Snapshot string
}

// InsertIntent records intent p, unless a push with its identifier
// exists already (then it waits for a concurrent insert of it to end),
// and reports whether it did.
func InsertIntent(ctx context.Context, q storage.Executor, p Intent) (bool, error) {
	tag, err := q.Exec(ctx, `INSERT INTO billing_pushes (tenant, metric, period_start, billed_period_start, stripe_customer_id, event_name,
					cumulative_total, delta, identifier, event_timestamp, carried, created_at, updated_at, group_key, metered_snapshot)
				VALUES ($1, $2, $3, $4, $5, $6, $7::numeric, $8::numeric, $9, $10, $11, $12, $12, $13, nullif($14, '')::pg_snapshot) ON CONFLICT (identifier) DO NOTHING`,
		p.Tenant, p.Metric, p.Period, p.Billed, p.Customer, p.EventName, p.Cumulative, p.Delta, p.Identifier, p.EventTime, p.Carried, p.CreatedAt, p.GroupKey, p.Snapshot)
	if err != nil {
		return false, err
	}
	return tag.RowsAffected() == 1, nil
}

// Pair is a (tenant, metric, group, month) to plan, with the Stripe group
// its intent goes to (customer, event name, billed month). Metric is the
// meter (the metric itself for its implicit meter).
type Pair struct {
	Tenant, Metric      string
	GroupKey            string // as usage_windows stores it
	Period              time.Time
	Customer, EventName string
	Billed              time.Time
}

// PairTotals are, for one (tenant, metric, month), the metered total, the
// total claimed by its pushes (every status but cancelled) less the
// quantity its customer credits gave back (credits.go), and how many of
// its pushes were cancelled plus how many credits it has (the generation
// of its identifiers).
type PairTotals struct {
	Metered, Claimed pgtype.Numeric
	Cancelled        int
	// Snapshot is the snapshot Metered was read in (pg_snapshot text):
	// an intent records it for lineage.
	Snapshot string
}

// LockAndReadPair reads p's totals in one round trip, after taking, with
// lock, the pair's lock and then its group's (locks.go); q must then be a
// transaction, which holds them until it ends.
func LockAndReadPair(ctx context.Context, q storage.Executor, p Pair, lock bool) (PairTotals, error) {
	var t PairTotals
	b := &pgx.Batch{}
	if lock {
		lockQueuePair(b, p.Tenant, p.Metric, p.GroupKey, p.Period)
		lockQueueGroup(b, p.Customer, p.EventName, p.Billed)
	}
	b.Queue(`SELECT coalesce((SELECT value FROM usage_windows WHERE tenant = $1 AND meter = $2 AND group_key = $4 AND granularity = 'month' AND window_start = $3), 0),
				coalesce(sum(delta) FILTER (WHERE status <> 'cancelled'), 0) - `+pairCreditedSQL+`,
				count(*) FILTER (WHERE status = 'cancelled') + `+pairCreditsSQL+`,
				pg_current_snapshot()::text
			FROM billing_pushes WHERE tenant = $1 AND metric = $2 AND period_start = $3 AND group_key = $4`, p.Tenant, p.Metric, p.Period, p.GroupKey).QueryRow(func(row pgx.Row) error {
		return row.Scan(&t.Metered, &t.Claimed, &t.Cancelled, &t.Snapshot)
	})
	if err := q.SendBatch(ctx, b).Close(); err != nil {
		return PairTotals{}, err
	}
	return t, nil
}

// Delta is a (tenant, metric, group, month) whose metered total exceeds
// what its pushes claim, with its Stripe mapping (Customer empty when the
// tenant has none; EventName the quota's, with {property} placeholders on
// a defined meter) and whether its invoice is final (a closed billing
// period). Metric is the meter billed: the metric itself for its implicit
// meter.
type Delta struct {
	Tenant, Metric, Customer, EventName string
	// GroupKey is the group as usage_windows stores it; Group the key
	// itself (a digest resolved through meter_group_keys).
	GroupKey, Group string
	// Meter is the quota's defined meter, with its GroupBy, Aggregation
	// and the quota's Filter; empty for an implicit meter.
	Meter, Aggregation string
	GroupBy            []string
	Filter             map[string]string
	Period             time.Time
	Metered, Claimed   pgtype.Numeric
	Cancelled          int
	Final              bool
	// HoldOnAnomaly is the billed plan version's hold_on_anomaly (JSON;
	// nil when the plan does not hold pushes).
	HoldOnAnomaly []byte
}

// Deltas reads every delta of the months from oldest on, by tenant,
// metric, group and month: of implicit meters whose quota is billed, and
// of every group of defined meters a billed quota names (the caller
// applies the quota's filter and event name to the group). A tenant
// without a plan assignment in force in a month is billed by the
// version of defaultPlan in force then ("" for none: not billed).
func Deltas(ctx context.Context, q storage.Executor, oldest time.Time, defaultPlan string) ([]Delta, error) {
	// The windows with something left to claim are found first, joined
	// only on equalities (a hash join each), and materialized; the plan in
	// force, which takes a function call per window, is looked up for
	// those alone. A sync with nothing new thus calls no function, and the
	// planner cannot mistake the function-filtered join for a single row
	// and loop over the claims of every window for each.
	rows, err := q.Query(ctx, `WITH open AS MATERIALIZED (
			SELECT w.tenant, w.meter, w.group_key, w.window_start, w.value,
				coalesce(p.claimed, 0) - coalesce(c.credited, 0) AS claimed,
				coalesce(p.cancelled, 0) + coalesce(c.credits, 0) AS cancelled,
				(bp.tenant IS NOT NULL) AS final
			FROM usage_windows w
			LEFT JOIN (SELECT tenant, metric, group_key, period_start, sum(delta) FILTER (WHERE status <> 'cancelled') AS claimed,
					count(*) FILTER (WHERE status = 'cancelled') AS cancelled
				FROM billing_pushes WHERE period_start >= $1 GROUP BY 1, 2, 3, 4) p
				ON p.tenant = w.tenant AND p.metric = w.meter AND p.group_key = w.group_key AND p.period_start = w.window_start
			LEFT JOIN billing_periods bp ON bp.tenant = w.tenant AND bp.period_start = w.window_start
			LEFT JOIN `+creditsSince("$1")+` c
				ON c.tenant = w.tenant AND c.metric = w.meter AND c.group_key = w.group_key AND c.period_start = w.window_start
			WHERE w.granularity = 'month' AND w.window_start >= $1 AND w.value > coalesce(p.claimed, 0) - coalesce(c.credited, 0))
		SELECT w.tenant, w.meter, w.group_key, coalesce(gk.group_key, w.group_key), w.window_start, w.value,
			coalesce(t.stripe_customer_id, ''), q.stripe_event_name, coalesce(q.meter, ''), coalesce(m.aggregation, ''), coalesce(m.group_by, '{}'), q.group_filter,
			w.claimed, w.cancelled, w.final, pv.hold_on_anomaly
		FROM open w
		JOIN tenants t ON t.tenant = w.tenant
		JOIN plan_quotas q ON q.plan = tenant_billed_plan_at(t.tenant, `+periodInForce("w.tenant", "w.window_start")+`, $2)
			AND q.version = plan_version_at(q.plan, `+periodInForce("w.tenant", "w.window_start")+`) AND q.stripe_event_name IS NOT NULL
			AND ((q.meter IS NULL AND q.metric = w.meter AND w.group_key = '') OR q.meter = w.meter)
		JOIN plan_versions pv ON pv.plan = q.plan AND pv.version = q.version
		LEFT JOIN meters m ON m.name = q.meter
		LEFT JOIN meter_group_keys gk ON gk.meter = w.meter AND gk.digest = w.group_key
		ORDER BY w.tenant, w.meter, w.group_key COLLATE "C", w.window_start`, oldest, defaultPlan)
	if err != nil {
		return nil, err
	}
	var ds []Delta
	for rows.Next() {
		var d Delta
		if err := rows.Scan(&d.Tenant, &d.Metric, &d.GroupKey, &d.Group, &d.Period, &d.Metered, &d.Customer, &d.EventName, &d.Meter, &d.Aggregation,
			&d.GroupBy, &d.Filter, &d.Claimed, &d.Cancelled, &d.Final, &d.HoldOnAnomaly); err != nil {
			rows.Close()
			return nil, err
		}
		ds = append(ds, d)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return ds, nil
}

// periodInForce is the SQL instant whose plan and plan version bill the
// billing period of tenant starting at start (SQL expressions): its last
// microsecond (the period's end from billing_period, migration 0025), or
// now while it lasts: the version in force at the end of the period, as
// the quotas of the period under the 'immediate' policy.
func periodInForce(tenant, start string) string {
	return "least(now(), (billing_period(" + tenant + ", " + start + ")).period_end - interval '1 microsecond')"
}

// Push is a row of billing_pushes as the sender needs it.
type Push struct {
	ID                                  int64
	Tenant, Metric, Customer, EventName string
	GroupKey                            string
	Identifier, Delta, Cumulative       string // decimal integers
	Status                              string
	Period, Billed                      time.Time
	EventTime, Created                  time.Time
	Attempts                            int
}

// pushesWhere reads the pushes where selects, in id order.
func pushesWhere(ctx context.Context, q storage.Executor, where string, args ...any) ([]Push, error) {
	rows, err := q.Query(ctx, `SELECT id, tenant, metric, stripe_customer_id, event_name, identifier, delta::text, cumulative_total::text,
		status, period_start, billed_period_start, event_timestamp, created_at, attempts, group_key FROM billing_pushes p WHERE `+where+` ORDER BY id`, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Push, error) {
		var p Push
		err := r.Scan(&p.ID, &p.Tenant, &p.Metric, &p.Customer, &p.EventName, &p.Identifier, &p.Delta, &p.Cumulative,
			&p.Status, &p.Period, &p.Billed, &p.EventTime, &p.Created, &p.Attempts, &p.GroupKey)
		return p, err
	})
}

// Intents reads every intent not waiting behind a held push, in id order.
func Intents(ctx context.Context, q storage.Executor) ([]Push, error) {
	return pushesWhere(ctx, q, `status = 'intent' AND `+notBehindHeld)
}

// OpenPushes reads every intent and, with dead, every dead push, in id
// order, but intents waiting behind a held push.
func OpenPushes(ctx context.Context, q storage.Executor, dead bool) ([]Push, error) {
	status := []string{StatusIntent}
	if dead {
		status = append(status, StatusDead)
	}
	return pushesWhere(ctx, q, `status = ANY($1) AND (status <> 'intent' OR `+notBehindHeld+`)`, status)
}

// IntentsByID reads the pushes ids that are still intents and wait
// behind no held push, in id order.
func IntentsByID(ctx context.Context, q storage.Executor, ids []int64) ([]Push, error) {
	return pushesWhere(ctx, q, `id = ANY($1) AND status = 'intent' AND `+notBehindHeld, ids)
}

// CountOpen counts the intents and the dead pushes.
func CountOpen(ctx context.Context, q storage.Executor) (intents, dead int, err error) {
	err = q.QueryRow(ctx, `SELECT count(*) FILTER (WHERE status = 'intent'), count(*) FILTER (WHERE status = 'dead')
		FROM billing_pushes WHERE status IN ('intent', 'dead')`).Scan(&intents, &dead)
	return intents, dead, err
}

// StampSending stamps sent_at = at on push id before a call to Stripe, if
// it still has status; it reports false when it no longer has (another
// biller settled it), and the call must not happen.
func StampSending(ctx context.Context, q storage.Executor, id int64, status string, at time.Time) (bool, error) {
	tag, err := q.Exec(ctx, `UPDATE billing_pushes SET sent_at = $3 WHERE id = $1 AND status = $2`, id, status, at)
	if err != nil {
		return false, err
	}
	return tag.RowsAffected() == 1, nil
}

// MarkSent records push id as sent at at after attempts more calls, if it
// still has status; a push another biller settled is left as it is.
func MarkSent(ctx context.Context, q storage.Executor, id int64, status string, at time.Time, attempts int) error {
	_, err := q.Exec(ctx, `UPDATE billing_pushes SET status = 'sent', sent_at = $3, updated_at = now(),
			attempts = attempts + $4, last_error = '' WHERE id = $1 AND status = $2`, id, status, at, attempts)
	return err
}

// MarkDead moves push id to the billing DLQ after attempts more calls,
// the last failing with lastErr, if it still has status; it reports
// whether it moved. The caller queues the dead letter's message in the
// same transaction when it did.
func MarkDead(ctx context.Context, q storage.Executor, id int64, status string, attempts int, lastErr string) (bool, error) {
	tag, err := q.Exec(ctx, `UPDATE billing_pushes SET status = 'dead', updated_at = now(), attempts = attempts + $3, last_error = $4
			WHERE id = $1 AND status = $2`, id, status, attempts, lastErr)
	if err != nil {
		return false, err
	}
	return tag.RowsAffected() == 1, nil
}

// LockStatus locks push id's row until the transaction q ends and returns
// its status (pgx.ErrNoRows when there is no such push).
func LockStatus(ctx context.Context, q storage.Executor, id int64) (string, error) {
	var status string
	err := q.QueryRow(ctx, `SELECT status FROM billing_pushes WHERE id = $1 FOR UPDATE`, id).Scan(&status)
	return status, err
}

// MarkCancelled records push id as cancelled in Stripe; the caller holds
// its row lock (LockStatus) and checked it was sent.
func MarkCancelled(ctx context.Context, q storage.Executor, id int64) error {
	_, err := q.Exec(ctx, `UPDATE billing_pushes SET status = 'cancelled', updated_at = now() WHERE id = $1`, id)
	return err
}

// OverReported is the latest sent push of a month whose claimed total
// exceeds its metered one.
type OverReported struct {
	ID                              int64
	EventName, Identifier, Customer string
	Billed                          time.Time
}

// FindOverReported reads the latest sent push of every (tenant, metric,
// group, month) from oldest on whose claimed total exceeds the metered one,
// when it was sent after sentAfter and the invoice of the month it was
// billed in is not final (cancelling it would change no invoice: the
// excess is credited instead, FindOverClaimed).
func FindOverReported(ctx context.Context, q storage.Executor, oldest, sentAfter time.Time) ([]OverReported, error) {
	rows, err := q.Query(ctx, `WITH months AS (
			SELECT tenant, metric, group_key, period_start, sum(delta) FILTER (WHERE status <> 'cancelled') AS claimed,
				max(id) FILTER (WHERE status = 'sent') AS last_sent, count(*) FILTER (WHERE status = 'held') AS held
			FROM billing_pushes WHERE period_start >= $1 GROUP BY 1, 2, 3, 4)
		SELECT p.id, p.event_name, p.identifier, p.stripe_customer_id, p.billed_period_start FROM months m
		JOIN billing_pushes p ON p.id = m.last_sent
		LEFT JOIN usage_windows w ON w.tenant = m.tenant AND w.meter = m.metric AND w.group_key = m.group_key AND w.granularity = 'month' AND w.window_start = m.period_start
		LEFT JOIN `+creditsSince("$1")+` c ON c.tenant = m.tenant AND c.metric = m.metric AND c.group_key = m.group_key AND c.period_start = m.period_start
		LEFT JOIN billing_periods bp ON bp.tenant = m.tenant AND bp.period_start = p.billed_period_start
		WHERE m.claimed - coalesce(c.credited, 0) > coalesce(w.value, 0) AND p.sent_at > $2 AND bp.tenant IS NULL AND m.held = 0`, oldest, sentAfter)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (OverReported, error) {
		var v OverReported
		return v, r.Scan(&v.ID, &v.EventName, &v.Identifier, &v.Customer, &v.Billed)
	})
}

// ErrNoPush is returned for a push id that does not exist.
var ErrNoPush = errors.New("no such push")

// DeadPush is a push as the billing DLQ shows it.
type DeadPush struct {
	ID          int64     `json:"id"`
	Tenant      string    `json:"tenant"`
	Metric      string    `json:"metric"`
	Period      string    `json:"period"`
	Value       string    `json:"value"`
	Cumulative  string    `json:"cumulative_total"`
	Identifier  string    `json:"identifier"`
	EventName   string    `json:"event_name"`
	Customer    string    `json:"stripe_customer_id"`
	Attempts    int       `json:"attempts"`
	LastError   string    `json:"last_error"`
	Status      string    `json:"status"`
	DeadSince   time.Time `json:"dead_since"`
	EventTime   time.Time `json:"event_timestamp"`
	CarriedLate bool      `json:"carried"`
	GroupKey    string    `json:"group_key"`
}

const pushesDeadColumns = `id, tenant, metric, to_char(period_start AT TIME ZONE 'UTC', 'YYYY-MM'), delta::text, cumulative_total::text,
	identifier, event_name, stripe_customer_id, attempts, last_error, status, updated_at, event_timestamp, carried, group_key`

func pushesDeadScan(r pgx.CollectableRow) (DeadPush, error) {
	var d DeadPush
	err := r.Scan(&d.ID, &d.Tenant, &d.Metric, &d.Period, &d.Value, &d.Cumulative, &d.Identifier, &d.EventName, &d.Customer,
		&d.Attempts, &d.LastError, &d.Status, &d.DeadSince, &d.EventTime, &d.CarriedLate, &d.GroupKey)
	return d, err
}

// DeadPushes lists the dead pushes, oldest first.
func DeadPushes(ctx context.Context, q storage.Executor) ([]DeadPush, error) {
	rows, err := q.Query(ctx, `SELECT `+pushesDeadColumns+` FROM billing_pushes WHERE status = 'dead' ORDER BY id`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pushesDeadScan)
}

// DeadPushByID reads push id as the DLQ shows it, whatever its status, or
// returns ErrNoPush.
func DeadPushByID(ctx context.Context, q storage.Executor, id int64) (DeadPush, error) {
	rows, err := q.Query(ctx, `SELECT `+pushesDeadColumns+` FROM billing_pushes WHERE id = $1`, id)
	if err != nil {
		return DeadPush{}, err
	}
	d, err := pgx.CollectExactlyOneRow(rows, pushesDeadScan)
	if errors.Is(err, pgx.ErrNoRows) {
		return DeadPush{}, ErrNoPush
	}
	return d, err
}
