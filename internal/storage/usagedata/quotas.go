package usagedata

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/usagemeter/metering/internal/billingcycle"
	"github.com/usagemeter/metering/internal/planperiod"
	"github.com/usagemeter/metering/internal/quota"
	"github.com/usagemeter/metering/internal/storage"
	"github.com/usagemeter/metering/internal/windows"
)

// QuotaRule is one limited quota of a tenant's plan, the window
// granularity of its period, and what it limits: the implicit meter of
// Metric (Meter empty), or the defined meter Meter, over the groups
// matching Filter (every group when empty), or each group on its own
// (PerGroup).
type QuotaRule struct {
	quota.Rule
	Period         windows.Granularity
	Tenant, Metric string
	Meter          string
	Filter         map[string]string
	PerGroup       bool
	// OveragePrice is the quota's overage price as stored (a price
	// object's JSON), nil when it has none.
	OveragePrice json.RawMessage
}

// Implicit reports whether r limits its metric's implicit meter.
func (r QuotaRule) Implicit() bool { return r.Meter == "" }

// planQuota is a plan_quotas row of a version, with its meter's
// definition: the Data of a planperiod.Quota.
type planQuota struct {
	status          QuotaStatus
	period          windows.Granularity
	aggregation     string // "" for the implicit meter, or a meter not defined
	groupBy         []string
	stripeEventName string
	overagePrice    json.RawMessage
	// priced: the quota has a price or an overage price (it has a line
	// in the bill).
	priced bool
}

// quotaGranularities are the periods a quota may have.
var quotaGranularities = []windows.Granularity{windows.Day, windows.Month}

// PlanRules holds, for some tenants, their plan assignments and the
// versions (with quotas) of their plans and of the default plan that were
// in force over a span of time, read in one statement; Rules evaluates
// them (package planperiod) for any quota period inside that span.
type PlanRules struct {
	inputs  map[string]planperiod.Inputs
	periods billingcycle.Schedules
	now     time.Time
	cache   map[rulesKey][]QuotaRule
}

type rulesKey struct {
	tenant string
	g      windows.Granularity
	start  time.Time
}

// QuotaRules reads what decides the quotas of tenants over [from, to):
// their assignments overlapping it, and every version of their plans and
// of defaultPlan ("" for none: a tenant without an assignment in force
// is then unlimited) in force during it, with the versions' quotas. It is
// one statement whatever the number of tenants. A month quota's period is
// the tenant's billing period in periods (read by the caller, with
// accounts.Schedules).
func QuotaRules(ctx context.Context, q storage.Executor, tenants []string, periods billingcycle.Schedules, from, to time.Time, defaultPlan string, now time.Time) (*PlanRules, error) {
	inputs, err := readPlanInputs(ctx, q, tenants, from, to, defaultPlan)
	if err != nil {
		return nil, fmt.Errorf("reading quotas: %w", err)
	}
	return &PlanRules{inputs: inputs, periods: periods, now: now, cache: map[rulesKey][]QuotaRule{}}, nil
}

// Rules returns the limited quotas of tenant whose period is g and
// starts at start (the period must lie in the span read), in the order of
// metric, meter (the implicit meter first), filter and per_group.
func (p *PlanRules) Rules(tenant string, g windows.Granularity, start time.Time) []QuotaRule {
	k := rulesKey{tenant, g, start}
	if rs, ok := p.cache[k]; ok {
		return rs
	}
	res, err := planperiod.Evaluate(p.inputs[tenant], start, g.EndIn(p.periods.Of(tenant), start), p.now)
	var rs []QuotaRule
	if err == nil {
		for _, pq := range res.Quotas {
			if pq.Limit == nil || pq.Key.Period != string(g) {
				continue
			}
			row := pq.Data.(planQuota)
			rs = append(rs, QuotaRule{
				Rule:   quota.Rule{Limit: pq.Limit, BurstPercent: row.status.BurstPercent, Hard: row.status.Hard, Thresholds: row.status.Thresholds, Grace: row.status.rule().Grace},
				Period: g, Tenant: tenant, Metric: row.status.Metric, Meter: pq.Key.Meter,
				Filter: row.status.Filter, PerGroup: row.status.PerGroup, OveragePrice: row.overagePrice,
			})
		}
	}
	p.cache[k] = rs
	return rs
}

