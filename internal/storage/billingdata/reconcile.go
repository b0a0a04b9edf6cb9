package billingdata

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/usagemeter/metering/internal/storage"
)

// GroupPush is a push of a Stripe group (customer, event name, billed
// month) as the check of old pushes against Stripe's summary reads it.
type GroupPush struct {
	ID                                int64
	Tenant, Metric, Status            string
	GroupKey                          string
	Identifier, Cumulative            string
	Delta                             pgtype.Numeric
	Period, EventTime                 time.Time
	SentAt                            *time.Time
	RecentlyCancelled, PeriodIsClosed bool
}

// LockGroupPushes reads and locks (FOR UPDATE, until the transaction q
// ends) every push of the group that may count towards its summary:
// open, sent and cancelled ones, in id order. RecentlyCancelled is set on
// pushes cancelled within lag; PeriodIsClosed when the tenant's billed
// month is closed.
func LockGroupPushes(ctx context.Context, q storage.Executor, customer, eventName string, billed time.Time, lag time.Duration) ([]GroupPush, error) {
	rows, err := q.Query(ctx, `SELECT p.id, p.tenant, p.metric, p.status, p.identifier, p.cumulative_total::text, p.delta, p.period_start,
				p.event_timestamp, p.sent_at, (p.status = 'cancelled' AND p.updated_at > now() - $4::interval),
				EXISTS (SELECT 1 FROM billing_periods bp WHERE bp.tenant = p.tenant AND bp.period_start = p.billed_period_start), p.group_key
			FROM billing_pushes p
			WHERE p.stripe_customer_id = $1 AND p.event_name = $2 AND p.billed_period_start = $3 AND p.status IN ('intent', 'dead', 'sent', 'cancelled')
				AND (p.status <> 'intent' OR `+notBehindHeld+`)
			ORDER BY p.id FOR UPDATE`, customer, eventName, billed, lag.String())
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (GroupPush, error) {
		var x GroupPush
		err := r.Scan(&x.ID, &x.Tenant, &x.Metric, &x.Status, &x.Identifier, &x.Cumulative, &x.Delta, &x.Period, &x.EventTime, &x.SentAt, &x.RecentlyCancelled, &x.PeriodIsClosed, &x.GroupKey)
		return x, err
	})
}

// MarkLanded records open push id as sent at at without a call, Stripe's
// summary showing it arrived; note says why. The caller holds the row
// lock (LockGroupPushes).
func MarkLanded(ctx context.Context, q storage.Executor, id int64, at time.Time, note string) error {
	_, err := q.Exec(ctx, `UPDATE billing_pushes SET status = 'sent', sent_at = $2, updated_at = now(),
					last_error = $3 WHERE id = $1`, id, at, note)
	return err
}

// CancelReplaced cancels open push id in the ledger, to be replaced by
// what of it arrived and its shortfall; note says why. The caller holds
// the row lock (LockGroupPushes).
func CancelReplaced(ctx context.Context, q storage.Executor, id int64, note string) error {
	_, err := q.Exec(ctx, `UPDATE billing_pushes SET status = 'cancelled', updated_at = now(), last_error = $2 WHERE id = $1`, id, note)
	return err
}

// InsertLandedPart records, as a sent push under identifier created at
// at, the part delta of push id that Stripe's summary showed arrived; it
// copies the rest of the row from push id.
func InsertLandedPart(ctx context.Context, q storage.Executor, id int64, delta, identifier string, at time.Time, note string) error {
	_, err := q.Exec(ctx, `INSERT INTO billing_pushes (tenant, metric, period_start, billed_period_start, stripe_customer_id, event_name,
				cumulative_total, delta, identifier, event_timestamp, status, sent_at, last_error, created_at, group_key, metered_snapshot)
			SELECT tenant, metric, period_start, billed_period_start, stripe_customer_id, event_name, cumulative_total, $2::numeric, $3, event_timestamp,
				'sent', $4, $5, $4, group_key, metered_snapshot FROM billing_pushes WHERE id = $1`, id, delta, identifier, at, note)
	return err
}

