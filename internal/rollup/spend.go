package rollup

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/billingcycle"
	"github.com/usagemeter/metering/internal/billingevents"
	"github.com/usagemeter/metering/internal/storage/usagedata"
)

// spendTenant is a tenant and billing period of the batch whose plan in
// force has spend thresholds and whose priced usage the batch changed.
type spendTenant struct {
	tenant     string
	start, end time.Time // the billing period
	// at is when its bill is judged: now, or the period's last instant
	// for a period that has ended (usage counted late), whose projection
	// is then its total.
	at   time.Time
	rule usagedata.SpendRule
}

// spendTenants returns, sorted by tenant and period, the tenants and
// billing periods of incs (each increment's period, the current one or
// an earlier one for usage counted late) whose plan version in force at
// the judging instant (in plans, already read) has spend thresholds and a
// priced quota on a metric incs count in that period. It runs no
// statement.
func spendTenants(plans *usagedata.PlanRules, periods billingcycle.Schedules, incs []increment, now time.Time) []spendTenant {
	type key struct {
		tenant string
		start  int64
	}
	type verdict struct {
		st         spendTenant
		ok, chosen bool
	}
	seen := map[key]*verdict{}
	var out []spendTenant
	for _, in := range incs {
		start, end := periods.Span(in.tenant, in.at)
		k := key{in.tenant, start.UnixMicro()}
		v := seen[k]
		if v == nil {
			at := now
			if !now.Before(end) {
				at = end.Add(-time.Microsecond)
			}
			v = &verdict{st: spendTenant{tenant: in.tenant, start: start, end: end, at: at}}
			v.st.rule, v.ok = plans.Spend(in.tenant, start, end, at)
			seen[k] = v
		}
		if !v.ok || v.chosen || !slices.Contains(v.st.rule.PricedMetrics, in.metric) {
			continue
		}
		v.chosen = true
		out = append(out, v.st)
	}
	slices.SortFunc(out, func(x, y spendTenant) int {
		return cmp.Or(cmp.Compare(x.tenant, y.tenant), x.start.Compare(y.start))
	})
	return out
}

// evaluateSpend projects, on the batch's transaction, the bill of each
// tenant and billing period spendTenants chooses, with the code of GET
// /v1/bill (usagedata.Reader.Bill at now, or at the last instant of a
// period that has ended, where the projection is the total), records each spend
// threshold of its plan version the projected total or the total so far
// has reached (spend_breaches, once per tenant, period and threshold),
// and queues spend.threshold on billing.events for each one recorded
// now. A tenant without spend thresholds costs no statement; one whose
// thresholds are all recorded for the period costs its share of one
// statement (no projection). A tenant the batch counts without a tenants
// row (limited by DEFAULT_PLAN) has no bill, so no spend is judged for it.
func evaluateSpend(ctx context.Context, tx pgx.Tx, plans *usagedata.PlanRules, periods billingcycle.Schedules, incs []increment, now time.Time, defaultPlan string) error {
	tenants, err := unreachedSpend(ctx, tx, spendTenants(plans, periods, incs, now))
	if err != nil || len(tenants) == 0 {
		return err
	}
	reader := usagedata.NewReader(tx).WithDefaultPlan(defaultPlan)
	var reached []usagedata.SpendBreach
	for _, st := range tenants {
		bill, err := reader.Bill(ctx, st.tenant, st.at)
		if errors.Is(err, usagedata.ErrUnknownTenant) {
			continue
		}
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
// their billing period (read in one statement), and the tenants left
// with some.
func unreachedSpend(ctx context.Context, tx pgx.Tx, tenants []spendTenant) ([]spendTenant, error) {
	if len(tenants) == 0 {
		return nil, nil
	}
	keys := make([]usagedata.SpendPeriod, len(tenants))
	for i, st := range tenants {
		keys[i] = usagedata.SpendPeriod{Tenant: st.tenant, PeriodStart: st.start.UTC()}
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
