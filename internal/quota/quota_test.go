package quota_test

import (
	"encoding/json"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/quota"
)

func ptr(n int64) *int64 { return &n }

func TestEvaluate(t *testing.T) {
	hard := quota.Rule{Limit: ptr(1000), BurstPercent: 20, Hard: true}
	soft := quota.Rule{Limit: ptr(1000), BurstPercent: 20}
	tests := []struct {
		name string
		r    quota.Rule
		used int64
		want quota.State
	}{
		{"unlimited", quota.Rule{}, 1 << 60, quota.OK},
		{"zero limit, zero use", quota.Rule{Limit: ptr(0)}, 0, quota.Exceeded},
		{"just below warning", hard, 799, quota.OK},
		{"warning at 80%", hard, 800, quota.Warning},
		{"just below limit", hard, 999, quota.Warning},
		{"exceeded at 100%", hard, 1000, quota.Exceeded},
		{"hard at limit × (1+burst) is not yet blocked", hard, 1200, quota.Exceeded},
		{"hard beyond limit × (1+burst) is blocked", hard, 1201, quota.Blocked},
		{"soft is never blocked", soft, 1_000_000, quota.Exceeded},
		{"hard with no burst blocks right past the limit", quota.Rule{Limit: ptr(10), Hard: true}, 11, quota.Blocked},
		{"fractional 80%: 80% of 7 is 5.6", quota.Rule{Limit: ptr(7)}, 5, quota.OK},
		{"fractional 80%: 6 ≥ 5.6", quota.Rule{Limit: ptr(7)}, 6, quota.Warning},
		{"huge limit", quota.Rule{Limit: ptr(1 << 62), Hard: true}, 1<<62 + 1, quota.Blocked},
	}
	for _, tt := range tests {
		if got := tt.r.Evaluate(big.NewInt(tt.used)); got != tt.want {
			t.Errorf("%s: Evaluate(%d) = %s, want %s", tt.name, tt.used, got, tt.want)
		}
	}
}

func TestReached(t *testing.T) {
	if got := quota.Reached(quota.Blocked); !slices.Equal(got, []quota.State{quota.Warning, quota.Exceeded, quota.Blocked}) {
		t.Fatalf("Reached(blocked) = %v", got)
	}
	if got := quota.Reached(quota.OK); got != nil {
		t.Fatalf("Reached(ok) = %v", got)
	}
}

// Breach ids: an implicit meter's are what they always were; a defined
// meter's differ with the meter, the group key, the period and the
// threshold, and never equal an implicit one, even for the same names.
func TestBreachIDs(t *testing.T) {
	t.Parallel()
	start := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	if got := quota.BreachID("acme", "api_calls", start, "warning"); got != quota.BreachID("acme", "api_calls", start.In(time.FixedZone("x", 3600)), "warning") {
		t.Fatalf("BreachID depends on the time zone: %s", got)
	}
	ids := map[string]string{}
	add := func(what, id string) {
		t.Helper()
		if prev, ok := ids[id]; ok {
			t.Fatalf("%s and %s share the id %s", prev, what, id)
		}
		ids[id] = what
	}
	for _, th := range []string{"warning", "exceeded", "blocked"} {
		for _, s := range []time.Time{start, start.AddDate(0, 1, 0)} {
			add(strings.Join([]string{"implicit tokens", s.String(), th}, " "), quota.BreachID("acme", "tokens", s, th))
			add(strings.Join([]string{"implicit tokens_by_model", s.String(), th}, " "), quota.BreachID("acme", "tokens_by_model", s, th))
			for _, key := range []string{"", `["gpt-4"]`, `{"model":"gpt-4"}`, `[null]`} {
				add(strings.Join([]string{"tokens_by_model", key, s.String(), th}, " "), quota.MeterBreachID("acme", "tokens_by_model", key, s, th))
				add(strings.Join([]string{"other tenant", key, s.String(), th}, " "), quota.MeterBreachID("globex", "tokens_by_model", key, s, th))
			}
		}
	}
	if a, b := quota.MeterBreachID("acme", "m", `["a"]`, start, "warning"), quota.MeterBreachID("acme", "m", `["a"]`, start, "warning"); a != b {
		t.Fatalf("MeterBreachID is not stable: %s, %s", a, b)
	}
}

// A breach's JSON carries its meter and group, and not its group key.
func TestBreachJSON(t *testing.T) {
	t.Parallel()
	b := quota.Breach{BreachID: "b", Tenant: "acme", Metric: "tokens", Meter: "tokens_by_model", Group: json.RawMessage(`{"model":null}`),
		GroupKey: "[null]", Value: big.NewInt(5), Threshold: "warning"}
	out, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatal(err)
	}
	if string(m["meter"]) != `"tokens_by_model"` || string(m["group"]) != `{"model":null}` || strings.Contains(string(out), "[null]") {
		t.Fatalf("breach JSON = %s", out)
	}
}

