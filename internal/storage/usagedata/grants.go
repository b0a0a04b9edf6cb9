package usagedata

import (
	"context"
	"fmt"
	"math/big"
	"time"

	"github.com/usagemeter/metering/internal/billingcycle"
	"github.com/usagemeter/metering/internal/credit"
	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/quota"
	"github.com/usagemeter/metering/internal/storage"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/credits"
	"github.com/usagemeter/metering/internal/windows"
)

// GrantStatus is one credit grant of a quota in the current period.
type GrantStatus struct {
	ID          string     `json:"id"`
	Amount      int64      `json:"amount"`
	Remaining   *big.Int   `json:"remaining"`
	Burnt       *big.Int   `json:"burnt"`
	EffectiveAt time.Time  `json:"effective_at"`
	ExpiresAt   *time.Time `json:"expires_at"`
	Priority    int        `json:"priority"`
	Source      string     `json:"source"`
	Reason      string     `json:"reason"`
}

// QuotaMeter names what a quota limits, for its credit burn-down: the
// implicit meter of a metric (Definition nil), or a defined meter over
// the groups matching Filter.
type QuotaMeter struct {
	Tenant     string
	Meter      string
	Definition *meter.Definition
	Filter     map[string]string
}

// QuotaHours returns the usage of m per hour of the period [start, end)
// of granularity g: the hour windows starting in a day or month period
// (a tenant's billing period), and the period's own window, at its hour's
// start, for a minute or hour period. One statement.
func QuotaHours(ctx context.Context, q storage.Executor, m QuotaMeter, g windows.Granularity, start, end time.Time) ([]credit.Hour, error) {
	r := NewReader(q)
	if g == windows.Minute || g == windows.Hour {
		var v *big.Int
		var err error
		if m.Definition == nil {
			v, err = GroupValue(ctx, q, m.Tenant, m.Meter, "", g, start)
		} else {
			v, err = MeterValue(ctx, q, m.Tenant, m.Meter, m.Definition.Aggregation, m.Definition.GroupBy, m.Filter, g, start)
		}
		if err != nil {
			return nil, err
		}
		return []credit.Hour{{Start: windows.Hour.Start(start), Usage: v}}, nil
	}
	var hours []credit.Hour
	if m.Definition == nil {
		ws, _, err := r.Usage(ctx, m.Tenant, m.Meter, windows.Hour, start, end)
		if err != nil {
			return nil, err
		}
		for _, w := range ws {
			hours = append(hours, credit.Hour{Start: w.Start, Usage: w.Value})
		}
		return hours, nil
	}
	u, err := r.MeterUsage(ctx, MeterQuery{Tenant: m.Tenant, Meter: *m.Definition, Granularity: windows.Hour, From: start, To: end, Filter: m.Filter})
	if err != nil {
		return nil, err
	}
	for _, w := range u.Windows {
		hours = append(hours, credit.Hour{Start: w.Start, Usage: w.Value})
	}
	return hours, nil
}

// QuotaCredit runs the credit burn-down of one period [start, end) of a
// quota of limit limit on m, with the grants given (those that do not
// overlap the period are left out), reading its hours with QuotaHours.
func QuotaCredit(ctx context.Context, q storage.Executor, m QuotaMeter, limit *int64, g windows.Granularity, start, end time.Time,
	grants []credit.Grant, now time.Time) (credit.Result, error) {
	hours, err := QuotaHours(ctx, q, m, g, start, end)
	if err != nil {
		return credit.Result{}, fmt.Errorf("reading the hours of %s/%s: %w", m.Tenant, m.Meter, err)
	}
	return credit.Burn(credit.Period{Start: start, End: end, Limit: limit, Hours: hours, Grants: grants, Now: now}), nil
}

