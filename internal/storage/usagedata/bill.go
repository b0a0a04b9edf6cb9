package usagedata

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/planperiod"
	"github.com/usagemeter/metering/internal/price"
	"github.com/usagemeter/metering/internal/quota"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/windows"
)

// BillLine is one priced line of the current month: a priced quota's
// meter, for one of its groups when the quota bills per group, else over
// the groups its filter keeps.
type BillLine struct {
	Metric string `json:"metric"`
	// Meter is the meter priced: the metric for its implicit meter.
	Meter string `json:"meter"`
	// Filter is the quota's filter on the meter's groups ({} for none).
	Filter map[string]string `json:"filter"`
	// Group is the group's values (null for a missing property) when the
	// quota bills each group on its own ({"model":"gpt-4"}), {} otherwise.
	Group Group    `json:"group"`
	Used  *big.Int `json:"used"`
	// Price is the quota's price; a line of a group is priced on that
	// group's usage alone (its own tiers, packages).
	Price price.Price `json:"price"`
	// UnitPrice is Price's unit amount when it is per_unit, else absent.
	UnitPrice string `json:"unit_price,omitempty"`
	// Amount is what Used costs under Price, in the currency, rounded
	// half up to cents.
	Amount string `json:"amount"`
	// ProjectedUsed is the usage at the end of the month: for a sum or
	// count meter the usage so far extended linearly to the month's end;
	// for max, latest and unique_count, which do not grow with time, the
	// usage so far.
	ProjectedUsed *big.Int `json:"projected_used"`
	// ProjectedAmount is what ProjectedUsed costs under Price.
	ProjectedAmount string `json:"projected_amount"`
	// Overage marks the overage line of a quota with an overage price:
	// Used (and ProjectedUsed) are the usage beyond Included, the
	// quota's limit, and Price is the overage price.
	Overage  bool     `json:"overage,omitempty"`
	Included *big.Int `json:"included,omitempty"`
}

// Bill is the running and projected bill of a tenant's month.
type Bill struct {
	Tenant string `json:"tenant"`
	// Plan is the plan whose version in force prices the bill, as GET
	// /v1/quotas names it: the tenant's assignment in force, else the
	// default plan (DEFAULT_PLAN); nil for none (no lines).
	Plan *string `json:"plan"`
	// PlanVersion is Plan's version in force (0, absent, for none).
	PlanVersion int `json:"plan_version,omitzero"`
	// PlanSource is where Plan came from ("admin", "stripe",
	// "migration", or "default" for the default plan); nil for none.
	PlanSource     *string    `json:"plan_source"`
	Currency       string     `json:"currency"`
	PeriodStart    time.Time  `json:"period_start"`
	PeriodEnd      time.Time  `json:"period_end"`
	Lines          []BillLine `json:"lines"`
	Total          string     `json:"total"`
	ProjectedTotal string     `json:"projected_total"`
}

// pricedQuota is a plan quota that has a price.
type pricedQuota struct {
	metric, meter   string // meter: empty for the implicit meter
	filter          map[string]string
	perGroup        bool
	stripeEventName string
	// price is nil when only overage is priced; overage (with limit) nil
	// when the quota has no overage price.
	price   *price.Price
	overage *price.Price
	limit   *int64
}

