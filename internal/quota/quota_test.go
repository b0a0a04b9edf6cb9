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
