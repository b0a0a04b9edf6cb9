package billingdata

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/price"
	"github.com/usagemeter/metering/internal/storage"
	"github.com/usagemeter/metering/internal/storage/deadletters"
)

// creditsSince is the quantity credited (credited) and the number of
// credits (credits) of each (tenant, metric, group_key, period_start) of
// periods starting at or after the statement's parameter oldest (such as
// "$1"), so a sync reads only the credits of the periods it looks at:
// every credit counts, whatever its status, as a push counts as claimed
// until cancelled.
func creditsSince(oldest string) string {
	return `(SELECT tenant, metric, group_key, period_start, sum(quantity) AS credited, count(*) AS credits
	FROM billing_credits WHERE period_start >= ` + oldest + ` GROUP BY 1, 2, 3, 4)`
}

// pairCreditedSQL and pairCreditsSQL are creditsSince's columns for the
// pair of parameters $1 tenant, $2 metric, $3 period_start, $4 group_key.
const (
	pairCreditedSQL = `coalesce((SELECT sum(quantity) FROM billing_credits WHERE tenant = $1 AND metric = $2 AND period_start = $3 AND group_key = $4), 0)`
	pairCreditsSQL  = `(SELECT count(*) FROM billing_credits WHERE tenant = $1 AND metric = $2 AND period_start = $3 AND group_key = $4)`
)

// OverClaimed is a (tenant, metric, group, month) whose claimed total
// exceeds the metered one and whose excess can no longer be cancelled:
// no push of it is open, and its latest sent push is older than Stripe's
// 24 hours, or the invoice of the month that push was billed in is final. Customer, EventName and Billed are
// its latest push's; Price and Currency the quota's in force for the
// month (Price nil when the quota has none).
type OverClaimed struct {
	Tenant, Metric, GroupKey string
	Customer, EventName      string
	Period, Billed           time.Time
	Price                    *price.Price
	Currency                 string
	Final                    bool
}

// FindOverClaimed reads the over-claimed months from oldest on whose
// latest push was sent before sentBefore, or whose invoice is final.
func FindOverClaimed(ctx context.Context, q storage.Executor, oldest, sentBefore time.Time) ([]OverClaimed, error) {
	rows, err := q.Query(ctx, `WITH months AS (
			SELECT tenant, metric, group_key, period_start, sum(delta) FILTER (WHERE status <> 'cancelled') AS claimed,
				max(sent_at) FILTER (WHERE status = 'sent') AS last_sent,
				count(*) FILTER (WHERE status IN ('intent', 'dead', 'held')) AS open,
				(array_agg(stripe_customer_id ORDER BY id DESC))[1] AS customer,
				(array_agg(event_name ORDER BY id DESC))[1] AS event_name,
				(array_agg(billed_period_start ORDER BY id DESC))[1] AS billed
			FROM billing_pushes WHERE period_start >= $1 GROUP BY 1, 2, 3, 4)
		SELECT DISTINCT ON (m.tenant, m.metric, m.group_key, m.period_start)
			m.tenant, m.metric, m.group_key, m.period_start, m.customer, m.event_name, m.billed,
			q.price, coalesce(pl.currency, 'usd'), (bp.tenant IS NOT NULL)
		FROM months m
		LEFT JOIN `+creditsSince("$1")+` c ON c.tenant = m.tenant AND c.metric = m.metric AND c.group_key = m.group_key AND c.period_start = m.period_start
		LEFT JOIN usage_windows w ON w.tenant = m.tenant AND w.meter = m.metric AND w.group_key = m.group_key AND w.granularity = 'month' AND w.window_start = m.period_start
		LEFT JOIN billing_periods bp ON bp.tenant = m.tenant AND bp.period_start = m.billed
		LEFT JOIN plan_quotas q ON q.plan = tenant_plan_at(m.tenant, `+periodInForce("m.tenant", "m.period_start")+`)
			AND q.version = plan_version_at(q.plan, `+periodInForce("m.tenant", "m.period_start")+`) AND q.stripe_event_name IS NOT NULL
			AND ((q.meter IS NULL AND q.metric = m.metric AND m.group_key = '') OR q.meter = m.metric)
		LEFT JOIN plans pl ON pl.name = q.plan
		WHERE m.claimed - coalesce(c.credited, 0) > coalesce(w.value, 0) AND m.open = 0 AND (m.last_sent <= $2 OR bp.tenant IS NOT NULL)
		ORDER BY m.tenant, m.metric, m.group_key, m.period_start, q.price IS NULL`, oldest, sentBefore)
	if err != nil {
		return nil, fmt.Errorf("finding over-claimed months: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (OverClaimed, error) {
		var o OverClaimed
		var raw []byte
		if err := r.Scan(&o.Tenant, &o.Metric, &o.GroupKey, &o.Period, &o.Customer, &o.EventName, &o.Billed, &raw, &o.Currency, &o.Final); err != nil {
			return o, err
		}
		if raw != nil {
			o.Price = new(price.Price)
			if err := json.Unmarshal(raw, o.Price); err != nil {
				return o, fmt.Errorf("the price of %s/%s: %w", o.Tenant, o.Metric, err)
			}
		}
		return o, nil
	})
	if err != nil {
		return nil, fmt.Errorf("finding over-claimed months: %w", err)
	}
	return out, nil
}

