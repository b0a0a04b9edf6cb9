package ingest_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/storage/accounts"
)

// defineMeters stores the meters the plan tests name.
func defineMeters(t *testing.T, e *env) {
	t.Helper()
	for _, m := range []accounts.Meter{
		{Name: "tokens_by_model", Metric: "tokens", Aggregation: accounts.AggregationSum, GroupBy: []string{"model"}},
		{Name: "tokens_total", Metric: "tokens", Aggregation: accounts.AggregationMax},
		{Name: "calls_by_route", Metric: "api_calls", Aggregation: accounts.AggregationCount, GroupBy: []string{"route"}},
	} {
		if _, _, err := accounts.PutMeter(context.Background(), e.db.Pool, m); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPlanQuotasOnMeters: a plan's quotas may name a defined meter of
// their metric, with a filter on its group_by properties or per group;
// what does not fit the meter is refused with the field named, and
// nothing is saved.
func TestPlanQuotasOnMeters(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	defineMeters(t, e)
	const implicit = `{"metric":"tokens","limit":1000}`
	tests := []struct{ name, quotas, want string }{
		{"filter on the implicit meter", `{"metric":"tokens","limit":10,"filter":{"model":"gpt-4"}}`, "quotas[0].filter: the implicit meter"},
		{"per_group on the implicit meter", `{"metric":"tokens","meter":"tokens","limit":10,"per_group":true}`, "quotas[0].per_group: the implicit meter"},
		{"unknown meter", `{"metric":"tokens","meter":"nope","limit":10}`, `quotas[0].meter: no meter "nope"`},
		{"meter of another metric", `{"metric":"tokens","meter":"calls_by_route","limit":10}`, `counts metric "api_calls", not "tokens"`},
		{"filter off group_by", `{"metric":"tokens","meter":"tokens_by_model","limit":10,"filter":{"region":"eu"}}`, `quotas[0].filter.region: "region" is not among the group_by properties of meter "tokens_by_model" (group_by ["model"])`},
		{"filter and per_group", `{"metric":"tokens","meter":"tokens_by_model","limit":10,"filter":{"model":"gpt-4"},"per_group":true}`, "quotas[0].filter: a per_group quota"},
		{"per_group without groups", `{"metric":"tokens","meter":"tokens_total","limit":10,"per_group":true}`, `quotas[0].per_group: meter "tokens_total" has no group_by`},
		{"a bad price on a meter", `{"metric":"tokens","meter":"tokens_total","limit":10,"unit_price":"-0.1"}`, "quotas[0].unit_price must be a decimal string"},
		{"one filter twice", implicit + `,{"metric":"tokens","meter":"tokens_by_model","limit":10,"filter":{"model":"a"}},{"metric":"tokens","meter":"tokens_by_model","limit":20,"filter":{"model":"a"}}`, "quotas[2].meter: the quota on meter \"tokens_by_model\" with this filter and per_group appears twice (quotas[1])"},
		{"implicit twice", implicit + `,{"metric":"tokens","meter":"tokens","limit":5}`, `quotas[1].metric: metric "tokens" appears twice (quotas[0])`},
		{"a bad meter name", `{"metric":"tokens","meter":"a b","limit":10}`, "quotas[0].meter must be a meter name"},
		{"a filter value not a string", `{"metric":"tokens","meter":"tokens_by_model","limit":10,"filter":{"model":1}}`, "filter"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.do("PUT", "/v1/admin/plans/refused", adminKey, "application/json", `{"quotas":[`+tt.quotas+`]}`)
			if r.status != 400 || errorCode(r) != "invalid_request" || !strings.Contains(r.raw, jsonString(tt.want)) {
				t.Fatalf("got %d %s, want 400 invalid_request saying %s", r.status, r.raw, tt.want)
			}
		})
	}
	if r := e.do("GET", "/v1/admin/plans/refused", adminKey, "", ""); r.status != 404 {
		t.Fatalf("a refused plan was saved: %d %s", r.status, r.raw)
	}

	r := e.do("PUT", "/v1/admin/plans/pro", adminKey, "application/json", `{"quotas":[
		{"metric":"tokens","meter":"tokens_by_model","limit":50,"period":"day","per_group":true},
		{"metric":"tokens","meter":"tokens_by_model","limit":100,"filter":{"model":"gpt-4"}},
		{"metric":"tokens","meter":"tokens","limit":1000,"unit_price":"0.002"},
		{"metric":"tokens","meter":"tokens_total","limit":7,"filter":{}}]}`)
	if r.status != 200 {
		t.Fatalf("PUT plan: %d %s", r.status, r.raw)
	}
	var p struct {
		Quotas []struct {
			Metric, Meter, Period, UnitPrice string
			Filter                           map[string]string
			PerGroup                         bool `json:"per_group"`
			Limit                            int64
		}
	}
	if err := json.Unmarshal([]byte(r.raw), &p); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, q := range p.Quotas {
		b, _ := json.Marshal(q)
		got = append(got, string(b))
	}
	want := []string{
		`{"Metric":"tokens","Meter":"tokens","Period":"month","UnitPrice":"","Filter":{},"per_group":false,"Limit":1000}`,
		`{"Metric":"tokens","Meter":"tokens_by_model","Period":"month","UnitPrice":"","Filter":{"model":"gpt-4"},"per_group":false,"Limit":100}`,
		`{"Metric":"tokens","Meter":"tokens_by_model","Period":"day","UnitPrice":"","Filter":{},"per_group":true,"Limit":50}`,
		`{"Metric":"tokens","Meter":"tokens_total","Period":"month","UnitPrice":"","Filter":{},"per_group":false,"Limit":7}`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("saved quotas:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if !strings.Contains(r.raw, `"unit_price":"0.002"`) {
		t.Fatalf("the implicit quota lost its price: %s", r.raw)
	}
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return strings.Trim(string(b), `"`)
}

// TestQuotasOfMeters: GET /v1/quotas shows each quota's meter, filter and
// per_group; an implicit quota as before; a filter quota the meter's usage
// over the matching groups; a per_group quota its groups with the most
// usage, and the state of the greatest.
func TestQuotasOfMeters(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	defineMeters(t, e)
	_, acme := e.createKey(`{"tenant":"acme"}`)
	if r := e.do("PUT", "/v1/admin/plans/pro", adminKey, "application/json", `{"quotas":[
		{"metric":"tokens","limit":1000},
		{"metric":"tokens","meter":"tokens_by_model","limit":100,"filter":{"model":"gpt-4"}},
		{"metric":"tokens","meter":"tokens_by_model","limit":50,"period":"day","per_group":true}]}`); r.status != 200 {
		t.Fatalf("PUT plan: %d %s", r.status, r.raw)
	}
	e.do("PUT", "/v1/admin/tenants/acme", adminKey, "application/json", `{"plan":"pro"}`)
	now := time.Now().UTC()
	month := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	day := now.Truncate(24 * time.Hour)
	e.db.Exec(t, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events) VALUES
		('acme', 'tokens', '', 'month', $1, 300, 3),
		('acme', 'tokens_by_model', '["gpt-4"]', 'month', $1, 90, 2),
		('acme', 'tokens_by_model', '["gpt-3"]', 'month', $1, 210, 1),
		('acme', 'tokens_by_model', '["gpt-4"]', 'day', $2, 45, 1),
		('acme', 'tokens_by_model', '["gpt-3"]', 'day', $2, 60, 1),
		('acme', 'tokens_by_model', '[null]', 'day', $2, 10, 1)`, month, day)

	r := e.do("GET", "/v1/quotas/acme", acme, "", "")
	if r.status != 200 {
		t.Fatalf("quotas: %d %s", r.status, r.raw)
	}
	var body struct {
		Quotas []map[string]json.RawMessage `json:"quotas"`
	}
	if err := json.Unmarshal([]byte(r.raw), &body); err != nil {
		t.Fatal(err)
	}
	fields := []string{"meter", "filter", "per_group", "limit", "used", "remaining", "state", "groups", "groups_total"}
	want := []string{
		`"tokens" {} false 1000 300 700 "ok" - -`,
		`"tokens_by_model" {"model":"gpt-4"} false 100 90 10 "warning" - -`,
		`"tokens_by_model" {} true 50 60 0 "exceeded" [{"group":{"model":"gpt-3"},"used":60,"remaining":0,"state":"exceeded"},{"group":{"model":"gpt-4"},"used":45,"remaining":5,"state":"warning"},{"group":{"model":null},"used":10,"remaining":40,"state":"ok"}] 3`,
	}
	if len(body.Quotas) != len(want) {
		t.Fatalf("quotas = %s", r.raw)
	}
	for i, q := range body.Quotas {
		var got []string
		for _, f := range fields {
			v, ok := q[f]
			if !ok {
				v = json.RawMessage("-")
			}
			got = append(got, string(v))
		}
		if g := strings.Join(got, " "); g != want[i] {
			t.Errorf("quota %d = %s\nwant       %s", i, g, want[i])
		}
	}
}

// TestMeterQuotaBilling: a quota on a defined meter is billed when it
// names a Stripe event with a {property} placeholder for each of the
// meter's group_by properties, and only those; never on a latest meter;
// placeholders are refused on an implicit quota; a meter is billed by one
// quota of a plan; a meter quota without a name is not billed.
func TestMeterQuotaBilling(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	for name, body := range map[string]string{
		"tokens_by_model": `{"metric":"tokens","aggregation":"sum","group_by":["model"]}`,
		"tokens_latest":   `{"metric":"tokens","aggregation":"latest","group_by":["model"]}`,
		"tokens_all":      `{"metric":"tokens","aggregation":"count"}`,
	} {
		if r := e.do("PUT", "/v1/admin/meters/"+name, adminKey, "application/json", body); r.status != 201 {
			t.Fatalf("PUT meter %s: %d %s", name, r.status, r.raw)
		}
	}
	for _, tc := range []struct {
		name, quotas string
		status       int
		want         string // in the answer
	}{
		{"placeholder per group_by", `{"metric":"tokens","meter":"tokens_by_model","per_group":true,"limit":10,"stripe_event_name":"tokens_{model}"}`, 200, `"stripe_event_name":"tokens_{model}"`},
		{"no groups, no placeholder", `{"metric":"tokens","meter":"tokens_all","limit":10,"stripe_event_name":"token_events"}`, 200, `"stripe_event_name":"token_events"`},
		{"not billed", `{"metric":"tokens","meter":"tokens_by_model","per_group":true,"limit":10}`, 200, `"stripe_event_name":""`},
		{"a latest meter", `{"metric":"tokens","meter":"tokens_latest","limit":10}`, 200, `"stripe_event_name":""`},
		{"missing placeholder", `{"metric":"tokens","meter":"tokens_by_model","per_group":true,"limit":10,"stripe_event_name":"tokens_by_model"}`, 400, "needs a {model} placeholder"},
		{"placeholder not grouped by", `{"metric":"tokens","meter":"tokens_by_model","limit":10,"stripe_event_name":"tokens_{model}_{region}"}`, 400, "placeholder {region} is not among the group_by"},
		{"placeholder on a meter without groups", `{"metric":"tokens","meter":"tokens_all","limit":10,"stripe_event_name":"t_{model}"}`, 400, "placeholder {model}"},
		{"unclosed placeholder", `{"metric":"tokens","meter":"tokens_by_model","limit":10,"stripe_event_name":"tokens_{model"}`, 400, "no closing }"},
		{"bad characters", `{"metric":"tokens","meter":"tokens_by_model","limit":10,"stripe_event_name":"tokens {model}"}`, 400, "quotas[0].stripe_event_name"},
		{"latest refused", `{"metric":"tokens","meter":"tokens_latest","limit":10,"stripe_event_name":"tokens_{model}"}`, 400, "latest value, which is not additive"},
		{"placeholder on the implicit meter", `{"metric":"tokens","limit":10,"stripe_event_name":"tokens_{model}"}`, 400, "the implicit meter"},
		{"one billed quota per meter", `{"metric":"tokens","meter":"tokens_by_model","per_group":true,"limit":10,"stripe_event_name":"tokens_{model}"},
			{"metric":"tokens","meter":"tokens_by_model","filter":{"model":"o1"},"limit":10,"stripe_event_name":"o_{model}"}`, 400, "is billed by quotas[0] already"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do("PUT", "/v1/admin/plans/ai", adminKey, "application/json", `{"quotas":[`+tc.quotas+`]}`)
			if r.status != tc.status || !strings.Contains(r.raw, tc.want) {
				t.Fatalf("%d %s; want %d with %q", r.status, r.raw, tc.status, tc.want)
			}
		})
	}
}
