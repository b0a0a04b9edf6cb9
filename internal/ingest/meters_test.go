package ingest_test

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/usagedata"
)

const jsonType = "application/json"

// TestMeterLifecycle: a meter is created (201), put again unchanged (200,
// same version and updated_at), changed (200, next version), read back
// and listed, each answer the stored definition with every field.
func TestMeterLifecycle(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	def := `{"metric":"tokens","aggregation":"sum","group_by":["model"],"filter":{"region":"eu"},"property":null,"description":"EU tokens per model"}`
	created := e.do("PUT", "/v1/admin/meters/tokens_by_model", adminKey, jsonType, def)
	if created.status != 201 {
		t.Fatalf("create: %d %s", created.status, created.raw)
	}
	want := map[string]any{"name": "tokens_by_model", "metric": "tokens", "aggregation": "sum", "group_by": []any{"model"},
		"filter": map[string]any{"region": "eu"}, "property": nil, "description": "EU tokens per model", "version": float64(1)}
	for k, v := range want {
		if !reflect.DeepEqual(created.body[k], v) {
			t.Errorf("created %s = %#v, want %#v (%s)", k, created.body[k], v, created.raw)
		}
	}
	for _, k := range []string{"created_at", "updated_at"} {
		if _, err := time.Parse(time.RFC3339Nano, toString(created.body[k])); err != nil {
			t.Errorf("%s = %v: %v", k, created.body[k], err)
		}
	}
	// The same definition, spelt otherwise (name in the body, the same
	// filter): nothing changes.
	same := e.do("PUT", "/v1/admin/meters/tokens_by_model", adminKey, jsonType,
		`{"name":"tokens_by_model","filter":{"region":"eu"},"description":"EU tokens per model","group_by":["model"],"aggregation":"sum","metric":"tokens"}`)
	if same.status != 200 || same.raw != created.raw {
		t.Fatalf("unchanged: %d %s, want 200 %s", same.status, same.raw, created.raw)
	}
	changed := e.do("PUT", "/v1/admin/meters/tokens_by_model", adminKey, jsonType,
		`{"metric":"tokens","aggregation":"unique_count","group_by":["model"],"property":"user"}`)
	if changed.status != 200 || changed.body["version"] != float64(2) || changed.body["property"] != "user" ||
		!reflect.DeepEqual(changed.body["filter"], map[string]any{}) || changed.body["description"] != "" ||
		changed.body["created_at"] != created.body["created_at"] || changed.body["updated_at"] == created.body["updated_at"] {
		t.Fatalf("changed: %d %s", changed.status, changed.raw)
	}
	if got := e.do("GET", "/v1/admin/meters/tokens_by_model", adminKey, "", ""); got.status != 200 || got.raw != changed.raw {
		t.Fatalf("get: %d %s, want 200 %s", got.status, got.raw, changed.raw)
	}
	if r := e.do("PUT", "/v1/admin/meters/calls", adminKey, jsonType, `{"metric":"api_calls","aggregation":"count"}`); r.status != 201 ||
		!reflect.DeepEqual(r.body["group_by"], []any{}) || r.body["property"] != nil {
		t.Fatalf("create calls: %d %s", r.status, r.raw)
	}
	list := e.do("GET", "/v1/admin/meters", adminKey, "", "")
	ms, _ := list.body["meters"].([]any)
	if list.status != 200 || len(ms) != 2 || ms[0].(map[string]any)["name"] != "calls" ||
		!reflect.DeepEqual(ms[1], e.do("GET", "/v1/admin/meters/tokens_by_model", adminKey, "", "").body) {
		t.Fatalf("list: %d %s", list.status, list.raw)
	}
	// What the API stored is what the aggregators load.
	m, err := accounts.GetMeter(context.Background(), e.db.Pool, "tokens_by_model")
	if err != nil || m.Aggregation != "unique_count" || m.Property != "user" || m.Version != 2 {
		t.Fatalf("stored: %+v, %v", m, err)
	}
}

