package rollup

import (
	"cmp"
	"context"
	"fmt"
	"math/big"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/billingcycle"
	"github.com/usagemeter/metering/internal/billingevents"
	"github.com/usagemeter/metering/internal/storage/usagedata"
)

// spendTenant is a tenant of the batch whose plan in force has spend
// thresholds and whose priced usage of its current period the batch
// changed.
type spendTenant struct {
	tenant string
	rule   usagedata.SpendRule
}

// spendTenants returns, sorted by name, the tenants of incs whose plan
// version in force at now (in plans, already read) has spend thresholds
// and a priced quota on a metric incs count in the tenant's current
// billing period. It runs no statement.
func spendTenants(plans *usagedata.PlanRules, periods billingcycle.Schedules, incs []increment, now time.Time) []spendTenant {
	type verdict struct {
		rule       usagedata.SpendRule
		ok, chosen bool
	}
	seen := map[string]*verdict{}
	var out []spendTenant
	for _, in := range incs {
		v := seen[in.tenant]
		start, end := periods.Span(in.tenant, now)
		if v == nil {
			v = &verdict{}
			v.rule, v.ok = plans.Spend(in.tenant, start, end, now)
			seen[in.tenant] = v
		}
		if !v.ok || v.chosen || in.at.Before(start) || !in.at.Before(end) || !slices.Contains(v.rule.PricedMetrics, in.metric) {
			continue
		}
		v.chosen = true
		out = append(out, spendTenant{tenant: in.tenant, rule: v.rule})
	}
	slices.SortFunc(out, func(x, y spendTenant) int { return cmp.Compare(x.tenant, y.tenant) })
	return out
}

// evaluateSpend projects, on the batch's transaction, the bill of the
// current billing period of each tenant spendTenants chooses, with the
// code of GET /v1/bill (usagedata.Reader.Bill at now), records each spend
// threshold of its plan version the projected total or the total so far
// has reached (spend_breaches, once per tenant, period and threshold),
// and queues spend.threshold on billing.events for each one recorded
// now. A tenant without spend thresholds costs no statement; one whose
// thresholds are all recorded for the period costs its share of one
// statement (no projection).
func evaluateSpend(ctx context.Context, tx pgx.Tx, plans *usagedata.PlanRules, periods billingcycle.Schedules, incs []increment, now time.Time, defaultPlan string) error {
	tenants, err := unreachedSpend(ctx, tx, spendTenants(plans, periods, incs, now), periods, now)
	if err != nil || len(tenants) == 0 {
		return err
	}
	reader := usagedata.NewReader(tx).WithDefaultPlan(defaultPlan)
	var reached []usagedata.SpendBreach
	for _, st := range tenants {
		bill, err := reader.Bill(ctx, st.tenant, now)
		if err != nil {
			return fmt.Errorf("projecting the bill of %s for its spend thresholds: %w", st.tenant, err)
		}
		if bill.Plan == nil || *bill.Plan != st.rule.Plan || bill.PlanVersion != st.rule.Version {
			// The bill prices another version than the rules read (a
			// change committed in between): the next batch judges it.
			continue
		}
		projected, ok1 := new(big.Rat).SetString(bill.ProjectedTotal)
		total, ok2 := new(big.Rat).SetString(bill.Total)
		if !ok1 || !ok2 {
			return fmt.Errorf("the bill of %s has totals %q, %q that are not decimals", st.tenant, bill.ProjectedTotal, bill.Total)
		}
		for _, t := range st.rule.Thresholds {
			r, ok := new(big.Rat).SetString(t)
			if !ok {
				return fmt.Errorf("plan %s version %d: spend threshold %q is not a decimal", st.rule.Plan, st.rule.Version, t)
			}
			if projected.Cmp(r) < 0 && total.Cmp(r) < 0 {
				break // thresholds increase
			}
			id, err := billingevents.SpendThresholdID(st.tenant, bill.PeriodStart, t)
			if err != nil {
				return err
			}
			reached = append(reached, usagedata.SpendBreach{
				BreachID: id, Tenant: st.tenant, PeriodStart: bill.PeriodStart, PeriodEnd: bill.PeriodEnd,
				Threshold: t, ProjectedTotal: bill.ProjectedTotal, Total: bill.Total, Currency: bill.Currency,
				Plan: st.rule.Plan, PlanVersion: st.rule.Version, DetectedAt: now,
			})
		}
	}
	recorded, err := usagedata.RecordSpendBreaches(ctx, tx, reached)
	if err != nil {
		return err
	}
	var evs []billingevents.Event
	for i, b := range reached {
		if !recorded[i] {
			continue
		}
		ev, err := billingevents.New(b.Tenant, now, billingevents.SpendThreshold{
			Threshold: billingevents.Amount(b.Threshold), ProjectedTotal: billingevents.Amount(b.ProjectedTotal), Total: billingevents.Amount(b.Total),
			Currency: b.Currency, PeriodStart: b.PeriodStart, PeriodEnd: b.PeriodEnd, Plan: b.Plan, PlanVersion: b.PlanVersion, DetectedAt: now,
		})
		if err != nil {
			return err
		}
		evs = append(evs, ev)
	}
	return billingevents.Enqueue(ctx, tx, evs...)
}

// unreachedSpend keeps, of tenants, the thresholds not yet recorded for
// the current billing period (read in one statement), and the tenants
// left with some.
func unreachedSpend(ctx context.Context, tx pgx.Tx, tenants []spendTenant, periods billingcycle.Schedules, now time.Time) ([]spendTenant, error) {
	if len(tenants) == 0 {
		return nil, nil
	}
	keys := make([]usagedata.SpendPeriod, len(tenants))
	for i, st := range tenants {
		start, _ := periods.Span(st.tenant, now)
		keys[i] = usagedata.SpendPeriod{Tenant: st.tenant, PeriodStart: start.UTC()}
	}
	recorded, err := usagedata.SpendReached(ctx, tx, keys)
	if err != nil {
		return nil, err
	}
	out := tenants[:0]
	for i, st := range tenants {
		done := recorded[keys[i]]
		var left []string
		for _, t := range st.rule.Thresholds {
			if !slices.ContainsFunc(done, func(d string) bool { return sameAmount(d, t) }) {
				left = append(left, t)
			}
		}
		if len(left) > 0 {
			st.rule.Thresholds = left
			out = append(out, st)
		}
	}
	return out, nil
}

// sameAmount reports whether two decimal strings are one number.
func sameAmount(a, b string) bool {
	x, ok1 := new(big.Rat).SetString(a)
	y, ok2 := new(big.Rat).SetString(b)
	return ok1 && ok2 && x.Cmp(y) == 0
}
