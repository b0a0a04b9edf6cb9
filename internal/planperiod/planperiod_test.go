package planperiod_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/planperiod"
)

var (
	start = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	end   = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC) // 30 days
	day   = 24 * time.Hour
)

func lim(n int64) *int64 { return &n }

func q(metric string, limit *int64) planperiod.Quota {
	return planperiod.Quota{Key: planperiod.Key{Metric: metric, Filter: "{}", Period: "month"}, Limit: limit}
}

func version(plan string, n int, from time.Time, p planperiod.Proration, qs ...planperiod.Quota) planperiod.Version {
	return planperiod.Version{Plan: plan, Version: n, EffectiveFrom: from, Proration: p, Quotas: qs}
}

// show prints quotas as "metric=limit" ("metric=∞" for unlimited).
func show(qs []planperiod.Quota) string {
	var out []string
	for _, q := range qs {
		if q.Limit == nil {
			out = append(out, q.Key.Metric+"=∞")
			continue
		}
		out = append(out, fmt.Sprintf("%s=%d", q.Key.Metric, *q.Limit))
	}
	return strings.Join(out, " ")
}

func TestEvaluate(t *testing.T) {
	t.Parallel()
	always := time.Time{}
	free := version("free", 1, always, planperiod.Immediate, q("calls", lim(1000)))
	mid := start.Add(10 * day) // a third of the period gone
	assigned := func(plan string, from, to time.Time) planperiod.Assignment {
		return planperiod.Assignment{Plan: plan, From: from, To: to, Source: "admin"}
	}
	upgrade := func(p planperiod.Proration, qs ...planperiod.Quota) planperiod.Inputs {
		return planperiod.Inputs{
			Assignments: []planperiod.Assignment{assigned("free", always, mid), assigned("pro", mid, time.Time{})},
			Versions:    []planperiod.Version{free, version("pro", 1, always, p, qs...)},
		}
	}
	tests := []struct {
		name   string
		in     planperiod.Inputs
		now    time.Time
		want   string
		plan   string
		source string
		policy planperiod.Proration
	}{
		{"one version all period: its limits", planperiod.Inputs{Assignments: []planperiod.Assignment{assigned("free", always, time.Time{})},
			Versions: []planperiod.Version{free}}, end.Add(day), "calls=1000", "free", "admin", planperiod.Immediate},
		{"unchanged plan, prorate policy: limits unchanged", planperiod.Inputs{Assignments: []planperiod.Assignment{assigned("pro", always, time.Time{})},
			Versions: []planperiod.Version{version("pro", 1, always, planperiod.Prorate, q("calls", lim(7)))}}, mid, "calls=7", "pro", "admin", planperiod.Prorate},
		{"immediate upgrade: the new limits for the whole period", upgrade(planperiod.Immediate, q("calls", lim(4000))), mid.Add(day),
			"calls=4000", "pro", "admin", planperiod.Immediate},
		{"next_period upgrade: the old limits until the period ends", upgrade(planperiod.NextPeriod, q("calls", lim(4000))), mid.Add(day),
			"calls=1000", "pro", "admin", planperiod.NextPeriod},
		{"prorate upgrade: 1/3 × 1000 + 2/3 × 4000", upgrade(planperiod.Prorate, q("calls", lim(4000))), mid.Add(day),
			"calls=3000", "pro", "admin", planperiod.Prorate},
		{"prorate rounds down", upgrade(planperiod.Prorate, q("calls", lim(1001))), mid.Add(day),
			"calls=1000", "pro", "admin", planperiod.Prorate}, // 333.33 + 667.33 = 1000.67
		{"prorate: a quota absent before weighs 0 there", upgrade(planperiod.Prorate, q("calls", lim(1000)), q("tokens", lim(300))), mid.Add(day),
			"calls=1000 tokens=200", "pro", "admin", planperiod.Prorate},
		{"prorate: unlimited in a part makes the period unlimited", upgrade(planperiod.Prorate, q("calls", nil)), mid.Add(day),
			"calls=∞", "pro", "admin", planperiod.Prorate},
		{"immediate: a quota the new version drops is gone", upgrade(planperiod.Immediate), mid.Add(day),
			"", "pro", "admin", planperiod.Immediate},
		{"before the change, immediate: the version in force now", upgrade(planperiod.Immediate, q("calls", lim(4000))), start.Add(day),
			"calls=1000", "free", "admin", planperiod.Immediate},
		{"a new version of the same plan, prorate", planperiod.Inputs{Assignments: []planperiod.Assignment{assigned("free", always, time.Time{})},
			Versions: []planperiod.Version{free, version("free", 2, mid, planperiod.Prorate, q("calls", lim(100)))}}, end,
			"calls=400", "free", "admin", planperiod.Prorate}, // 1/3 × 1000 + 2/3 × 100
		{"a scheduled version after the period changes nothing", planperiod.Inputs{Assignments: []planperiod.Assignment{assigned("free", always, time.Time{})},
			Versions: []planperiod.Version{free, version("free", 2, end.Add(day), planperiod.Immediate, q("calls", lim(5)))}}, mid,
			"calls=1000", "free", "admin", planperiod.Immediate},
		{"no assignment: the default plan", planperiod.Inputs{Versions: []planperiod.Version{free}, DefaultPlan: "free"}, mid,
			"calls=1000", "free", "default", planperiod.Immediate},
		{"no assignment, no default plan: unlimited", planperiod.Inputs{}, mid, "", "", "", planperiod.Immediate},
		{"explicitly no plan: unlimited, the default does not apply", planperiod.Inputs{
			Assignments: []planperiod.Assignment{{None: true, From: always, Source: "admin"}}, Versions: []planperiod.Version{free}, DefaultPlan: "free"}, mid,
			"", "", "admin", planperiod.Immediate},
		{"assignment ends mid-period: the default plan after, immediate", planperiod.Inputs{
			Assignments: []planperiod.Assignment{assigned("pro", always, mid)},
			Versions:    []planperiod.Version{free, version("pro", 1, always, planperiod.Prorate, q("calls", lim(4000)))}, DefaultPlan: "free"}, end,
			"calls=1000", "free", "default", planperiod.Immediate},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			res, err := planperiod.Evaluate(tt.in, start, end, tt.now)
			if err != nil {
				t.Fatal(err)
			}
			if got := show(res.Quotas); got != tt.want || res.Plan != tt.plan || res.Source != tt.source || res.Policy != tt.policy {
				t.Fatalf("Evaluate = %q plan %q source %q policy %s; want %q plan %q source %q policy %s",
					got, res.Plan, res.Source, res.Policy, tt.want, tt.plan, tt.source, tt.policy)
			}
		})
	}
}

func TestEvaluateRefusesAnEmptyPeriod(t *testing.T) {
	t.Parallel()
	if _, err := planperiod.Evaluate(planperiod.Inputs{}, start, start, start); err == nil {
		t.Fatal("an empty period was evaluated")
	}
}

func TestSegmentsMergeTheSameVersion(t *testing.T) {
	t.Parallel()
	in := planperiod.Inputs{
		// Re-assigned the same plan mid-period: one segment.
		Assignments: []planperiod.Assignment{{Plan: "free", To: start.Add(day), Source: "admin"}, {Plan: "free", From: start.Add(day), Source: "admin"}},
		Versions:    []planperiod.Version{version("free", 1, time.Time{}, planperiod.Immediate)},
	}
	if segs := planperiod.Segments(in, start, end); len(segs) != 1 || !segs[0].From.Equal(start) || !segs[0].To.Equal(end) {
		t.Fatalf("Segments = %+v, want one over the period", segs)
	}
}