// TestMeterRequestsRefused: every way a request is refused, with its
// status and code, and that nothing is stored then.
func TestMeterRequestsRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	_, tenant := e.createKey(`{"tenant":"acme"}`)
	_, viewer := e.createKey(`{"role":"viewer"}`)
	ok := `{"metric":"tokens","aggregation":"sum"}`
	tests := []struct {
		name, method, path, key, body string
		status                        int
		code                          string
		fields                        []string // the fields of errors, for invalid_meter
	}{
		{"no key", "PUT", "/v1/admin/meters/m", "", ok, 401, "unauthorized", nil},
		{"tenant key puts", "PUT", "/v1/admin/meters/m", tenant, ok, 403, "forbidden", nil},
		{"tenant key lists", "GET", "/v1/admin/meters", tenant, "", 403, "forbidden", nil},
		{"tenant key gets", "GET", "/v1/admin/meters/m", tenant, "", 403, "forbidden", nil},
		{"viewer key puts", "PUT", "/v1/admin/meters/m", viewer, ok, 403, "forbidden", nil},
		{"viewer key lists", "GET", "/v1/admin/meters", viewer, "", 403, "forbidden", nil},
		{"unknown meter", "GET", "/v1/admin/meters/nope", adminKey, "", 404, "not_found", nil},
		{"bad name to get", "GET", "/v1/admin/meters/a%00b", adminKey, "", 400, "invalid_request", nil},
		{"another name in the body", "PUT", "/v1/admin/meters/m", adminKey, `{"name":"n","metric":"tokens","aggregation":"sum"}`, 400, "invalid_request", nil},
		{"unknown field", "PUT", "/v1/admin/meters/m", adminKey, `{"metric":"tokens","aggregation":"sum","groups":["a"]}`, 400, "invalid_request", nil},
		{"field twice", "PUT", "/v1/admin/meters/m", adminKey, `{"metric":"tokens","aggregation":"sum","Metric":"x"}`, 400, "invalid_request", nil},
		{"body an array", "PUT", "/v1/admin/meters/m", adminKey, `[]`, 400, "invalid_request", nil},
		{"filter of numbers", "PUT", "/v1/admin/meters/m", adminKey, `{"metric":"tokens","aggregation":"sum","filter":{"a":1}}`, 400, "invalid_request", nil},
		{"nothing", "PUT", "/v1/admin/meters/m", adminKey, `{}`, 400, "invalid_meter", []string{"metric", "aggregation"}},
		{"bad name in the path", "PUT", "/v1/admin/meters/a%20b", adminKey, ok, 400, "invalid_meter", []string{"name"}},
		{"unknown aggregation", "PUT", "/v1/admin/meters/m", adminKey, `{"metric":"tokens","aggregation":"avg"}`, 400, "invalid_meter", []string{"aggregation"}},
		{"six groups, one repeated", "PUT", "/v1/admin/meters/m", adminKey, `{"metric":"tokens","aggregation":"sum","group_by":["a","b","c","d","e","a"]}`, 400, "invalid_meter", []string{"group_by", "group_by[5]"}},
		{"unique_count without property", "PUT", "/v1/admin/meters/m", adminKey, `{"metric":"tokens","aggregation":"unique_count"}`, 400, "invalid_meter", []string{"property"}},
		{"property without unique_count", "PUT", "/v1/admin/meters/m", adminKey, `{"metric":"tokens","aggregation":"max","property":"user"}`, 400, "invalid_meter", []string{"property"}},
		{"control character in a filter value", "PUT", "/v1/admin/meters/m", adminKey, `{"metric":"tokens","aggregation":"sum","filter":{"region":"e\u0085u"}}`, 400, "invalid_meter", []string{"filter.region"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.do(tt.method, tt.path, tt.key, jsonType, tt.body)
			if r.status != tt.status || errorCode(r) != tt.code {
				t.Fatalf("got %d %s, want %d %s", r.status, r.raw, tt.status, tt.code)
			}
			if tt.fields == nil {
				if _, ok := r.body["errors"]; ok {
					t.Fatalf("field errors in a %s answer: %s", tt.code, r.raw)
				}
				return
			}
			var fields []string
			for _, fe := range r.body["errors"].([]any) {
				fe := fe.(map[string]any)
				fields = append(fields, fe["field"].(string))
				if fe["index"] != float64(0) || fe["message"] == "" {
					t.Errorf("field error %v", fe)
				}
			}
			if !reflect.DeepEqual(fields, tt.fields) {
				t.Errorf("fields %q, want %q: %s", fields, tt.fields, r.raw)
			}
		})
	}
	if ms, err := accounts.ListMeters(context.Background(), e.db.Pool); err != nil || len(ms) != 0 {
		t.Fatalf("refused requests stored meters: %v %v", ms, err)
	}
}

