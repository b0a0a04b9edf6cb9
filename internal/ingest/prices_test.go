package ingest_test

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestPlanPricesRoundTrip: every price model is saved and shown as sent,
// normalised (a tier's missing amount "0", a package's rounding up); a
// unit_price is a per_unit price, shown with both fields; sending both
// fields of one price is accepted, as a plan is shown.
func TestPlanPricesRoundTrip(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	defineMeters(t, e)
	r := e.do("PUT", "/v1/admin/plans/pro", adminKey, "application/json", `{"currency":"eur","quotas":[
		{"metric":"api_calls","limit":null,"unit_price":"0.002"},
		{"metric":"tokens","limit":null,"price":{"model":"graduated","tiers":[{"up_to":1000,"unit_amount":"0","flat_amount":"0"},{"up_to":null,"unit_amount":"0.001","flat_amount":"5"}]}},
		{"metric":"tokens","meter":"tokens_by_model","limit":null,"stripe_event_name":"tokens_{model}","price":{"model":"volume","tiers":[{"up_to":10,"unit_amount":"1"},{"up_to":null,"flat_amount":"2.5"}]}},
		{"metric":"tokens","meter":"tokens_total","limit":null,"price":{"model":"package","package_size":100,"package_amount":"1.5"}},
		{"metric":"tokens","meter":"tokens_by_model","filter":{"model":"gpt-4"},"limit":5,"price":{"model":"per_unit","unit_amount":"0.50"},"unit_price":"0.5"}]}`)
	if r.status != 200 {
		t.Fatalf("PUT plan: %d %s", r.status, r.raw)
	}
	for _, got := range []string{r.raw, e.do("GET", "/v1/admin/plans/pro", adminKey, "", "").raw} {
		var p struct {
			Quotas []struct {
				Meter     string          `json:"meter"`
				Filter    json.RawMessage `json:"filter"`
				Price     json.RawMessage `json:"price"`
				UnitPrice *string         `json:"unit_price"`
			} `json:"quotas"`
		}
		mustJSON(t, got, &p)
		var lines []string
		for _, q := range p.Quotas {
			u := "-"
			if q.UnitPrice != nil {
				u = *q.UnitPrice
			}
			lines = append(lines, q.Meter+" "+string(q.Filter)+" "+string(q.Price)+" "+u)
		}
		want := []string{
			`api_calls {} {"model":"per_unit","unit_amount":"0.002"} 0.002`,
			`tokens {} {"model":"graduated","tiers":[{"up_to":1000,"unit_amount":"0","flat_amount":"0"},{"up_to":null,"unit_amount":"0.001","flat_amount":"5"}]} -`,
			`tokens_by_model {"model":"gpt-4"} {"model":"per_unit","unit_amount":"0.50"} 0.50`,
			`tokens_by_model {} {"model":"volume","tiers":[{"up_to":10,"unit_amount":"1","flat_amount":"0"},{"up_to":null,"unit_amount":"0","flat_amount":"2.5"}]} -`,
			`tokens_total {} {"model":"package","package_size":100,"package_amount":"1.5","round":"up"} -`,
		}
		if strings.Join(lines, "\n") != strings.Join(want, "\n") {
			t.Errorf("prices:\n%s\nwant\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
		}
	}
	// What GET shows is accepted back as it is.
	var shown struct {
		Currency string            `json:"currency"`
		Quotas   []json.RawMessage `json:"quotas"`
	}
	mustJSON(t, r.raw, &shown)
	body, _ := json.Marshal(shown)
	if r2 := e.do("PUT", "/v1/admin/plans/pro", adminKey, "application/json", string(body)); r2.status != 200 || stripUpdated(r2.raw) != stripUpdated(r.raw) {
		t.Errorf("PUT of the plan as shown: %d\n%s\nwant\n%s", r2.status, r2.raw, r.raw)
	}
	// A price removed is gone, unit_price with it.
	if r3 := e.do("PUT", "/v1/admin/plans/pro", adminKey, "application/json", `{"quotas":[{"metric":"api_calls","limit":null,"price":null}]}`); r3.status != 200 ||
		strings.Contains(r3.raw, "price") {
		t.Errorf("a plan without prices: %d %s", r3.status, r3.raw)
	}
}

// stripUpdated drops a plan's updated_at.
func stripUpdated(raw string) string {
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(raw), &m); err != nil {
		return raw
	}
	delete(m, "updated_at")
	b, _ := json.Marshal(m)
	return string(b)
}

// TestPlanPricesRefused: a malformed price is 400 invalid_request naming
// its field under the quota, and nothing is saved.
func TestPlanPricesRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	defineMeters(t, e)
	tests := []struct{ name, quota, want string }{
		{"unknown model", `"price":{"model":"tiered"}`, "quotas[0].price.model must be one of per_unit, graduated, volume, package"},
		{"not an object", `"price":"0.1"`, "quotas[0].price must be an object"},
		{"a number amount", `"price":{"model":"per_unit","unit_amount":0.1}`, "quotas[0].price.unit_amount must be a decimal string"},
		{"negative amount", `"price":{"model":"per_unit","unit_amount":"-0.1"}`, "quotas[0].price.unit_amount must be a decimal string ≥ 0"},
		{"13 decimal places", `"price":{"model":"per_unit","unit_amount":"0.0000000000001"}`, "at most 12 decimal places"},
		{"tiers not increasing", `"price":{"model":"graduated","tiers":[{"up_to":100},{"up_to":50},{"up_to":null}]}`, "quotas[0].price.tiers[1].up_to must be above the previous tier's up_to (100), got 50"},
		{"last tier bounded", `"price":{"model":"volume","tiers":[{"up_to":100,"unit_amount":"1"}]}`, "quotas[0].price.tiers[0].up_to must be null"},
		{"a field of another model", `"price":{"model":"package","package_size":10,"package_amount":"1","unit_amount":"1"}`, "quotas[0].price.unit_amount is not a field of a package price"},
		{"package size zero", `"price":{"model":"package","package_size":0,"package_amount":"1"}`, "quotas[0].price.package_size must be a whole number of units ≥ 1"},
		{"unit_price disagrees", `"unit_price":"0.2","price":{"model":"per_unit","unit_amount":"0.1"}`, `quotas[0].unit_price: "0.2" is shorthand for`},
		{"unit_price beside tiers", `"unit_price":"0.2","price":{"model":"graduated","tiers":[{"up_to":null,"unit_amount":"0.2"}]}`, `quotas[0].unit_price: "0.2" is shorthand for`},
		{"bad unit_price", `"unit_price":"1e3"`, "quotas[0].unit_price must be a decimal string"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.do("PUT", "/v1/admin/plans/refused", adminKey, "application/json", `{"quotas":[{"metric":"tokens","meter":"tokens_by_model","limit":null,`+tt.quota+`}]}`)
			if r.status != 400 || errorCode(r) != "invalid_request" || !strings.Contains(r.raw, jsonString(tt.want)) {
				t.Fatalf("got %d %s, want 400 invalid_request saying %s", r.status, r.raw, tt.want)
			}
		})
	}
	if r := e.do("GET", "/v1/admin/plans/refused", adminKey, "", ""); r.status != 404 {
		t.Fatalf("a refused plan was saved: %d %s", r.status, r.raw)
	}
}
