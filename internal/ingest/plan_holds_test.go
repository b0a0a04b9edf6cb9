package ingest_test

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestPlanHoldOnAnomaly: a plan version keeps hold_on_anomaly as sent
// (a change of it alone is a new version); a factor that is not a number
// in range, or a window out of range, is 400; without it a plan shows
// none.
func TestPlanHoldOnAnomaly(t *testing.T) {
	t.Parallel()
	var ticks atomic.Int64 // a clock that moves: each version at its own time
	e := newEnv(t, envOpts{now: func() time.Time {
		return time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC).Add(time.Duration(ticks.Add(1)) * time.Second)
	}})
	const quotas = `"quotas":[{"metric":"api_calls","limit":1000,"period":"month","stripe_event_name":"api_calls"}]`
	tests := []struct {
		name, body string
		status     int
		version    float64
		hold       string
	}{
		{"without", `{` + quotas + `}`, 200, 1, ""},
		{"factor 10", `{"hold_on_anomaly":{"factor":10},` + quotas + `}`, 200, 2, `"hold_on_anomaly":{"factor":10}`},
		{"the same again", `{"hold_on_anomaly":{"factor":10},` + quotas + `}`, 200, 2, `"hold_on_anomaly":{"factor":10}`},
		{"decimal and window", `{"hold_on_anomaly":{"factor":2.5,"window":5},` + quotas + `}`, 200, 3, `"hold_on_anomaly":{"factor":2.5,"window":5}`},
		{"zero factor", `{"hold_on_anomaly":{"factor":0},` + quotas + `}`, 400, 0, ""},
		{"no factor", `{"hold_on_anomaly":{},` + quotas + `}`, 400, 0, ""},
		{"huge exponent", `{"hold_on_anomaly":{"factor":1e999999999},` + quotas + `}`, 400, 0, ""},
		{"window too long", `{"hold_on_anomaly":{"factor":3,"window":5000},` + quotas + `}`, 400, 0, ""},
		{"unknown field", `{"hold_on_anomaly":{"factor":3,"k":1},` + quotas + `}`, 400, 0, ""},
		{"off again", `{"hold_on_anomaly":null,` + quotas + `}`, 200, 4, ""},
	}
	for _, tc := range tests {
		r := e.do("PUT", "/v1/admin/plans/pro", adminKey, "application/json", tc.body)
		if r.status != tc.status {
			t.Fatalf("%s: %d %s, want %d", tc.name, r.status, r.raw, tc.status)
		}
		if tc.status != 200 {
			continue
		}
		if r.body["version"] != tc.version {
			t.Errorf("%s: version %v, want %v", tc.name, r.body["version"], tc.version)
		}
		if _, has := r.body["hold_on_anomaly"]; has != (tc.hold != "") || (tc.hold != "" && !strings.Contains(r.raw, tc.hold)) {
			t.Errorf("%s: %s, want %s", tc.name, r.raw, tc.hold)
		}
	}
}