func TestAssess(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	amount := int64(50)
	custom := quota.Rule{Limit: ptr(1000), Thresholds: []int{50, 80, 90}}
	byTime := quota.Rule{Limit: ptr(1000), BurstPercent: 10, Hard: true, Grace: quota.Grace{Duration: 24 * time.Hour}}
	byAmount := quota.Rule{Limit: ptr(1000), Hard: true, Grace: quota.Grace{Amount: &amount}}
	both := quota.Rule{Limit: ptr(1000), Hard: true, Grace: quota.Grace{Duration: time.Hour, Amount: &amount}}
	tests := []struct {
		name       string
		r          quota.Rule
		used       int64
		since, now time.Time
		want       quota.State
		warnings   []int
		inGrace    bool
	}{
		{"default thresholds: 79 % ok", quota.Rule{Limit: ptr(1000)}, 790, time.Time{}, t0, quota.OK, nil, false},
		{"default thresholds: 80 % warning", quota.Rule{Limit: ptr(1000)}, 800, time.Time{}, t0, quota.Warning, []int{80}, false},
		{"custom: below the lowest", custom, 499, time.Time{}, t0, quota.OK, nil, false},
		{"custom: 50 %", custom, 500, time.Time{}, t0, quota.Warning, []int{50}, false},
		{"custom: 89.9 %", custom, 899, time.Time{}, t0, quota.Warning, []int{50, 80}, false},
		{"custom: 90 %", custom, 900, time.Time{}, t0, quota.Warning, []int{50, 80, 90}, false},
		{"custom: 100 % is exceeded with every warning", custom, 1000, time.Time{}, t0, quota.Exceeded, []int{50, 80, 90}, false},
		{"grace by time: past the burst, not yet exceeded before", byTime, 1101, time.Time{}, t0, quota.Exceeded, []int{80}, true},
		{"grace by time: within the duration", byTime, 1101, t0, t0.Add(23 * time.Hour), quota.Exceeded, []int{80}, true},
		{"grace by time: run out at the duration", byTime, 1101, t0, t0.Add(24 * time.Hour), quota.Blocked, []int{80}, false},
		{"grace by time: at the burst is exceeded anyway", byTime, 1100, t0, t0.Add(48 * time.Hour), quota.Exceeded, []int{80}, false},
		{"grace by amount: at limit + amount", byAmount, 1050, time.Time{}, t0, quota.Exceeded, []int{80}, true},
		{"grace by amount: beyond limit + amount", byAmount, 1051, time.Time{}, t0, quota.Blocked, []int{80}, false},
		{"both: the amount runs out first", both, 1051, t0, t0.Add(time.Minute), quota.Blocked, []int{80}, false},
		{"both: the time runs out first", both, 1001, t0, t0.Add(time.Hour), quota.Blocked, []int{80}, false},
		{"both: neither run out", both, 1001, t0, t0.Add(time.Minute), quota.Exceeded, []int{80}, true},
		{"a grace on a soft quota changes nothing", quota.Rule{Limit: ptr(10), Grace: quota.Grace{Amount: &amount}}, 1 << 40, time.Time{}, t0, quota.Exceeded, []int{80}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			a := tt.r.Assess(big.NewInt(*tt.r.Limit), big.NewInt(tt.used), tt.since, tt.now)
			if a.State != tt.want || !slices.Equal(a.Warnings, tt.warnings) || a.InGrace != tt.inGrace {
				t.Fatalf("Assess(%d) = %+v; want %s, warnings %v, in grace %t", tt.used, a, tt.want, tt.warnings, tt.inGrace)
			}
			// Evaluate is Assess with a grace by time not run out.
			if tt.since.IsZero() && tt.r.Evaluate(big.NewInt(tt.used)) != tt.want {
				t.Fatalf("Evaluate(%d) = %s, want %s", tt.used, tt.r.Evaluate(big.NewInt(tt.used)), tt.want)
			}
		})
	}
}

func TestGraceEnds(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	amount := int64(50)
	r := quota.Rule{Limit: ptr(1000), Hard: true, Grace: quota.Grace{Duration: 2 * time.Hour, Amount: &amount}}
	a := r.Assess(big.NewInt(1000), big.NewInt(1020), t0, t0)
	if !a.GraceEndsAt.Equal(t0.Add(2*time.Hour)) || a.GraceEndsAbove.Int64() != 1050 {
		t.Fatalf("grace ends at %s, above %s", a.GraceEndsAt, a.GraceEndsAbove)
	}
}

func TestLevels(t *testing.T) {
	t.Parallel()
	r := quota.Rule{Limit: ptr(100), Hard: true, Thresholds: []int{50, 80, 90}}
	var names []string
	for _, l := range r.Assess(big.NewInt(100), big.NewInt(500), time.Time{}, time.Time{}).Levels() {
		names = append(names, l.Name())
	}
	if want := []string{"warning:50", "warning", "warning:90", "exceeded", "blocked"}; !slices.Equal(names, want) {
		t.Fatalf("levels %q, want %q", names, want)
	}
}

func TestValidThresholds(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		ts []int
		ok bool
	}{
		{nil, true}, {[]int{80}, true}, {[]int{1, 50, 99}, true},
		{[]int{0}, false}, {[]int{100}, false}, {[]int{50, 50}, false}, {[]int{80, 50}, false},
		{[]int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, false},
	} {
		if err := quota.ValidThresholds(tt.ts); (err == nil) != tt.ok {
			t.Errorf("ValidThresholds(%v) = %v, want ok %t", tt.ts, err, tt.ok)
		}
	}
}
