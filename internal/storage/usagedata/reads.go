package usagedata

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/usagemeter/metering/internal/quota"
	"github.com/usagemeter/metering/internal/storage"
	"github.com/usagemeter/metering/internal/windows"
)

// ErrUnknownTenant is returned for a tenant that was never registered.
var ErrUnknownTenant = errors.New("unknown tenant")

// Reader reads usage for the API: usage over a time range, each quota's
// state in the current period, breaches and the running bill. Every
// figure comes from usage_windows as the aggregator committed it, so the
// API, the quota states the aggregator evaluates and the biller's totals
// agree.
type Reader struct {
	q storage.Executor
}

// NewReader returns a Reader on q (a pool).
func NewReader(q storage.Executor) *Reader { return &Reader{q: q} }

// Window is one window's usage.
type Window struct {
	Start  time.Time `json:"start"`
	End    time.Time `json:"end"`
	Value  *big.Int  `json:"value"`
	Events int64     `json:"events"`
}

// Usage returns tenant's windows of granularity g for metric with start in
// [from, to), oldest first, and their total.
func (r *Reader) Usage(ctx context.Context, tenant, metric string, g windows.Granularity, from, to time.Time) ([]Window, *big.Int, error) {
	rows, err := r.q.Query(ctx, `SELECT window_start, value, events FROM usage_windows
		WHERE tenant = $1 AND meter = $2 AND group_key = '' AND granularity = $3 AND window_start >= $4 AND window_start < $5
		ORDER BY window_start`, tenant, metric, string(g), from, to)
	if err != nil {
		return nil, nil, fmt.Errorf("reading usage: %w", err)
	}
	total := new(big.Int)
	ws, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Window, error) {
		var w Window
		var v pgtype.Numeric
		if err := row.Scan(&w.Start, &v, &w.Events); err != nil {
			return w, err
		}
		w.Start = w.Start.UTC()
		w.End = g.End(w.Start)
		w.Value = NumericInt(v)
		total.Add(total, w.Value)
		return w, nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("reading usage: %w", err)
	}
	return ws, total, nil
}

// QuotaStatus is one metric's quota in the current period.
type QuotaStatus struct {
	Metric string `json:"metric"`
	// Limit and Remaining are nil (JSON null) for an unlimited metric.
	Limit        *int64      `json:"limit"`
	Used         *big.Int    `json:"used"`
	Remaining    *big.Int    `json:"remaining"`
	PeriodStart  time.Time   `json:"period_start"`
	PeriodEnd    time.Time   `json:"period_end"`
	State        quota.State `json:"state"`
	Hard         bool        `json:"hard"`
	BurstPercent int         `json:"burst_percent"`
}

// Quotas returns tenant's plan and the state of each of its quotas in the
// period containing now.
func (r *Reader) Quotas(ctx context.Context, tenant string, now time.Time) (string, []QuotaStatus, error) {
	var plan *string
	err := r.q.QueryRow(ctx, `SELECT plan FROM tenants WHERE tenant = $1`, tenant).Scan(&plan)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil, ErrUnknownTenant
	}
	if err != nil {
		return "", nil, fmt.Errorf("reading tenant %s: %w", tenant, err)
	}
	if plan == nil {
		return "", []QuotaStatus{}, nil
	}
	rows, err := r.q.Query(ctx, `SELECT q.metric, q.quota_limit, q.period, q.burst_percent, q.hard, w.value
		FROM plan_quotas q
		LEFT JOIN usage_windows w ON w.tenant = $1 AND w.meter = q.metric AND w.group_key = '' AND w.granularity = q.period
			AND w.window_start = CASE q.period WHEN 'day' THEN date_trunc('day', $3::timestamptz AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
				ELSE date_trunc('month', $3::timestamptz AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' END
		WHERE q.plan = $2 ORDER BY q.metric`, tenant, *plan, now)
	if err != nil {
		return "", nil, fmt.Errorf("reading quotas of %s: %w", tenant, err)
	}
	qs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (QuotaStatus, error) {
		var q QuotaStatus
		var period string
		var used pgtype.Numeric
		if err := row.Scan(&q.Metric, &q.Limit, &period, &q.BurstPercent, &q.Hard, &used); err != nil {
			return q, err
		}
		g := windows.Granularity(period)
		q.PeriodStart, q.PeriodEnd = g.Span(now)
		q.Used = NumericInt(used)
		q.State = quota.Rule{Limit: q.Limit, BurstPercent: q.BurstPercent, Hard: q.Hard}.Evaluate(q.Used)
		if q.Limit != nil {
			q.Remaining = new(big.Int).Sub(big.NewInt(*q.Limit), q.Used)
			if q.Remaining.Sign() < 0 {
				q.Remaining.SetInt64(0)
			}
		}
		return q, nil
	})
	if err != nil {
		return "", nil, fmt.Errorf("reading quotas of %s: %w", tenant, err)
	}
	return *plan, qs, nil
}

// NumericInt converts an integer-valued Postgres numeric (NULL is 0) to a big.Int.
func NumericInt(n pgtype.Numeric) *big.Int {
	if !n.Valid || n.Int == nil {
		return new(big.Int)
	}
	v := new(big.Int).Set(n.Int)
	if n.Exp > 0 {
		v.Mul(v, new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(n.Exp)), nil))
	} else if n.Exp < 0 {
		v.Quo(v, new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(-n.Exp)), nil))
	}
	return v
}