// applyCredits sets the allowance, remaining, state and grants of q, a
// quota of tenant in the period containing now, when the tenant has
// grants on its meter overlapping the period; a quota without such
// grants, a per_group quota, an unlimited one, or one on a meter grants
// do not apply to is left as it is.
func (r *Reader) applyCredits(ctx context.Context, tenant string, qr quotaRow, q *QuotaStatus, rule quota.Rule, now time.Time) error {
	if q.PerGroup || q.Limit == nil {
		return nil
	}
	m := QuotaMeter{Tenant: tenant, Meter: q.Meter, Filter: q.Filter}
	if q.Meter != q.Metric {
		if qr.aggregation == "" || !credit.AppliesTo(qr.aggregation) {
			return nil
		}
		m.Definition = &meter.Definition{Name: q.Meter, Metric: q.Metric, Aggregation: meter.Aggregation(qr.aggregation), GroupBy: qr.groupBy}
	}
	stored, err := credits.OfMeter(ctx, r.q, tenant, q.Meter, q.PeriodStart, q.PeriodEnd)
	if err != nil || len(stored) == 0 {
		return err
	}
	gs := make([]credit.Grant, len(stored))
	byID := make(map[string]credits.Grant, len(stored))
	for i, g := range stored {
		gs[i], byID[g.ID] = g.Credit(), g
	}
	res, err := QuotaCredit(ctx, r.q, m, q.Limit, qr.period, q.PeriodStart, q.PeriodEnd, gs, now)
	if err != nil {
		return err
	}
	q.Allowance = res.Allowance
	q.Remaining = new(big.Int).Sub(res.Allowance, q.Used)
	if q.Remaining.Sign() < 0 {
		q.Remaining.SetInt64(0)
	}
	q.State = credit.State(rule, res.Allowance, q.Used)
	q.Grants = make([]GrantStatus, len(res.Grants))
	for i, s := range res.Grants {
		g := byID[s.Grant.ID]
		q.Grants[i] = GrantStatus{ID: g.ID, Amount: g.Amount, Remaining: s.Remaining, Burnt: s.Burnt, EffectiveAt: g.EffectiveAt,
			ExpiresAt: g.ExpiresAt, Priority: g.Priority, Source: g.Source, Reason: g.Reason}
	}
	return nil
}

// GrantBurn returns the burn-down of grant g in the period containing at
// of the tenant's first limited quota on g's meter that grants apply to
// (the quotas in force at at, by the order of QuotaRules; not per_group), with every grant of the
// tenant on that meter overlapping the period, as of now; and false when
// the tenant has no such quota, so that nothing burns g.
func (r *Reader) GrantBurn(ctx context.Context, g credits.Grant, at, now time.Time) (credit.GrantState, bool, error) {
	sched, err := accounts.TenantSchedule(ctx, r.q, g.Tenant)
	if err != nil {
		return credit.GrantState{}, false, err
	}
	from, to := windows.Month.SpanIn(sched, at) // the longest quota period
	plans, err := QuotaRules(ctx, r.q, []string{g.Tenant}, billingcycle.Schedules{g.Tenant: sched}, from, to, r.defaultPlan, now)
	if err != nil {
		return credit.GrantState{}, false, err
	}
	for _, rule := range plans.At(g.Tenant, at) {
		if rule.PerGroup || (rule.Implicit() && rule.Metric != g.Meter) || (!rule.Implicit() && rule.Meter != g.Meter) {
			continue
		}
		m := QuotaMeter{Tenant: g.Tenant, Meter: g.Meter, Filter: rule.Filter}
		if !rule.Implicit() {
			def, ok, err := r.Meter(ctx, g.Meter)
			if err != nil {
				return credit.GrantState{}, false, err
			}
			if !ok || !credit.AppliesTo(string(def.Aggregation)) {
				continue
			}
			m.Definition = &def
		}
		start, end := rule.Period.SpanIn(sched, at)
		stored, err := credits.OfMeter(ctx, r.q, g.Tenant, g.Meter, start, end)
		if err != nil {
			return credit.GrantState{}, false, err
		}
		gs := make([]credit.Grant, len(stored))
		for i, s := range stored {
			gs[i] = s.Credit()
		}
		res, err := QuotaCredit(ctx, r.q, m, rule.Limit, rule.Period, start, end, gs, now)
		if err != nil {
			return credit.GrantState{}, false, err
		}
		for _, s := range res.Grants {
			if s.Grant.ID == g.ID {
				return s, true, nil
			}
		}
		return credit.GrantState{}, false, nil
	}
	return credit.GrantState{}, false, nil
}
