package rollup

import (
	"context"
	"math"
	"math/big"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/billingcycle"
	"github.com/usagemeter/metering/internal/credit"
	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/meterset"
	"github.com/usagemeter/metering/internal/quota"
	"github.com/usagemeter/metering/internal/storage/credits"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/windows"
)

// creditBook holds the credit grants of a batch's tenants on the meters
// of their quotas, read once per batch, by (tenant, meter).
type creditBook struct {
	grants map[[2]string][]credit.Grant
}

// readCredits reads, in one statement, the grants of the tenants that
// have a limited quota grants apply to (not per_group) which overlap a
// month around the batch's usage (the largest quota period), or nothing
// when no such tenant is in the batch.
func readCredits(ctx context.Context, tx pgx.Tx, periods billingcycle.Schedules, rules []rule, incs []increment) (*creditBook, error) {
	book := &creditBook{}
	seen := map[string]bool{}
	var tenants []string
	for _, r := range rules {
		if !r.PerGroup && r.Limit != nil && !seen[r.Tenant] {
			seen[r.Tenant] = true
			tenants = append(tenants, r.Tenant)
		}
	}
	if len(tenants) == 0 || len(incs) == 0 {
		return book, nil
	}
	// Every quota period the batch touched: the tenant's billing period
	// and the UTC day of each increment.
	from, to := periods.Span(incs[0].tenant, incs[0].at)
	for _, in := range incs {
		s, e := periods.Span(in.tenant, in.at)
		ds, de := windows.Day.Span(in.at)
		from, to = minTime(from, s, ds), maxTime(to, e, de)
	}
	stored, err := credits.Overlapping(ctx, tx, tenants, from, to)
	if err != nil || len(stored) == 0 {
		return book, err
	}
	book.grants = map[[2]string][]credit.Grant{}
	for _, g := range stored {
		k := [2]string{g.Tenant, g.Meter}
		book.grants[k] = append(book.grants[k], g.Credit())
	}
	return book, nil
}

// evaluation is a quota's state for a period's usage and the limit it was
// judged against: the plan's limit, or the allowance grants raised it to.
type evaluation struct {
	limit int64
	// judged is the limit judged against, as an exact integer.
	judged *big.Int
	a      quota.Assessment
}

// planEvaluation judges value against r's limit alone (a grace by time
// not run out: see withGrace).
func planEvaluation(r rule, value *big.Int) evaluation {
	limit := big.NewInt(*r.Limit)
	return evaluation{limit: *r.Limit, judged: limit, a: r.Assess(limit, value, time.Time{}, time.Time{})}
}

// withGrace judges ev again when its usage is in a grace by time: the
// period's exceeded breach (one read, only then) says when the grace
// started, and now whether it has run out.
func withGrace(ctx context.Context, tx pgx.Tx, r rule, ev evaluation, value *big.Int, meterName, groupKey string, start, now time.Time) (evaluation, error) {
	if !ev.a.InGrace || r.Grace.Duration <= 0 {
		return ev, nil
	}
	since, err := usagedata.ExceededSince(ctx, tx, r.Tenant, meterName, groupKey, start)
	if err != nil {
		return ev, err
	}
	if since.IsZero() {
		return ev, nil // exceeded in this batch: the grace starts now
	}
	ev.a = r.Assess(ev.judged, value, since, now)
	return ev, nil
}

// evaluate judges value, the usage of r's period starting at start,
// against the allowance when the tenant has grants on the quota's meter
// overlapping the period (reading the period's hours, one statement), and
// against the plan's limit otherwise. meters resolves a defined meter
// (nil for a quota on an implicit meter).
func (b *creditBook) evaluate(ctx context.Context, tx pgx.Tx, meters *meterset.Set, r rule, start, end time.Time, value *big.Int, now time.Time) (evaluation, error) {
	plan := planEvaluation(r, value)
	if b == nil || len(b.grants) == 0 || r.PerGroup {
		return plan, nil
	}
	name := r.Metric
	m := usagedata.QuotaMeter{Tenant: r.Tenant, Meter: r.Metric}
	if !r.Implicit() {
		d, ok := meters.Named(r.Meter)
		if !ok || !credit.AppliesTo(string(d.Aggregation)) {
			return plan, nil
		}
		name, m.Meter, m.Filter = r.Meter, r.Meter, r.Filter
		def := meter.Definition{Name: d.Name, Metric: d.Metric, Aggregation: d.Aggregation, GroupBy: d.GroupBy}
		m.Definition = &def
	}
	var gs []credit.Grant
	for _, g := range b.grants[[2]string{r.Tenant, name}] {
		if g.Overlaps(start, end) {
			gs = append(gs, g)
		}
	}
	if len(gs) == 0 {
		return plan, nil
	}
	res, err := usagedata.QuotaCredit(ctx, tx, m, r.Limit, r.Period, start, end, gs, now)
	if err != nil {
		return evaluation{}, err
	}
	limit := int64(math.MaxInt64) // a breach row's limit is a bigint
	if res.Allowance.IsInt64() {
		limit = res.Allowance.Int64()
	}
	return evaluation{limit: limit, judged: res.Allowance, a: r.Assess(res.Allowance, value, time.Time{}, time.Time{})}, nil
}

func minTime(t time.Time, ts ...time.Time) time.Time {
	for _, u := range ts {
		if u.Before(t) {
			t = u
		}
	}
	return t
}

func maxTime(t time.Time, ts ...time.Time) time.Time {
	for _, u := range ts {
		if u.After(t) {
			t = u
		}
	}
	return t
}
