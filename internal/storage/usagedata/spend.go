package usagedata

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/usagemeter/metering/internal/storage"
)

// SpendBreach is a spend threshold of a tenant's plan that the projected
// bill of a billing period (or its bill so far) reached, recorded once per
// (tenant, period, threshold).
type SpendBreach struct {
	// BreachID is the id of the spend.threshold event announcing it.
	BreachID    string
	Tenant      string
	PeriodStart time.Time
	PeriodEnd   time.Time
	// Threshold, ProjectedTotal and Total are exact decimals of Currency.
	Threshold      string
	ProjectedTotal string
	Total          string
	Currency       string
	// Plan and PlanVersion are the plan version whose threshold it is.
	Plan        string
	PlanVersion int
	DetectedAt  time.Time
}

// RecordSpendBreaches records, in one statement, each breach of bs unless
// one of its (tenant, period start, threshold), compared as numbers, or
// its id is recorded already (or comes earlier in bs), and reports for
// each whether it recorded it: each threshold is recorded once per period.
func RecordSpendBreaches(ctx context.Context, q storage.Executor, bs []SpendBreach) ([]bool, error) {
	recorded := make([]bool, len(bs))
	if len(bs) == 0 {
		return recorded, nil
	}
	n := len(bs)
	ids, tenants, thresholds, projected, totals, currencies, plans := make([]string, n), make([]string, n), make([]string, n),
		make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	starts, ends, detected := make([]time.Time, n), make([]time.Time, n), make([]time.Time, n)
	versions := make([]int32, n)
	at := make(map[string]int, n)
	for i, b := range bs {
		ids[i], tenants[i], thresholds[i], projected[i], totals[i], currencies[i], plans[i] = b.BreachID, b.Tenant, b.Threshold,
			b.ProjectedTotal, b.Total, b.Currency, b.Plan
		starts[i], ends[i], detected[i], versions[i] = b.PeriodStart, b.PeriodEnd, b.DetectedAt, int32(b.PlanVersion)
		if _, dup := at[b.BreachID]; !dup {
			at[b.BreachID] = i
		}
	}
	rows, err := q.Query(ctx, `INSERT INTO spend_breaches (breach_id, tenant, period_start, period_end, threshold, projected_total, total, currency,
				plan, plan_version, detected_at)
			SELECT id, t, ps, pe, th::numeric, pt::numeric, tt::numeric, c, p, v, d
			FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::text[], $6::text[], $7::text[], $8::text[],
				$9::text[], $10::int[], $11::timestamptz[]) WITH ORDINALITY AS b(id, t, ps, pe, th, pt, tt, c, p, v, d, i)
			ORDER BY i
			ON CONFLICT DO NOTHING RETURNING breach_id`,
		ids, tenants, starts, ends, thresholds, projected, totals, currencies, plans, versions, detected)
	if err != nil {
		return nil, fmt.Errorf("recording %d spend breaches: %w", n, err)
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, fmt.Errorf("recording %d spend breaches: %w", n, err)
		}
		recorded[at[id]] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("recording %d spend breaches: %w", n, err)
	}
	return recorded, nil
}

// SpendBreaches returns tenant's recorded spend breaches, oldest period
// first, then by threshold.
func SpendBreaches(ctx context.Context, q storage.Executor, tenant string) ([]SpendBreach, error) {
	rows, err := q.Query(ctx, `SELECT breach_id, tenant, period_start, period_end, threshold::text, projected_total::text, total::text, currency,
			plan, plan_version, detected_at
		FROM spend_breaches WHERE tenant = $1 ORDER BY period_start, threshold`, tenant)
	if err != nil {
		return nil, fmt.Errorf("reading the spend breaches of %s: %w", tenant, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (SpendBreach, error) {
		var b SpendBreach
		var start, end, det pgtype.Timestamptz
		err := row.Scan(&b.BreachID, &b.Tenant, &start, &end, &b.Threshold, &b.ProjectedTotal, &b.Total, &b.Currency, &b.Plan, &b.PlanVersion, &det)
		b.PeriodStart, b.PeriodEnd, b.DetectedAt = start.Time.UTC(), end.Time.UTC(), det.Time.UTC()
		return b, err
	})
	if err != nil {
		return nil, fmt.Errorf("reading the spend breaches of %s: %w", tenant, err)
	}
	return out, nil
}

// SpendPeriod is one tenant's billing period, by its start.
type SpendPeriod struct {
	Tenant      string
	PeriodStart time.Time
}

// SpendReached returns, in one statement, the thresholds recorded for
// each of periods (as numbers' canonical text, "100" for "100.00"), by
// period.
func SpendReached(ctx context.Context, q storage.Executor, periods []SpendPeriod) (map[SpendPeriod][]string, error) {
	out := map[SpendPeriod][]string{}
	if len(periods) == 0 {
		return out, nil
	}
	tenants, starts := make([]string, len(periods)), make([]time.Time, len(periods))
	for i, p := range periods {
		tenants[i], starts[i] = p.Tenant, p.PeriodStart
	}
	rows, err := q.Query(ctx, `SELECT s.tenant, s.period_start, trim_scale(s.threshold)::text
		FROM unnest($1::text[], $2::timestamptz[]) AS p(t, ps)
		JOIN spend_breaches s ON s.tenant = p.t AND s.period_start = p.ps`, tenants, starts)
	if err != nil {
		return nil, fmt.Errorf("reading the spend thresholds reached of %d tenants: %w", len(periods), err)
	}
	defer rows.Close()
	for rows.Next() {
		var p SpendPeriod
		var threshold string
		if err := rows.Scan(&p.Tenant, &p.PeriodStart, &threshold); err != nil {
			return nil, fmt.Errorf("reading the spend thresholds reached of %d tenants: %w", len(periods), err)
		}
		p.PeriodStart = p.PeriodStart.UTC()
		out[p] = append(out[p], threshold)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading the spend thresholds reached of %d tenants: %w", len(periods), err)
	}
	return out, nil
}
