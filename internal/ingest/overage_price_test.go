package ingest_test

import (
	"strings"
	"testing"
)

// TestOveragePrice: a quota's overage_price is checked as a price, needs
// a limit and a month period, is echoed, and a change of it alone makes a
// new version.
func TestOveragePrice(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	for _, tt := range []struct{ name, quota, want string }{
		{"not a price", `"limit":10,"overage_price":{"model":"tiered"}`, "quotas[0].overage_price.model must be one of"},
		{"unlimited", `"limit":null,"overage_price":{"model":"per_unit","unit_amount":"0.1"}`, "quotas[0].overage_price prices the usage beyond a monthly allowance"},
		{"a day period", `"limit":10,"period":"day","overage_price":{"model":"per_unit","unit_amount":"0.1"}`, "quotas[0].overage_price prices the usage beyond a monthly allowance"},
	} {
		r := e.do("PUT", "/v1/admin/plans/refused", adminKey, "application/json", `{"quotas":[{"metric":"api_calls",`+tt.quota+`}]}`)
		if r.status != 400 || !strings.Contains(r.raw, jsonString(tt.want)) {
			t.Fatalf("%s: got %d %s, want 400 saying %s", tt.name, r.status, r.raw, tt.want)
		}
	}
	put := func(overage string) map[string]any {
		t.Helper()
		r := e.do("PUT", "/v1/admin/plans/pro", adminKey, "application/json", `{"quotas":[{"metric":"api_calls","limit":100,"overage_price":`+overage+`}]}`)
		if r.status != 200 {
			t.Fatalf("PUT %s: %d %s", overage, r.status, r.raw)
		}
		return r.body
	}
	first := put(`{"model":"per_unit","unit_amount":"0.05"}`)
	q := first["quotas"].([]any)[0].(map[string]any)
	if op, _ := q["overage_price"].(map[string]any); op["model"] != "per_unit" || op["unit_amount"] != "0.05" || first["version"].(float64) != 1 {
		t.Fatalf("echo: %v", first)
	}
	if again := put(`{"model":"per_unit","unit_amount":"0.05"}`); again["version"].(float64) != 1 {
		t.Fatalf("the same overage price made version %v", again["version"])
	}
	if changed := put(`{"model":"per_unit","unit_amount":"0.06"}`); changed["version"].(float64) != 2 {
		t.Fatalf("a new overage price made version %v", changed["version"])
	}
}
