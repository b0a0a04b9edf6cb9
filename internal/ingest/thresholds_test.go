package ingest_test

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestPlanThresholdsAndGrace: a quota's thresholds and grace are saved and
// shown (thresholds [80] when none are sent, a duration as Go writes it),
// a change of them makes a new version, and what is shown is accepted back.
func TestPlanThresholdsAndGrace(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	r := e.do("PUT", "/v1/admin/plans/tiers", adminKey, "application/json", `{"quotas":[
		{"metric":"api_calls","limit":1000,"hard":true,"thresholds":[50,80,90],"grace":{"duration":"24h","amount":500}},
		{"metric":"tokens","limit":1000}]}`)
	if r.status != 200 {
		t.Fatalf("PUT plan: %d %s", r.status, r.raw)
	}
	var p struct {
		Version int `json:"version"`
		Quotas  []struct {
			Metric     string          `json:"metric"`
			Thresholds []int           `json:"thresholds"`
			Grace      json.RawMessage `json:"grace"`
		} `json:"quotas"`
	}
	mustJSON(t, r.raw, &p)
	var lines []string
	for _, q := range p.Quotas {
		b, _ := json.Marshal(q.Thresholds)
		lines = append(lines, q.Metric+" "+string(b)+" "+string(q.Grace))
	}
	if want := []string{`api_calls [50,80,90] {"duration":"24h0m0s","amount":500}`, `tokens [80] `}; strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Fatalf("quotas:\n%s\nwant\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	var shown struct {
		Quotas []json.RawMessage `json:"quotas"`
	}
	mustJSON(t, r.raw, &shown)
	body, _ := json.Marshal(shown)
	if r2 := e.do("PUT", "/v1/admin/plans/tiers", adminKey, "application/json", string(body)); r2.status != 200 || stripUpdated(r2.raw) != stripUpdated(r.raw) {
		t.Fatalf("PUT of the plan as shown: %d\n%s\nwant\n%s", r2.status, r2.raw, r.raw)
	}
	r3 := e.do("PUT", "/v1/admin/plans/tiers", adminKey, "application/json", `{"quotas":[
		{"metric":"api_calls","limit":1000,"hard":true,"thresholds":[50,80,95],"grace":{"duration":"24h","amount":500}},
		{"metric":"tokens","limit":1000}]}`)
	var p3 struct {
		Version int `json:"version"`
	}
	mustJSON(t, r3.raw, &p3)
	if r3.status != 200 || p3.Version != p.Version+1 {
		t.Fatalf("a threshold changed: %d version %d after %d", r3.status, p3.Version, p.Version)
	}
}

// TestPlanThresholdsAndGraceRefused: thresholds outside 1-99, not
// increasing or too many, and a grace on a soft quota, empty, negative or
// of a duration that does not parse, are 400 naming the field.
func TestPlanThresholdsAndGraceRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	tests := []struct{ name, quota, want string }{
		{"100 is exceeded", `"thresholds":[50,100]`, "quotas[0].thresholds: a threshold is a percentage from 1 to 99"},
		{"zero", `"thresholds":[0]`, "quotas[0].thresholds: a threshold is a percentage from 1 to 99"},
		{"not increasing", `"thresholds":[80,50]`, "quotas[0].thresholds: thresholds must be strictly increasing"},
		{"too many", `"thresholds":[1,2,3,4,5,6,7,8,9,10,11]`, "quotas[0].thresholds: at most 10 thresholds"},
		{"grace on a soft quota", `"grace":{"amount":5}`, "quotas[0].grace delays the block of a hard quota"},
		{"empty grace", `"hard":true,"grace":{}`, `quotas[0].grace: give \"duration\"`},
		{"negative amount", `"hard":true,"grace":{"amount":-1}`, "quotas[0].grace: amount must be ≥ 0"},
		{"bad duration", `"hard":true,"grace":{"duration":"1 day"}`, "quotas[0].grace: duration must be a duration"},
		{"zero duration", `"hard":true,"grace":{"duration":"0s"}`, "quotas[0].grace: duration must be a duration"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.do("PUT", "/v1/admin/plans/refused", adminKey, "application/json", `{"quotas":[{"metric":"api_calls","limit":10,`+tt.quota+`}]}`)
			if r.status != 400 || errorCode(r) != "invalid_request" || !strings.Contains(r.raw, tt.want) {
				t.Fatalf("got %d %s, want 400 invalid_request saying %s", r.status, r.raw, tt.want)
			}
		})
	}
}