// Bill returns tenant's bill for its billing period containing now (the
// UTC calendar month without a billing cycle): a line for
// each priced quota of the version in force at now of its plan (the plan
// of its assignment in force, else the default plan, as QuotasInForce
// finds it; none for an explicit "no plan" or without a default: no
// lines), one per group of the meter with usage in
// the month when the quota bills per group: per_group, or a Stripe event
// name with {property} placeholders), ordered by metric, meter, then the
// quota's filter and the group's values. Amounts are exact decimal
// arithmetic under the quota's price model (internal/price), rounded half
// up to cents only at the end of each line; the totals add the lines.
func (r *Reader) Bill(ctx context.Context, tenant string, now time.Time) (Bill, error) {
	sched, err := accounts.TenantSchedule(ctx, r.q, tenant)
	if err != nil {
		return Bill{}, err
	}
	start, end := windows.Month.SpanIn(sched, now)
	b := Bill{Tenant: tenant, PeriodStart: start, PeriodEnd: end, Lines: []BillLine{}, Currency: "usd"}
	var exists bool
	if err := r.q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM tenants WHERE tenant = $1)`, tenant).Scan(&exists); err != nil {
		return b, fmt.Errorf("reading tenant %s: %w", tenant, err)
	}
	if !exists {
		return b, ErrUnknownTenant
	}
	// The plan in force at now, as QuotasInForce finds it: the tenant's
	// assignment, else the default plan, else none.
	inputs, err := readPlanInputs(ctx, r.q, []string{tenant}, start, end, r.defaultPlan)
	if err != nil {
		return b, fmt.Errorf("reading the plan of %s: %w", tenant, err)
	}
	inForce, err := planperiod.Evaluate(inputs[tenant], start, end, now)
	if err != nil {
		return b, fmt.Errorf("reading the plan of %s: %w", tenant, err)
	}
	total, projTotal := new(big.Rat), new(big.Rat)
	if inForce.Plan != "" {
		b.Plan, b.PlanVersion = &inForce.Plan, inForce.Version
		if inForce.Source != "" {
			b.PlanSource = &inForce.Source
		}
		err := r.q.QueryRow(ctx, `SELECT coalesce(v.currency, 'usd') FROM plan_versions v WHERE v.plan = $1 AND v.version = $2`,
			inForce.Plan, inForce.Version).Scan(&b.Currency)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return b, fmt.Errorf("reading the currency of %s version %d: %w", inForce.Plan, inForce.Version, err)
		}
		qs, err := r.pricedQuotas(ctx, inForce.Plan, inForce.Version)
		if err != nil {
			return b, fmt.Errorf("reading prices of %s: %w", tenant, err)
		}
		scale := ProjectionScale(start, end, now)
		for _, q := range qs {
			var rates, overRates price.Rates
			if q.price != nil {
				if rates, err = q.price.Rates(); err != nil {
					return b, fmt.Errorf("reading the bill of %s: the price of %s on %s: %w", tenant, q.metric, cmp.Or(q.meter, q.metric), err)
				}
			}
			if q.overage != nil {
				if overRates, err = q.overage.Rates(); err != nil {
					return b, fmt.Errorf("reading the bill of %s: the overage price of %s on %s: %w", tenant, q.metric, cmp.Or(q.meter, q.metric), err)
				}
			}
			usages, agg, err := r.quotaUsage(ctx, tenant, q, start, end)
			if err != nil {
				return b, fmt.Errorf("reading the bill of %s: %w", tenant, err)
			}
			add := func(l BillLine, rates price.Rates) {
				amount, projected := price.RoundCents(rates.Amount(l.Used)), price.RoundCents(rates.Amount(l.ProjectedUsed))
				l.Amount, l.ProjectedAmount = amount.FloatString(2), projected.FloatString(2)
				total.Add(total, amount)
				projTotal.Add(projTotal, projected)
				b.Lines = append(b.Lines, l)
			}
			for _, u := range usages {
				base := BillLine{Metric: q.metric, Meter: cmp.Or(q.meter, q.metric), Filter: q.filter, Group: u.Group, Used: u.Value}
				projectedUsed := projectUsage(agg, u.Value, scale)
				if q.price != nil {
					l := base
					l.Price, l.UnitPrice, l.ProjectedUsed = *q.price, q.price.UnitPrice(), projectedUsed
					add(l, rates)
				}
				if q.overage != nil && q.limit != nil {
					included := big.NewInt(*q.limit)
					l := base
					l.Overage, l.Included, l.Price, l.UnitPrice = true, included, *q.overage, q.overage.UnitPrice()
					l.Used, l.ProjectedUsed = beyond(u.Value, included), beyond(projectedUsed, included)
					add(l, overRates)
				}
			}
		}
	}
	// The quotas come by metric, meter (implicit first), filter and
	// per_group, each quota's groups by their values (a group's overage
	// line after its line): order by meter name.
	slices.SortStableFunc(b.Lines, func(x, y BillLine) int {
		return cmp.Or(cmp.Compare(x.Metric, y.Metric), cmp.Compare(x.Meter, y.Meter))
	})
	b.Total, b.ProjectedTotal = price.Cents(total), price.Cents(projTotal)
	return b, nil
}

// MinProjectionElapsed is the least time a projection extrapolates
// from: before a period has run this long (or its whole length, when
// shorter), usage so far projects as if it had, so a bill is never
// extrapolated from its first minutes (in which any usage would project
// to a huge bill and cross every spend threshold).
const MinProjectionElapsed = 24 * time.Hour

// ProjectionScale is the factor by which the usage of the billing period
// [start, end) so far, at now, is extended to the period's end: its length
// over the time elapsed, that time floored at MinProjectionElapsed (or the
// period's length when shorter), so the factor is at most length / 1 day
// and never below 1. GET /v1/bill and the aggregator's spend thresholds
// project with it alone.
func ProjectionScale(start, end, now time.Time) *big.Rat {
	length := end.Sub(start)
	elapsed := max(now.Sub(start), min(MinProjectionElapsed, length), time.Second)
	if elapsed > length {
		elapsed = max(length, time.Second)
	}
	return new(big.Rat).SetFrac(big.NewInt(int64(max(length, elapsed))), big.NewInt(int64(elapsed)))
}

// beyond is the part of used above included, never below 0.
func beyond(used, included *big.Int) *big.Int {
	d := new(big.Int).Sub(used, included)
	if d.Sign() < 0 {
		d.SetInt64(0)
	}
	return d
}

// pricedQuotas reads the quotas of plan's version that have a price or
// an overage price, ordered by metric, meter (the implicit meter first),
// filter and per_group.
func (r *Reader) pricedQuotas(ctx context.Context, plan string, version int) ([]pricedQuota, error) {
	rows, err := r.q.Query(ctx, `SELECT q.metric, coalesce(q.meter, ''), q.group_filter, q.per_group, coalesce(q.stripe_event_name, ''), q.price,
			q.overage_price, q.quota_limit
		FROM plan_quotas q WHERE q.plan = $1 AND q.version = $2 AND (q.price IS NOT NULL OR q.overage_price IS NOT NULL)
		ORDER BY q.metric, q.meter NULLS FIRST, q.group_filter::text COLLATE "C", q.per_group`, plan, version)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (pricedQuota, error) {
		var q pricedQuota
		err := row.Scan(&q.metric, &q.meter, &q.filter, &q.perGroup, &q.stripeEventName, &q.price, &q.overage, &q.limit)
		if q.filter == nil {
			q.filter = map[string]string{}
		}
		return q, err
	})
}

// quotaUsage returns the usage q prices in the month [start, end), and
// the aggregation of its meter: one total of the implicit meter; for a
// defined meter, one total over the groups q's filter keeps, or, when q
// bills per group, each such group with usage in the month. The groups
// fold as Reader.MeterUsage folds them over the month's windows. A quota
// whose meter is no longer defined, or whose filter the meter no longer
// groups by, has no usage.
func (r *Reader) quotaUsage(ctx context.Context, tenant string, q pricedQuota, start, end time.Time) ([]GroupTotal, meter.Aggregation, error) {
	if q.meter == "" {
		used, err := GroupValue(ctx, r.q, tenant, q.metric, "", windows.Month, start)
		if err != nil {
			return nil, meter.Sum, err
		}
		return []GroupTotal{{Value: used}}, meter.Sum, nil
	}
	d, defined, err := r.Meter(ctx, q.meter)
	if err != nil {
		return nil, "", err
	}
	perGroup := q.perGroup
	if names, err := meter.EventNamePlaceholders(q.stripeEventName); err == nil && len(names) > 0 {
		perGroup = true
	}
	none := []GroupTotal{{Value: new(big.Int)}}
	if perGroup {
		none = nil
	}
	if !defined || d.Metric != q.metric {
		return none, d.Aggregation, nil
	}
	mq := MeterQuery{Tenant: tenant, Meter: d, Granularity: windows.Month, From: start, To: end, Filter: q.filter}
	if perGroup {
		mq.GroupBy = d.GroupBy
	}
	u, err := r.MeterUsage(ctx, mq)
	if errors.Is(err, ErrBadMeterQuery) {
		return none, d.Aggregation, nil
	}
	if err != nil {
		return nil, "", err
	}
	if !perGroup {
		return []GroupTotal{{Value: u.Total, Events: u.Events}}, d.Aggregation, nil
	}
	return u.Totals, d.Aggregation, nil
}

// projectUsage is the usage at the month's end of an aggregation whose
// usage so far is used, scale being the month's length over the time
// elapsed: sum and count grow linearly (rounded down to a whole unit);
// max, latest and unique_count stay as they are.
func projectUsage(agg meter.Aggregation, used *big.Int, scale *big.Rat) *big.Int {
	if agg != meter.Sum && agg != meter.Count {
		return new(big.Int).Set(used)
	}
	projected := new(big.Rat).Mul(new(big.Rat).SetInt(used), scale)
	return new(big.Int).Quo(projected.Num(), projected.Denom())
}

// Breaches returns tenant's breaches, newest first, at most limit.
func (r *Reader) Breaches(ctx context.Context, tenant string, limit int) ([]quota.Breach, error) {
	rows, err := r.q.Query(ctx, `SELECT breach_id, tenant, metric, threshold, period_start, period_end, quota_limit, value, detected_at,
			meter, group_key, group_values::text, percent
		FROM quota_breaches WHERE tenant = $1 ORDER BY detected_at DESC, quota_limit, threshold, percent DESC LIMIT $2`, tenant, limit)
	if err != nil {
		return nil, fmt.Errorf("reading breaches of %s: %w", tenant, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (quota.Breach, error) {
		var b quota.Breach
		var v pgtype.Numeric
		var group string
		err := row.Scan(&b.BreachID, &b.Tenant, &b.Metric, &b.Threshold, &b.PeriodStart, &b.PeriodEnd, &b.Limit, &v, &b.DetectedAt,
			&b.Meter, &b.GroupKey, &group, &b.Percent)
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