// Credit is one row of billing_credits.
type Credit struct {
	ID       int64  `json:"id"`
	Tenant   string `json:"tenant"`
	Metric   string `json:"metric"`
	GroupKey string `json:"group_key"`
	// Period is the first instant of the credited month.
	Period   time.Time `json:"period_start"`
	Customer string    `json:"stripe_customer_id"`
	Claimed  string    `json:"claimed_total"`
	Metered  string    `json:"metered_total"`
	Quantity string    `json:"quantity"`
	// Amount is in the currency's minor unit, <= 0.
	Amount         int64  `json:"amount"`
	Currency       string `json:"currency"`
	IdempotencyKey string `json:"idempotency_key"`
	// Status is intent, sent, dead or none.
	Status    string     `json:"status"`
	TxnID     string     `json:"stripe_txn_id,omitempty"`
	Attempts  int        `json:"attempts"`
	LastError string     `json:"last_error"`
	Created   time.Time  `json:"created_at"`
	Sent      *time.Time `json:"sent_at,omitempty"`
	// Updated is when the row last changed (a resend stamps it).
	Updated time.Time `json:"updated_at"`
}

// InsertCredit records c as an intent (or, with Status none, as settled
// with nothing to send) unless its idempotency key is recorded already;
// it reports whether it inserted it.
func InsertCredit(ctx context.Context, q storage.Executor, c Credit) (bool, error) {
	status := c.Status
	if status == "" {
		status = "intent"
	}
	tag, err := q.Exec(ctx, `INSERT INTO billing_credits (tenant, metric, group_key, period_start, stripe_customer_id, claimed_total,
			metered_total, quantity, amount, currency, idempotency_key, status, last_error)
		VALUES ($1, $2, $3, $4, $5, $6::numeric, $7::numeric, $8::numeric, $9, $10, $11, $12, $13)
		ON CONFLICT (idempotency_key) DO NOTHING`,
		c.Tenant, c.Metric, c.GroupKey, c.Period, c.Customer, c.Claimed, c.Metered, c.Quantity, c.Amount, c.Currency, c.IdempotencyKey, status, c.LastError)
	if err != nil {
		return false, fmt.Errorf("recording credit %s: %w", c.IdempotencyKey, err)
	}
	return tag.RowsAffected() == 1, nil
}

const creditColumns = `id, tenant, metric, group_key, period_start, stripe_customer_id, claimed_total::text, metered_total::text,
	quantity::text, amount, currency, idempotency_key, status, coalesce(stripe_txn_id, ''), attempts, last_error, created_at, sent_at, updated_at`

func scanCredit(r pgx.CollectableRow) (Credit, error) {
	var c Credit
	err := r.Scan(&c.ID, &c.Tenant, &c.Metric, &c.GroupKey, &c.Period, &c.Customer, &c.Claimed, &c.Metered, &c.Quantity, &c.Amount,
		&c.Currency, &c.IdempotencyKey, &c.Status, &c.TxnID, &c.Attempts, &c.LastError, &c.Created, &c.Sent, &c.Updated)
	c.Period = c.Period.UTC()
	return c, err
}

// OpenCredits reads the credits still to send: intents, and with dead the
// dead ones too, in id order.
func OpenCredits(ctx context.Context, q storage.Executor, dead bool) ([]Credit, error) {
	rows, err := q.Query(ctx, `SELECT `+creditColumns+` FROM billing_credits
		WHERE status = 'intent' OR ($1 AND status = 'dead') ORDER BY id`, dead)
	if err != nil {
		return nil, fmt.Errorf("reading open credits: %w", err)
	}
	out, err := pgx.CollectRows(rows, scanCredit)
	if err != nil {
		return nil, fmt.Errorf("reading open credits: %w", err)
	}
	return out, nil
}

// CreditsOf reads the credits of tenant's month period (every tenant's
// when tenant is empty), in id order.
func CreditsOf(ctx context.Context, q storage.Executor, tenant string, period time.Time) ([]Credit, error) {
	rows, err := q.Query(ctx, `SELECT `+creditColumns+` FROM billing_credits
		WHERE ($1 = '' OR tenant = $1) AND period_start = $2 ORDER BY id`, tenant, period)
	if err != nil {
		return nil, fmt.Errorf("reading credits: %w", err)
	}
	out, err := pgx.CollectRows(rows, scanCredit)
	if err != nil {
		return nil, fmt.Errorf("reading credits: %w", err)
	}
	return out, nil
}

