package usagedata

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/big"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/usagemeter/metering/internal/quota"
	"github.com/usagemeter/metering/internal/windows"
)

// BillLine is one priced metric of the current month.
type BillLine struct {
	Metric    string   `json:"metric"`
	Used      *big.Int `json:"used"`
	UnitPrice string   `json:"unit_price"`
	// Amount is Used × UnitPrice, in the currency, rounded to cents.
	Amount string `json:"amount"`
	// ProjectedUsed extends the month's usage so far linearly to its end.
	ProjectedUsed   *big.Int `json:"projected_used"`
	ProjectedAmount string   `json:"projected_amount"`
}

// Bill is the running and projected bill of a tenant's month.
type Bill struct {
	Tenant         string     `json:"tenant"`
	Currency       string     `json:"currency"`
	PeriodStart    time.Time  `json:"period_start"`
	PeriodEnd      time.Time  `json:"period_end"`
	Lines          []BillLine `json:"lines"`
	Total          string     `json:"total"`
	ProjectedTotal string     `json:"projected_total"`
}

// Bill returns tenant's bill for the month containing now: each metric
// of its plan that has a unit price, at exact decimal arithmetic, rounded
// half up to cents only at the end of each line.
func (r *Reader) Bill(ctx context.Context, tenant string, now time.Time) (Bill, error) {
	start, end := windows.Month.Span(now)
	b := Bill{Tenant: tenant, PeriodStart: start, PeriodEnd: end, Lines: []BillLine{}}
	var plan *string
	err := r.q.QueryRow(ctx, `SELECT t.plan, coalesce(p.currency, 'usd') FROM tenants t LEFT JOIN plans p ON p.name = t.plan WHERE t.tenant = $1`, tenant).Scan(&plan, &b.Currency)
	if err == pgx.ErrNoRows {
		return b, ErrUnknownTenant
	}
	if err != nil {
		return b, fmt.Errorf("reading tenant %s: %w", tenant, err)
	}
	total, projTotal := new(big.Rat), new(big.Rat)
	if plan != nil {
		rows, err := r.q.Query(ctx, `SELECT q.metric, q.unit_price::text, w.value FROM plan_quotas q
			LEFT JOIN usage_windows w ON w.tenant = $1 AND w.meter = q.metric AND w.group_key = '' AND w.granularity = 'month' AND w.window_start = $3
			WHERE q.plan = $2 AND q.version = plan_version_at(q.plan, $4) AND q.meter IS NULL AND q.unit_price IS NOT NULL ORDER BY q.metric`, tenant, *plan, start, now)
		if err != nil {
			return b, fmt.Errorf("reading prices of %s: %w", tenant, err)
		}
		elapsed := new(big.Rat).SetFrac64(int64(max(now.Sub(start), time.Second)), 1)
		length := new(big.Rat).SetFrac64(int64(end.Sub(start)), 1)
		scale := new(big.Rat).Quo(length, elapsed)
		b.Lines, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (BillLine, error) {
			var l BillLine
			var used pgtype.Numeric
			if err := row.Scan(&l.Metric, &l.UnitPrice, &used); err != nil {
				return l, err
			}
			price, ok := new(big.Rat).SetString(l.UnitPrice)
			if !ok {
				return l, fmt.Errorf("unit price %q of %s", l.UnitPrice, l.Metric)
			}
			l.Used = NumericInt(used)
			amount := new(big.Rat).Mul(new(big.Rat).SetInt(l.Used), price)
			projected := new(big.Rat).Mul(new(big.Rat).SetInt(l.Used), scale)
			l.ProjectedUsed = new(big.Int).Quo(projected.Num(), projected.Denom())
			projAmount := new(big.Rat).Mul(new(big.Rat).SetInt(l.ProjectedUsed), price)
			l.Amount, l.ProjectedAmount = billCents(amount), billCents(projAmount)
			total.Add(total, billRat(l.Amount))
			projTotal.Add(projTotal, billRat(l.ProjectedAmount))
			return l, nil
		})
		if err != nil {
			return b, fmt.Errorf("reading prices of %s: %w", tenant, err)
		}
	}
	b.Total, b.ProjectedTotal = billCents(total), billCents(projTotal)
	return b, nil
}

// billCents formats r rounded half up to two decimals.
func billCents(r *big.Rat) string {
	scaled := new(big.Rat).Mul(r, big.NewRat(100, 1))
	scaled.Add(scaled, big.NewRat(1, 2))
	n := new(big.Int).Quo(scaled.Num(), scaled.Denom())
	return new(big.Rat).SetFrac(n, big.NewInt(100)).FloatString(2)
}

func billRat(s string) *big.Rat {
	r, _ := new(big.Rat).SetString(s)
	return r
}

// Breaches returns tenant's breaches, newest first, at most limit.
func (r *Reader) Breaches(ctx context.Context, tenant string, limit int) ([]quota.Breach, error) {
	rows, err := r.q.Query(ctx, `SELECT breach_id, tenant, metric, threshold, period_start, period_end, quota_limit, value, detected_at,
			meter, group_key, group_values::text
		FROM quota_breaches WHERE tenant = $1 ORDER BY detected_at DESC, quota_limit, threshold LIMIT $2`, tenant, limit)
	if err != nil {
		return nil, fmt.Errorf("reading breaches of %s: %w", tenant, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (quota.Breach, error) {
		var b quota.Breach
		var v pgtype.Numeric
		var group string
		err := row.Scan(&b.BreachID, &b.Tenant, &b.Metric, &b.Threshold, &b.PeriodStart, &b.PeriodEnd, &b.Limit, &v, &b.DetectedAt,
			&b.Meter, &b.GroupKey, &group)
		b.Value = NumericInt(v)
		b.Group = compactJSON(group)
		b.PeriodStart, b.PeriodEnd, b.DetectedAt = b.PeriodStart.UTC(), b.PeriodEnd.UTC(), b.DetectedAt.UTC()
		return b, err
	})
	if err != nil {
		return nil, fmt.Errorf("reading breaches of %s: %w", tenant, err)
	}
	return out, nil
}

// compactJSON returns Postgres's text of a jsonb value without the spaces
// it adds (its keys in jsonb's order).
func compactJSON(s string) json.RawMessage {
	var buf bytes.Buffer
	if err := json.Compact(&buf, []byte(s)); err != nil {
		return json.RawMessage(s)
	}
	return buf.Bytes()
}