// InsertShortfall records intent p, the missing part of a replaced push,
// with note as its last_error, unless a push with its identifier exists
// (recorded by an earlier check); it returns the new push's id and
// whether it was recorded.
func InsertShortfall(ctx context.Context, q storage.Executor, p Intent, note string) (int64, bool, error) {
	var id int64
	err := q.QueryRow(ctx, `INSERT INTO billing_pushes (tenant, metric, period_start, billed_period_start, stripe_customer_id, event_name,
			cumulative_total, delta, identifier, event_timestamp, carried, last_error, created_at, updated_at, group_key, metered_snapshot)
		VALUES ($1, $2, $3, $4, $5, $6, $7::numeric, $8::numeric, $9, $10, $11, $12, $13, $13, $14,
			-- the snapshot of the replaced push, which had this cumulative total
			(SELECT metered_snapshot FROM billing_pushes WHERE tenant = $1 AND metric = $2 AND group_key = $14 AND period_start = $3
				AND cumulative_total = $7::numeric AND metered_snapshot IS NOT NULL ORDER BY id LIMIT 1))
		ON CONFLICT (identifier) DO NOTHING RETURNING id`,
		p.Tenant, p.Metric, p.Period, p.Billed, p.Customer, p.EventName, p.Cumulative, p.Delta, p.Identifier, p.EventTime, p.Carried,
		note, p.CreatedAt, p.GroupKey).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	return id, true, nil
}

// PeriodTotal is one tenant, meter and group of a month: its Stripe
// mapping, metered total and the sums of its pushes by status. Metric is
// the quota's metric; Meter the meter billed (the metric for its implicit
// meter) with, for a defined one (Defined), its GroupBy, Aggregation and
// the quota's Filter; GroupKey the group as stored, Group the key itself.
type PeriodTotal struct {
	Tenant, Metric, Customer, EventName string
	Meter, GroupKey, Group              string
	Defined                             bool
	Aggregation                         string
	GroupBy                             []string
	Filter                              map[string]string
	Metered, Reported, InFlight         pgtype.Numeric
	Dead                                int
	Discarded, CarriedOut, CarriedIn    pgtype.Numeric
	LastSent                            *time.Time
	// Held is the quantity of the period's held pushes, HeldID the
	// oldest's id (0 for none) and HeldReason its reason.
	Held       pgtype.Numeric
	HeldID     int64
	HeldReason string
	// PeriodStart and PeriodEnd are the tenant's billing period the row
	// is of.
	PeriodStart, PeriodEnd time.Time
}