// ListCredits reads the credits whose status is one of statuses (every
// credit when statuses is empty), oldest first, at most limit.
func ListCredits(ctx context.Context, q storage.Executor, statuses []string, limit int) ([]Credit, error) {
	rows, err := q.Query(ctx, `SELECT `+creditColumns+` FROM billing_credits
		WHERE coalesce(cardinality($1::text[]), 0) = 0 OR status = ANY($1) ORDER BY id LIMIT $2`, statuses, limit)
	if err != nil {
		return nil, fmt.Errorf("listing credits: %w", err)
	}
	out, err := pgx.CollectRows(rows, scanCredit)
	if err != nil {
		return nil, fmt.Errorf("listing credits: %w", err)
	}
	return out, nil
}

// CreditsByID reads the credits ids, in id order (ids that name no
// credit are left out).
func CreditsByID(ctx context.Context, q storage.Executor, ids []int64) ([]Credit, error) {
	rows, err := q.Query(ctx, `SELECT `+creditColumns+` FROM billing_credits WHERE id = ANY($1) ORDER BY id`, ids)
	if err != nil {
		return nil, fmt.Errorf("reading credits: %w", err)
	}
	out, err := pgx.CollectRows(rows, scanCredit)
	if err != nil {
		return nil, fmt.Errorf("reading credits: %w", err)
	}
	return out, nil
}

// PickDeadCredits is the dead credits' deadletters.Mover: it locks the
// dead credits c names (every dead one with c.All) and stamps their
// updated_at, returning their ids in id order. They stay dead (c.To is
// not used): only Stripe's answer to the resend moves one, to sent, and
// a sync round, which sends intents only, never sends them meanwhile.
func PickDeadCredits(ctx context.Context, q storage.Executor, c deadletters.Change) ([]int64, error) {
	rows, err := q.Query(ctx, `WITH picked AS (
			UPDATE billing_credits SET updated_at = now()
			WHERE status = 'dead' AND ($1 OR id = ANY($2)) RETURNING id)
		SELECT id FROM picked ORDER BY id`, c.All, c.IDs)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[int64])
}

// MarkCreditSent records that Stripe made balance transaction txnID for
// credit id, if it is still status from.
func MarkCreditSent(ctx context.Context, q storage.Executor, id int64, from, txnID string, at time.Time, attempts int) error {
	_, err := q.Exec(ctx, `UPDATE billing_credits SET status = 'sent', stripe_txn_id = $3, sent_at = $4, attempts = attempts + $5,
			last_error = '', updated_at = now()
		WHERE id = $1 AND status = $2`, id, from, txnID, at, attempts)
	if err != nil {
		return fmt.Errorf("recording credit %d as sent: %w", id, err)
	}
	return nil
}

// MarkCreditDead records that Stripe refused credit id for good, if it is
// still status from.
func MarkCreditDead(ctx context.Context, q storage.Executor, id int64, from string, attempts int, lastError string) error {
	_, err := q.Exec(ctx, `UPDATE billing_credits SET status = 'dead', attempts = attempts + $3, last_error = $4, updated_at = now()
		WHERE id = $1 AND status = $2`, id, from, attempts, lastError)
	if err != nil {
		return fmt.Errorf("recording credit %d as dead: %w", id, err)
	}
	return nil
}

// PeriodPush is one push of a month, as reconciliation lists it beside
// the month's adjustments.
type PeriodPush struct {
	Tenant, Metric, GroupKey string
	Identifier, Delta        string
	Status                   string
	Created, Updated         time.Time
}

// PeriodPushes reads the pushes of the month starting at period (every
// tenant's when tenant is empty), in id order.
func PeriodPushes(ctx context.Context, q storage.Executor, tenant string, period time.Time) ([]PeriodPush, error) {
	rows, err := q.Query(ctx, `SELECT tenant, metric, group_key, identifier, delta::text, status, created_at, updated_at
		FROM billing_pushes WHERE ($1 = '' OR tenant = $1) AND period_start = $2 ORDER BY id`, tenant, period)
	if err != nil {
		return nil, fmt.Errorf("reading the period's pushes: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (PeriodPush, error) {
		var p PeriodPush
		return p, r.Scan(&p.Tenant, &p.Metric, &p.GroupKey, &p.Identifier, &p.Delta, &p.Status, &p.Created, &p.Updated)
	})
	if err != nil {
		return nil, fmt.Errorf("reading the period's pushes: %w", err)
	}
	return out, nil
}