// TestMeterNamesAreNotMetrics: meters and metrics share one namespace. A
// meter may not take the name of a plan's quota metric or of a metric
// whose usage was counted, unless it is that metric's implicit meter or a
// meter of that name exists already; a meter named as its own metric must
// be the implicit one.
func TestMeterNamesAreNotMetrics(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, envOpts{})
	if r := e.do("PUT", "/v1/admin/plans/free", adminKey, jsonType, `{"quotas":[{"metric":"api_calls","limit":1000}]}`); r.status != 200 {
		t.Fatalf("plan: %d %s", r.status, r.raw)
	}
	// storage_gb has been counted (its implicit meter has a window);
	// tokens_by_model is a grouped meter's window, not a metric's.
	var adds usagedata.MeterAdds
	start := time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)
	adds.Append("acme", "storage_gb", "", "hour", start, meter.Contribution{Aggregation: meter.Sum, Value: 3, Time: start, ID: "e1"}, 1)
	adds.Append("acme", "by_region", `["eu"]`, "hour", start, meter.Contribution{Aggregation: meter.Sum, Value: 3, Time: start, ID: "e1"}, 1)
	if err := usagedata.AddMeterWindows(ctx, e.db.Pool, adds); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name, path, body string
		status           int
		message          string // a part of the 409's message
	}{
		{"a quota's metric", "/v1/admin/meters/api_calls", `{"metric":"tokens","aggregation":"sum"}`, 409, `plan "free" has a quota of it`},
		{"a counted metric", "/v1/admin/meters/storage_gb", `{"metric":"tokens","aggregation":"max"}`, 409, "counted"},
		{"named as its metric, grouped", "/v1/admin/meters/tokens", `{"metric":"tokens","aggregation":"sum","group_by":["model"]}`, 409, "implicit meter"},
		{"named as its metric, counted", "/v1/admin/meters/tokens", `{"metric":"tokens","aggregation":"count"}`, 409, `such as "tokens_count"`},
		{"named as its metric, filtered", "/v1/admin/meters/tokens", `{"metric":"tokens","aggregation":"sum","filter":{"a":"b"}}`, 409, "implicit meter"},
		{"a quota's metric, as its implicit meter", "/v1/admin/meters/api_calls", `{"metric":"api_calls","aggregation":"sum","description":"calls"}`, 201, ""},
		{"a counted metric, as its implicit meter", "/v1/admin/meters/storage_gb", `{"metric":"storage_gb","aggregation":"sum"}`, 201, ""},
		{"a new metric, as its implicit meter", "/v1/admin/meters/tokens", `{"metric":"tokens","aggregation":"sum"}`, 201, ""},
		{"the implicit meter, changed away from it", "/v1/admin/meters/tokens", `{"metric":"tokens","aggregation":"max"}`, 409, "implicit meter"},
		{"a grouped meter's name", "/v1/admin/meters/by_region", `{"metric":"tokens","aggregation":"sum","group_by":["region"]}`, 201, ""},
		{"a free name", "/v1/admin/meters/api_calls_by_region", `{"metric":"api_calls","aggregation":"count","group_by":["region"]}`, 201, ""},
	}
	for _, s := range steps {
		r := e.do("PUT", s.path, adminKey, jsonType, s.body)
		if r.status != s.status {
			t.Fatalf("%s: got %d %s, want %d", s.name, r.status, r.raw, s.status)
		}
		if s.status == 409 {
			if msg := r.body["error"].(map[string]any)["message"].(string); errorCode(r) != "name_conflict" || !strings.Contains(msg, s.message) {
				t.Fatalf("%s: got %s, want name_conflict saying %q", s.name, r.raw, s.message)
			}
		}
	}
	// A meter defined before its name became a quota's metric keeps
	// working: it is the defined meter that owns the name now.
	if r := e.do("PUT", "/v1/admin/plans/free", adminKey, jsonType, `{"quotas":[{"metric":"api_calls","limit":1000},{"metric":"api_calls_by_region","limit":5}]}`); r.status != 200 {
		t.Fatalf("plan: %d %s", r.status, r.raw)
	}
	if r := e.do("PUT", "/v1/admin/meters/api_calls_by_region", adminKey, jsonType, `{"metric":"api_calls","aggregation":"sum","group_by":["region"]}`); r.status != 200 || r.body["version"] != float64(2) {
		t.Fatalf("changing a defined meter: %d %s", r.status, r.raw)
	}
	ms, err := accounts.ListMeters(ctx, e.db.Pool)
	if err != nil || len(ms) != 5 {
		t.Fatalf("stored %d meters (%v), want the 5 accepted", len(ms), err)
	}
}