// At returns the limited quotas of tenant over the periods containing at,
// day quotas before month quotas.
func (p *PlanRules) At(tenant string, at time.Time) []QuotaRule {
	var rs []QuotaRule
	for _, g := range quotaGranularities {
		rs = append(rs, p.Rules(tenant, g, g.StartIn(p.periods.Of(tenant), at))...)
	}
	return rs
}

// readPlanInputs reads, in one statement, the assignments of tenants
// overlapping [from, to) and the versions in force during it of their
// plans and of defaultPlan, with every quota of those versions.
func readPlanInputs(ctx context.Context, q storage.Executor, tenants []string, from, to time.Time, defaultPlan string) (map[string]planperiod.Inputs, error) {
	rows, err := q.Query(ctx, `WITH a AS (
			SELECT tp.tenant, tp.plan, tp.valid_from, tp.valid_to, tp.source FROM tenant_plans tp
			WHERE tp.tenant = ANY($1) AND tp.valid_from < $3 AND (tp.valid_to IS NULL OR tp.valid_to > $2)
		), needed AS (
			SELECT DISTINCT plan FROM a WHERE plan IS NOT NULL
			UNION SELECT $4::text WHERE $4 <> ''
		), v AS (
			SELECT v.plan, v.version, v.effective_from, v.proration, v.spend_thresholds FROM plan_versions v JOIN needed n ON n.plan = v.plan
			WHERE v.effective_from < $3 AND NOT EXISTS (SELECT 1 FROM plan_versions l
				WHERE l.plan = v.plan AND l.effective_from > v.effective_from AND l.effective_from <= $2)
		)
		SELECT true, a.tenant, a.plan, a.valid_from, a.valid_to, a.source, 0, NULL::text,
			NULL::text, NULL::text, NULL::text, false, NULL::bigint, NULL::text, 0, false, NULL::text, NULL::text, NULL::text[], NULL::text,
			NULL::int[], NULL::bigint, NULL::bigint, NULL::text[], false
		FROM a
		UNION ALL
		SELECT false, '', v.plan, v.effective_from, NULL, '', v.version, v.proration,
			q.metric, q.meter, q.group_filter::text, coalesce(q.per_group, false), q.quota_limit, q.period, coalesce(q.burst_percent, 0), coalesce(q.hard, false),
			q.stripe_event_name, CASE WHEN q.meter IS NULL THEN '' ELSE coalesce(m.aggregation, '') END, coalesce(m.group_by, '{}'),
			q.overage_price::text, q.thresholds, q.grace_ms, q.grace_amount, v.spend_thresholds,
			coalesce(q.price IS NOT NULL OR q.overage_price IS NOT NULL, false)
		FROM v LEFT JOIN plan_quotas q ON q.plan = v.plan AND q.version = v.version
		LEFT JOIN meters m ON m.name = q.meter AND m.metric = q.metric`, tenants, from, to, defaultPlan)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var assignments = map[string][]planperiod.Assignment{}
	type vkey struct {
		plan    string
		version int
	}
	versions := map[vkey]*planperiod.Version{}
	var order []vkey
	for rows.Next() {
		var isAssignment bool
		var tenant, source string
		var plan, proration, metric, meterName, filter, period, eventName, aggregation, overage *string
		var fromTS, toTS pgtype.Timestamptz
		var version, burst int
		var perGroup, hard bool
		var limit *int64
		var groupBy []string
		var thresholds []int32
		var graceMS, graceAmount *int64
		var spend []string
		var priced bool
		if err := rows.Scan(&isAssignment, &tenant, &plan, &fromTS, &toTS, &source, &version, &proration,
			&metric, &meterName, &filter, &perGroup, &limit, &period, &burst, &hard, &eventName, &aggregation, &groupBy, &overage,
			&thresholds, &graceMS, &graceAmount, &spend, &priced); err != nil {
			return nil, err
		}
		if isAssignment {
			a := planperiod.Assignment{From: instant(fromTS), Source: source, None: plan == nil}
			if plan != nil {
				a.Plan = *plan
			}
			if toTS.Valid {
				a.To = instant(toTS)
			}
			assignments[tenant] = append(assignments[tenant], a)
			continue
		}
		k := vkey{*plan, version}
		v := versions[k]
		if v == nil {
			v = &planperiod.Version{Plan: *plan, Version: version, EffectiveFrom: instant(fromTS), Proration: planperiod.Proration(*proration),
				SpendThresholds: spend}
			versions[k] = v
			order = append(order, k)
		}
		if metric == nil {
			continue // a version without quotas
		}
		pq := planQuota{period: windows.Granularity(*period), stripeEventName: deref(eventName), aggregation: deref(aggregation), groupBy: groupBy,
			priced: priced}
		if overage != nil {
			pq.overagePrice = json.RawMessage(*overage)
		}
		st := &pq.status
		st.Metric, st.Meter, st.PerGroup, st.Limit, st.BurstPercent, st.Hard = *metric, *metric, perGroup, limit, burst, hard
		st.Thresholds = make([]int, len(thresholds))
		for i, t := range thresholds {
			st.Thresholds[i] = int(t)
		}
		if graceMS != nil || graceAmount != nil {
			st.Grace = &GraceStatus{Amount: graceAmount}
			if graceMS != nil {
				st.Grace.ms = *graceMS
				st.Grace.Duration = (time.Duration(*graceMS) * time.Millisecond).String()
			}
		}
		if meterName != nil {
			st.Meter = *meterName
		}
		if st.Filter, err = parseFilter(*filter); err != nil {
			return nil, err
		}
		v.Quotas = append(v.Quotas, planperiod.Quota{
			Key:   planperiod.Key{Metric: *metric, Meter: deref(meterName), Filter: *filter, PerGroup: perGroup, Period: *period},
			Limit: limit, Data: pq,
		})
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	out := make(map[string]planperiod.Inputs, len(tenants))
	for _, t := range tenants {
		in := planperiod.Inputs{Assignments: assignments[t], DefaultPlan: defaultPlan}
		for _, k := range order {
			if k.plan == defaultPlan || slices.ContainsFunc(in.Assignments, func(a planperiod.Assignment) bool { return a.Plan == k.plan }) {
				in.Versions = append(in.Versions, *versions[k])
			}
		}
		out[t] = in
	}
	return out, nil
}

// instant converts a timestamptz to a time, -infinity to the zero time
// (before every other) and infinity to the latest time.
func instant(ts pgtype.Timestamptz) time.Time {
	switch ts.InfinityModifier {
	case pgtype.NegativeInfinity:
		return time.Time{}
	case pgtype.Infinity:
		return time.Unix(1<<62, 0)
	}
	return ts.Time.UTC()
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// parseFilter reads a quota's group_filter as jsonb prints it.
func parseFilter(s string) (map[string]string, error) {
	f := map[string]string{}
	if err := json.Unmarshal([]byte(s), &f); err != nil {
		return nil, fmt.Errorf("reading a quota's filter: %w", err)
	}
	return f, nil
}

// SpendRule is what the spend thresholds of a tenant's billing period
// read at an instant: the plan version in force then and its thresholds.
type SpendRule struct {
	Plan    string
	Version int
	// Thresholds are the version's spend thresholds, increasing.
	Thresholds []string
	// PricedMetrics are the metrics of the version's priced quotas: the
	// usage that moves its bill.
	PricedMetrics []string
}

// Spend returns the spend rule of tenant's billing period [start, end) at
// at (inside the span read): the plan version in force then, as
// Reader.Bill finds it. ok is false when no version is in force or it has
// no spend thresholds; no statement is run.
func (p *PlanRules) Spend(tenant string, start, end, at time.Time) (SpendRule, bool) {
	res, err := planperiod.Evaluate(p.inputs[tenant], start, end, at)
	if err != nil || res.Plan == "" {
		return SpendRule{}, false
	}
	for _, seg := range res.Segments {
		v := seg.Version
		if v == nil || v.Plan != res.Plan || v.Version != res.Version {
			continue
		}
		if len(v.SpendThresholds) == 0 {
			return SpendRule{}, false
		}
		sr := SpendRule{Plan: v.Plan, Version: v.Version, Thresholds: v.SpendThresholds}
		for _, q := range v.Quotas {
			if pq, ok := q.Data.(planQuota); ok && pq.priced && !slices.Contains(sr.PricedMetrics, q.Key.Metric) {
				sr.PricedMetrics = append(sr.PricedMetrics, q.Key.Metric)
			}
		}
		return sr, true
	}
	return SpendRule{}, false
}