// PeriodTotals reads, for every tenant, billed meter and group with usage
// or pushes in the tenant's billing periods of the month starting at
// month (every period starting in that month, two or more when the
// tenant's cycle changed in it, or else the longer one spanning it; the
// calendar month for a tenant without a billing cycle), by tenant,
// period, metric, meter and group:
// the metered total, what was reported (sent), what is in flight
// (intents and dead), how many are dead, what was discarded, what was
// carried out of the period and into it, and when a push billed in it was
// last sent. Implicit meters have one row (the empty group); a defined
// meter with a billed quota has one per group of its usage or pushes. A
// tenant without a plan assignment in force is billed by defaultPlan
// ("" for none), as in Deltas.
func PeriodTotals(ctx context.Context, q storage.Executor, month time.Time, defaultPlan string) ([]PeriodTotal, error) {
	rows, err := q.Query(ctx, `WITH RECURSIVE periods AS (
			SELECT t.tenant, b.period_start AS ps, b.period_end AS pe
			FROM tenants t CROSS JOIN LATERAL billing_period(t.tenant, $1::timestamptz) b
			UNION ALL
			SELECT p.tenant, b.period_start, b.period_end
			FROM periods p CROSS JOIN LATERAL billing_period(p.tenant, p.pe) b
			WHERE p.pe < ($1::timestamptz AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC'
		), tp AS (
			SELECT tenant, ps, pe, least(now(), pe - interval '1 microsecond') AS billed_at FROM periods
			WHERE ps >= $1::timestamptz OR pe >= ($1::timestamptz AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC'
		), groups AS (
			SELECT w.tenant, w.meter, w.group_key FROM usage_windows w JOIN tp ON tp.tenant = w.tenant
			WHERE w.granularity = 'month' AND w.window_start = tp.ps AND w.group_key <> ''
			UNION
			SELECT b.tenant, b.metric, b.group_key FROM billing_pushes b JOIN tp ON tp.tenant = b.tenant
			WHERE (b.period_start = tp.ps OR b.billed_period_start = tp.ps) AND b.group_key <> ''
		), keys AS (
			SELECT t.tenant, tp.ps, q.metric, q.metric AS meter, '' AS group_key, false AS defined, coalesce(t.stripe_customer_id, '') AS customer,
				q.stripe_event_name, '' AS aggregation, '{}'::text[] AS group_by, q.group_filter
			FROM tenants t JOIN tp ON tp.tenant = t.tenant
			JOIN plan_quotas q ON q.plan = tenant_billed_plan_at(t.tenant, tp.billed_at, $2)
				AND q.version = plan_version_at(q.plan, tp.billed_at) AND q.meter IS NULL
			UNION ALL
			SELECT t.tenant, tp.ps, q.metric, q.meter, coalesce(g.group_key, ''), true, coalesce(t.stripe_customer_id, ''),
				q.stripe_event_name, m.aggregation, m.group_by, q.group_filter
			FROM tenants t JOIN tp ON tp.tenant = t.tenant
			JOIN plan_quotas q ON q.plan = tenant_billed_plan_at(t.tenant, tp.billed_at, $2)
				AND q.version = plan_version_at(q.plan, tp.billed_at) AND q.meter IS NOT NULL AND q.stripe_event_name IS NOT NULL
			JOIN meters m ON m.name = q.meter
			LEFT JOIN groups g ON g.tenant = t.tenant AND g.meter = q.meter AND cardinality(m.group_by) > 0
		), pushes AS (
			SELECT b.tenant, tp.ps, b.metric, b.group_key,
				sum(b.delta) FILTER (WHERE b.period_start = tp.ps AND b.status = 'sent') AS reported,
				sum(b.delta) FILTER (WHERE b.period_start = tp.ps AND b.status IN ('intent', 'dead')) AS in_flight,
				count(*) FILTER (WHERE b.period_start = tp.ps AND b.status = 'dead') AS dead,
				sum(b.delta) FILTER (WHERE b.period_start = tp.ps AND b.status = 'discarded') AS discarded,
				sum(b.delta) FILTER (WHERE b.period_start = tp.ps AND b.status = 'sent' AND b.billed_period_start <> tp.ps) AS carried_out,
				sum(b.delta) FILTER (WHERE b.billed_period_start = tp.ps AND b.period_start <> tp.ps AND b.status = 'sent') AS carried_in,
				max(b.sent_at) FILTER (WHERE b.billed_period_start = tp.ps) AS last_sent,
				sum(b.delta) FILTER (WHERE b.period_start = tp.ps AND b.status = 'held') AS held,
				min(b.id) FILTER (WHERE b.period_start = tp.ps AND b.status = 'held') AS held_id,
				(array_agg(b.hold_reason ORDER BY b.id) FILTER (WHERE b.period_start = tp.ps AND b.status = 'held'))[1] AS held_reason
			FROM billing_pushes b JOIN tp ON tp.tenant = b.tenant
			WHERE b.period_start = tp.ps OR b.billed_period_start = tp.ps GROUP BY 1, 2, 3, 4
		)
		SELECT k.tenant, k.metric, k.meter, k.group_key, coalesce(gk.group_key, k.group_key), k.defined, k.customer, k.stripe_event_name,
			k.aggregation, k.group_by, k.group_filter, coalesce(w.value, 0),
			coalesce(p.reported, 0), coalesce(p.in_flight, 0), coalesce(p.dead, 0), coalesce(p.discarded, 0), coalesce(p.carried_out, 0), coalesce(p.carried_in, 0), p.last_sent,
			tp.ps, tp.pe, coalesce(p.held, 0), coalesce(p.held_id, 0), coalesce(p.held_reason, '')
		FROM keys k
		JOIN tp ON tp.tenant = k.tenant AND tp.ps = k.ps
		LEFT JOIN usage_windows w ON w.tenant = k.tenant AND w.meter = k.meter AND w.group_key = k.group_key AND w.granularity = 'month' AND w.window_start = tp.ps
		LEFT JOIN pushes p ON p.tenant = k.tenant AND p.ps = k.ps AND p.metric = k.meter AND p.group_key = k.group_key
		LEFT JOIN meter_group_keys gk ON gk.meter = k.meter AND gk.digest = k.group_key
		WHERE w.tenant IS NOT NULL OR p.tenant IS NOT NULL
		ORDER BY k.tenant, k.ps, k.metric, k.meter COLLATE "C", k.group_key COLLATE "C"`, month, defaultPlan)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (PeriodTotal, error) {
		var x PeriodTotal
		err := r.Scan(&x.Tenant, &x.Metric, &x.Meter, &x.GroupKey, &x.Group, &x.Defined, &x.Customer, &x.EventName, &x.Aggregation, &x.GroupBy, &x.Filter,
			&x.Metered, &x.Reported, &x.InFlight, &x.Dead, &x.Discarded, &x.CarriedOut, &x.CarriedIn, &x.LastSent, &x.PeriodStart, &x.PeriodEnd,
			&x.Held, &x.HeldID, &x.HeldReason)
		x.PeriodStart, x.PeriodEnd = x.PeriodStart.UTC(), x.PeriodEnd.UTC()
		return x, err
	})
}
