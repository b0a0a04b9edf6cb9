package ingest_test

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestPlanSpendThresholds: a plan version keeps spend_thresholds as sent
// (a change of them alone is a new version, the same again is not; GET
// shows them, [] for none); a list that is not amounts greater than zero
// with at most 12 decimals, strictly increasing, at most 10, is 422
// invalid_spend_thresholds naming the threshold, and saves nothing.
func TestPlanSpendThresholds(t *testing.T) {
	t.Parallel()
	var ticks atomic.Int64
	e := newEnv(t, envOpts{now: func() time.Time {
		return time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC).Add(time.Duration(ticks.Add(1)) * time.Second)
	}})
	const quotas = `"quotas":[{"metric":"api_calls","limit":null,"unit_price":"0.01"}]`
	tests := []struct {
		name, thresholds string
		status           int
		version          float64
		want, message    string
	}{
		{"absent", ``, 200, 1, `"spend_thresholds":[]`, ""},
		{"two", `["100.00","500"]`, 200, 2, `"spend_thresholds":["100.00","500"]`, ""},
		{"the same again", `["100.00","500"]`, 200, 2, `"spend_thresholds":["100.00","500"]`, ""},
		{"twelve decimals", `["0.000000000001","999999999999.999999999999"]`, 200, 3, `"spend_thresholds":["0.000000000001","999999999999.999999999999"]`, ""},
		{"ten", `["1","2","3","4","5","6","7","8","9","10"]`, 200, 4, `"spend_thresholds":["1","2","3","4","5","6","7","8","9","10"]`, ""},
		{"eleven", `["1","2","3","4","5","6","7","8","9","10","11"]`, 422, 0, "", "at most 10"},
		{"zero", `["0.00"]`, 422, 0, "", "spend_thresholds[0]: \"0.00\" must be greater than 0"},
		{"negative", `["-5"]`, 422, 0, "", "spend_thresholds[0]: \"-5\" is no amount"},
		{"thirteen decimals", `["1.0000000000001"]`, 422, 0, "", "at most 12 decimals"},
		{"exponent", `["1e3"]`, 422, 0, "", "is no amount"},
		{"not increasing", `["50","10"]`, 422, 0, "", "spend_thresholds[1]: \"10\" must be greater than the threshold before it, \"50\""},
		{"twice as a number", `["10","10.00"]`, 422, 0, "", "spend_thresholds[1]"},
		{"empty text", `[""]`, 422, 0, "", "is no amount"},
		{"a number, not a string", `[100]`, 400, 0, "", ""},
		{"none again", `[]`, 200, 5, `"spend_thresholds":[]`, ""},
		{"null is none", `null`, 200, 5, `"spend_thresholds":[]`, ""},
	}
	for _, tc := range tests {
		body := `{` + quotas + `}`
		if tc.thresholds != "" {
			body = `{"spend_thresholds":` + tc.thresholds + `,` + quotas + `}`
		}
		r := e.do("PUT", "/v1/admin/plans/pro", adminKey, "application/json", body)
		if r.status != tc.status {
			t.Fatalf("%s: %d %s, want %d", tc.name, r.status, r.raw, tc.status)
		}
		if tc.status == 422 {
			msg, _ := r.body["error"].(map[string]any)["message"].(string)
			if errorCode(r) != "invalid_spend_thresholds" || !strings.Contains(msg, tc.message) {
				t.Errorf("%s: %s, want invalid_spend_thresholds saying %s", tc.name, r.raw, tc.message)
			}
			continue
		}
		if tc.status != 200 {
			continue
		}
		if r.body["version"] != tc.version || !strings.Contains(r.raw, tc.want) {
			t.Errorf("%s: version %v %s, want version %v with %s", tc.name, r.body["version"], r.raw, tc.version, tc.want)
		}
	}
	if r := e.do("GET", "/v1/admin/plans/pro/versions", adminKey, "", ""); r.status != 200 ||
		!strings.Contains(r.raw, `"spend_thresholds":["100.00","500"]`) {
		t.Errorf("versions: %d %s", r.status, r.raw)
	}
}
