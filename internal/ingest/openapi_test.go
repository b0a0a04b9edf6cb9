package ingest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/big"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/usagemeter/metering/internal/apidoc"
	"github.com/usagemeter/metering/internal/quota"
	"github.com/usagemeter/metering/internal/storage/usagedata"
)

type parameter struct {
	Ref      string `yaml:"$ref"`
	Name, In string
	Example  any
}

type operation struct {
	Servers     []struct{ URL string } `yaml:"servers"`
	Parameters  []parameter            `yaml:"parameters"`
	RequestBody struct {
		Content map[string]struct {
			Examples map[string]struct {
				Value any `yaml:"value"`
			} `yaml:"examples"`
		} `yaml:"content"`
	} `yaml:"requestBody"`
}

var rfc3339 = regexp.MustCompile(`20\d\d-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z`)

// TestOpenAPIExamplesAreAccepted sends every example request of the
// ingest operations in openapi.yaml to the API, and every one must
// succeed. Event times in the examples are moved to now, since events
// older than the dedup horizon are rejected by design.
func TestOpenAPIExamplesAreAccepted(t *testing.T) {
	var doc struct {
		Paths      map[string]map[string]yaml.Node `yaml:"paths"`
		Components struct {
			Parameters map[string]parameter `yaml:"parameters"`
		} `yaml:"components"`
	}
	if err := yaml.Unmarshal(apidoc.OpenAPI, &doc); err != nil {
		t.Fatal(err)
	}
	resolve := func(ps []parameter) []parameter {
		out := make([]parameter, len(ps))
		for i, p := range ps {
			if name, ok := strings.CutPrefix(p.Ref, "#/components/parameters/"); ok {
				p = doc.Components.Parameters[name]
			}
			out[i] = p
		}
		return out
	}
	e := newEnv(t, envOpts{})
	now := time.Now().UTC().Format(time.RFC3339)
	// Meters before plans (a plan's quota may name a meter) before
	// tenants before the rest, as a user would go.
	order := []string{"/v1/admin/meters/{meter}", "/v1/admin/meters", "/v1/admin/plans/{plan}", "/v1/admin/tenants/{tenant}", "/v1/admin/keys", "/v1/events", "/v1/usage", "/v1/meters", "/v1/quotas/{tenant}", "/v1/breaches", "/v1/bill/{tenant}", "/ui"}
	sent := 0
	for _, path := range order {
		for _, method := range []string{"put", "post", "get", "delete"} {
			node, ok := doc.Paths[path][method]
			if !ok {
				continue
			}
			var op operation
			if err := node.Decode(&op); err != nil {
				t.Fatal(err)
			}
			if len(op.Servers) != 1 || !strings.HasSuffix(op.Servers[0].URL, ":8080") {
				t.Errorf("%s %s: must name the ingest server", method, path)
			}
			url := path
			var shared struct {
				Parameters []parameter `yaml:"parameters"`
			}
			_ = yaml.Unmarshal(mustYAML(t, doc.Paths[path]), &shared)
			params := resolve(append(shared.Parameters, op.Parameters...))
			query := []string{}
			// Header parameters (the ce-* attributes of a CloudEvent in
			// binary content mode) go with the examples named "binary".
			headers := http.Header{}
			for _, p := range params {
				if p.Example == nil {
					continue
				}
				v := strings.TrimSpace(toString(p.Example))
				switch p.In {
				case "path":
					url = strings.ReplaceAll(url, "{"+p.Name+"}", v)
				case "query":
					query = append(query, p.Name+"="+v)
				case "header":
					headers.Set(p.Name, rfc3339.ReplaceAllString(v, now))
				}
			}
			if len(query) > 0 {
				url += "?" + strings.Join(query, "&")
			}
			if strings.Contains(url, "{") {
				continue // needs an id the test cannot know (DELETE /v1/admin/keys/{id})
			}
			if len(op.RequestBody.Content) == 0 {
				if path == "/ui" {
					resp, err := http.Get(e.srv.URL + url)
					if err != nil || resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
						t.Errorf("GET %s: %v %v", url, resp, err)
					}
					if resp != nil {
						resp.Body.Close()
					}
					sent++
					continue
				}
				r := e.do(strings.ToUpper(method), url, adminKey, "", "")
				if r.status >= 300 {
					t.Errorf("%s %s: %d %s", strings.ToUpper(method), url, r.status, r.raw)
				}
				sent++
				continue
			}
			for mediaType, c := range op.RequestBody.Content {
				for name, ex := range c.Examples {
					body, ok := ex.Value.(string)
					if !ok {
						b, err := json.Marshal(ex.Value)
						if err != nil {
							t.Fatal(err)
						}
						body = string(b)
					}
					body = rfc3339.ReplaceAllString(body, now)
					var r response
					if name == "binary" && path == "/v1/events" {
						h := headers.Clone()
						h.Set("Content-Type", mediaType)
						r = e.doHeaders(adminKey, h, body)
					} else {
						r = e.do(strings.ToUpper(method), url, adminKey, mediaType, body)
					}
					if r.status >= 300 {
						t.Errorf("example %q of %s %s (%s) rejected: %d %s", name, strings.ToUpper(method), path, mediaType, r.status, r.raw)
					}
					sent++
				}
			}
		}
	}
	if sent < 12 {
		t.Fatalf("only %d example requests sent", sent)
	}
}

func mustYAML(t *testing.T, v any) []byte {
	t.Helper()
	b, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func toString(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// schemaChecker checks JSON values against the schemas of openapi.yaml:
// $ref, type, enum, const, required, properties, additionalProperties,
// items, maxItems, minItems, maxProperties, minimum, pattern, allOf,
// anyOf and oneOf (format is not checked). It is stricter than JSON
// Schema in one way: an object schema with properties and no
// additionalProperties documents every member an answer may have, so
// any other member is an error (an answer's field the document does not
// name); the members of an allOf's branches count as its own.
type schemaChecker struct {
	schemas map[string]any
}

// answerChecker returns a function that fails t unless a response
// matches the document's schema of route ("GET /path 200").
func answerChecker(t *testing.T) func(route string, r response) {
	schemas := responseSchemas(t)
	c := newSchemaChecker(t)
	return func(route string, r response) {
		t.Helper()
		doc, ok := schemas[route]
		if !ok || doc.Schema == nil {
			t.Fatalf("%s: no JSON schema in the document", route)
		}
		for _, err := range c.check("$", doc.Schema, decodeJSON(t, r.raw)) {
			t.Errorf("%s: %s\n%s", route, err, r.raw)
		}
	}
}

func newSchemaChecker(t *testing.T) schemaChecker {
	t.Helper()
	var doc struct {
		Components struct {
			Schemas map[string]any `yaml:"schemas"`
		} `yaml:"components"`
	}
	if err := yaml.Unmarshal(apidoc.OpenAPI, &doc); err != nil {
		t.Fatal(err)
	}
	return schemaChecker{schemas: doc.Components.Schemas}
}

// check returns every way v (as encoding/json decodes it, numbers as
// json.Number) breaks schema, each prefixed by its path in v.
func (c schemaChecker) check(path string, schema, v any) []string {
	return c.checkIn(path, schema, v, true)
}

// checkIn is check, reporting undocumented members only if strict.
func (c schemaChecker) checkIn(path string, schema, v any, strict bool) []string {
	s, ok := schema.(map[string]any)
	if !ok {
		if b, isBool := schema.(bool); isBool && !b {
			return []string{path + ": not allowed"}
		}
		return nil
	}
	if ref, ok := s["$ref"].(string); ok {
		name, found := strings.CutPrefix(ref, "#/components/schemas/")
		target, exists := c.schemas[name]
		if !found || !exists {
			return []string{path + ": unknown $ref " + ref}
		}
		return c.checkIn(path, target, v, strict)
	}
	var errs []string
	fail := func(format string, args ...any) { errs = append(errs, path+": "+fmt.Sprintf(format, args...)) }
	if t, ok := s["type"]; ok {
		types := []string{}
		switch t := t.(type) {
		case string:
			types = append(types, t)
		case []any:
			for _, x := range t {
				types = append(types, toString(x))
			}
		}
		if !slices.ContainsFunc(types, func(t string) bool { return isJSONType(v, t) }) {
			return []string{fmt.Sprintf("%s: %s is not of type %v", path, compact(v), types)}
		}
	}
	if enum, ok := s["enum"].([]any); ok && !slices.ContainsFunc(enum, func(e any) bool { return sameJSON(e, v) }) {
		fail("%s is not one of %v", compact(v), enum)
	}
	if cst, ok := s["const"]; ok && !sameJSON(cst, v) {
		fail("%s is not %v", compact(v), cst)
	}
	for _, sub := range asList(s["allOf"]) {
		errs = append(errs, c.checkIn(path, sub, v, false)...)
	}
	for _, key := range []string{"anyOf", "oneOf"} {
		subs := asList(s[key])
		if len(subs) == 0 {
			continue
		}
		matched := 0
		for _, sub := range subs {
			if len(c.check(path, sub, v)) == 0 {
				matched++
			}
		}
		if matched == 0 || (key == "oneOf" && matched > 1) {
			fail("%s matches %d of the %d schemas of %s", compact(v), matched, len(subs), key)
		}
	}
	switch v := v.(type) {
	case map[string]any:
		for _, r := range asList(s["required"]) {
			if _, ok := v[toString(r)]; !ok {
				fail("required member %q is missing", toString(r))
			}
		}
		if n, ok := asInt(s["maxProperties"]); ok && len(v) > n {
			fail("%d members, more than %d", len(v), n)
		}
		props, _ := s["properties"].(map[string]any)
		additional, hasAdditional := s["additionalProperties"]
		documented := c.members(s)
		for k, mv := range v {
			if ps, ok := props[k]; ok {
				errs = append(errs, c.check(path+"."+k, ps, mv)...)
			} else if hasAdditional {
				errs = append(errs, c.check(path+"."+k, additional, mv)...)
			} else if strict && documented != nil && !documented[k] {
				fail("member %q is not documented", k)
			}
		}
	case []any:
		if n, ok := asInt(s["maxItems"]); ok && len(v) > n {
			fail("%d items, more than %d", len(v), n)
		}
		if n, ok := asInt(s["minItems"]); ok && len(v) < n {
			fail("%d items, fewer than %d", len(v), n)
		}
		if items, ok := s["items"]; ok {
			for i, x := range v {
				errs = append(errs, c.check(fmt.Sprintf("%s[%d]", path, i), items, x)...)
			}
		}
	case string:
		if p, ok := s["pattern"].(string); ok && !regexp.MustCompile(p).MatchString(v) {
			fail("%q does not match %s", v, p)
		}
	case json.Number:
		if m, ok := asInt(s["minimum"]); ok {
			if n, err := v.Int64(); err == nil && n < int64(m) {
				fail("%s is below %d", v, m)
			}
		}
	}
	return errs
}

// members returns the members an object schema documents, its allOf
// branches' included; nil when it documents none (any member goes).
func (c schemaChecker) members(s map[string]any) map[string]bool {
	if ref, ok := s["$ref"].(string); ok {
		target, _ := c.schemas[strings.TrimPrefix(ref, "#/components/schemas/")].(map[string]any)
		return c.members(target)
	}
	var out map[string]bool
	props, ok := s["properties"].(map[string]any)
	if ok {
		out = map[string]bool{}
		for k := range props {
			out[k] = true
		}
	}
	for _, sub := range asList(s["allOf"]) {
		if m, ok := sub.(map[string]any); ok {
			for k := range c.members(m) {
				if out == nil {
					out = map[string]bool{}
				}
				out[k] = true
			}
		}
	}
	return out
}

func isJSONType(v any, t string) bool {
	switch v := v.(type) {
	case nil:
		return t == "null"
	case bool:
		return t == "boolean"
	case string:
		return t == "string"
	case json.Number:
		_, err := v.Int64()
		return t == "number" || (t == "integer" && err == nil)
	case map[string]any:
		return t == "object"
	case []any:
		return t == "array"
	}
	return false
}

func asList(v any) []any {
	l, _ := v.([]any)
	return l
}

func asInt(v any) (int, bool) {
	n, ok := v.(int)
	return n, ok
}

func sameJSON(a, b any) bool { return compact(a) == compact(b) }

func compact(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// decodeJSON decodes raw as the checker takes it: numbers as json.Number.
func decodeJSON(t *testing.T, raw string) any {
	t.Helper()
	d := json.NewDecoder(strings.NewReader(raw))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		t.Fatalf("not JSON: %v: %s", err, raw)
	}
	return v
}

// responseSchemas reads the JSON schema and examples of each documented
// answer, by "METHOD path status".
func responseSchemas(t *testing.T) map[string]struct {
	Schema   any
	Examples []any
} {
	t.Helper()
	var doc struct {
		Paths map[string]map[string]yaml.Node `yaml:"paths"`
	}
	if err := yaml.Unmarshal(apidoc.OpenAPI, &doc); err != nil {
		t.Fatal(err)
	}
	out := map[string]struct {
		Schema   any
		Examples []any
	}{}
	for path, ops := range doc.Paths {
		for method, node := range ops {
			if method == "parameters" {
				continue
			}
			var op struct {
				Responses map[string]struct {
					Content map[string]struct {
						Schema   any            `yaml:"schema"`
						Example  any            `yaml:"example"`
						Examples map[string]any `yaml:"examples"`
					} `yaml:"content"`
				} `yaml:"responses"`
			}
			if err := node.Decode(&op); err != nil {
				t.Fatal(err)
			}
			for status, resp := range op.Responses {
				c, ok := resp.Content["application/json"]
				if !ok {
					continue
				}
				entry := out[strings.ToUpper(method)+" "+path+" "+status]
				entry.Schema = c.Schema
				if c.Example != nil {
					entry.Examples = append(entry.Examples, c.Example)
				}
				for _, ex := range c.Examples {
					if m, ok := ex.(map[string]any); ok {
						entry.Examples = append(entry.Examples, m["value"])
					}
				}
				out[strings.ToUpper(method)+" "+path+" "+status] = entry
			}
		}
	}
	return out
}

// TestOpenAPIResponseExamplesMatchSchemas: every example answer of the
// document is valid by its own schema.
func TestOpenAPIResponseExamplesMatchSchemas(t *testing.T) {
	t.Parallel()
	c := newSchemaChecker(t)
	checked := 0
	for name, r := range responseSchemas(t) {
		if r.Schema == nil {
			continue
		}
		for _, ex := range r.Examples {
			// Through JSON, so that numbers are json.Number as in an answer.
			for _, e := range c.check("$", r.Schema, decodeJSON(t, compact(ex))) {
				t.Errorf("example of %s: %s", name, e)
			}
			checked++
		}
	}
	if checked < 10 {
		t.Fatalf("only %d examples checked", checked)
	}
}

// TestOpenAPIAnswersMatchSchemas calls the routes of quotas on meters
// (a plan with implicit, filter and per_group quotas, a group of a
// missing property, a breach of a group) and of GET /v1/meters, and
// checks each answer against the document's schema of it.
func TestOpenAPIAnswersMatchSchemas(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	defineMeters(t, e)
	ctx := context.Background()
	if r := e.do("PUT", "/v1/admin/plans/pro", adminKey, "application/json", `{"quotas":[
		{"metric":"tokens","limit":1000,"unit_price":"0.01"},
		{"metric":"api_calls","limit":null},
		{"metric":"tokens","meter":"tokens_by_model","limit":100,"filter":{"model":"gpt-4"}},
		{"metric":"tokens","meter":"tokens_by_model","limit":50,"period":"day","per_group":true,"hard":true,"burst_percent":10,"unit_price":"0.002"},
		{"metric":"api_calls","meter":"calls_by_route","limit":5,"per_group":true}]}`); r.status != 200 {
		t.Fatalf("PUT plan: %d %s", r.status, r.raw)
	}
	_, acme := e.createKey(`{"tenant":"acme"}`)
	e.do("PUT", "/v1/admin/tenants/acme", adminKey, "application/json", `{"plan":"pro"}`)
	now := time.Now().UTC()
	month := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	day := now.Truncate(24 * time.Hour)
	e.db.Exec(t, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events) VALUES
		('acme', 'tokens', '', 'month', $1, 300, 3),
		('acme', 'tokens_by_model', '["gpt-4"]', 'month', $1, 90, 2),
		('acme', 'tokens_by_model', '["gpt-3"]', 'month', $1, 210, 1),
		('acme', 'tokens_by_model', '["gpt-4"]', 'day', $2, 45, 1),
		('acme', 'tokens_by_model', '[null]', 'day', $2, 60, 1)`, month, day)
	breaches := []quota.Breach{
		{BreachID: quota.BreachID("acme", "tokens", month, "warning"), Tenant: "acme", Metric: "tokens", Threshold: "warning",
			PeriodStart: month, PeriodEnd: month.AddDate(0, 1, 0), Limit: 1000, Value: big.NewInt(800), DetectedAt: now},
		{BreachID: quota.MeterBreachID("acme", "tokens_by_model", `[null]`, day, "exceeded"), Tenant: "acme", Metric: "tokens",
			Meter: "tokens_by_model", Group: json.RawMessage(`{"model":null}`), GroupKey: `[null]`, Threshold: "exceeded",
			PeriodStart: day, PeriodEnd: day.AddDate(0, 0, 1), Limit: 50, Value: big.NewInt(60), DetectedAt: now},
		{BreachID: quota.MeterBreachID("acme", "tokens_by_model", `{"model":"gpt-4"}`, month, "warning"), Tenant: "acme", Metric: "tokens",
			Meter: "tokens_by_model", Group: json.RawMessage(`{"model":"gpt-4"}`), GroupKey: `{"model":"gpt-4"}`, Threshold: "warning",
			PeriodStart: month, PeriodEnd: month.AddDate(0, 1, 0), Limit: 100, Value: big.NewInt(90), DetectedAt: now},
	}
	if _, err := usagedata.RecordBreaches(ctx, e.db.Pool, breaches); err != nil {
		t.Fatal(err)
	}
	schemas := responseSchemas(t)
	c := newSchemaChecker(t)
	tests := []struct {
		route, url, key string
		// want are substrings the answer must hold, so that the check
		// covers the shapes it is meant to (groups, null values, {}).
		want []string
	}{
		{"GET /v1/quotas/{tenant} 200", "/v1/quotas/acme", acme, []string{
			`"meter":"tokens","filter":{},"per_group":false`, `"filter":{"model":"gpt-4"},"per_group":false`,
			`"groups":[{"group":{"model":null},"used":60`, `"groups_total":2`, `"meter":"calls_by_route","filter":{},"per_group":true,"limit":5`}},
		{"GET /v1/breaches 200", "/v1/breaches", acme, []string{`"meter":"tokens","group":{}`, `"group":{"model":null}`, `"group":{"model":"gpt-4"}`}},
		{"GET /v1/meters 200", "/v1/meters?tenant=acme", adminKey, []string{`"name":"tokens_by_model"`, `"property":null`}},
		{"GET /v1/admin/plans/{plan} 200", "/v1/admin/plans/pro", adminKey, []string{`"meter":"tokens_by_model","filter":{"model":"gpt-4"},"per_group":false`, `"meter":"tokens","filter":{},"per_group":false`}},
		{"GET /v1/admin/plans 200", "/v1/admin/plans", adminKey, []string{`"per_group":true`}},
		{"GET /v1/bill/{tenant} 200", "/v1/bill/acme", acme, []string{`"meter":"tokens","filter":{},"group":{}`, `"meter":"tokens_by_model","filter":{},"group":{"model":"gpt-3"},"used":210`}},
	}
	for _, tt := range tests {
		t.Run(tt.route, func(t *testing.T) {
			t.Parallel()
			doc, ok := schemas[tt.route]
			if !ok || doc.Schema == nil {
				t.Fatalf("%s: no JSON schema in the document", tt.route)
			}
			r := e.do("GET", tt.url, tt.key, "", "")
			if r.status != 200 {
				t.Fatalf("GET %s: %d %s", tt.url, r.status, r.raw)
			}
			for _, w := range tt.want {
				if !strings.Contains(r.raw, w) {
					t.Errorf("GET %s: answer lacks %s: %s", tt.url, w, r.raw)
				}
			}
			for _, err := range c.check("$", doc.Schema, decodeJSON(t, r.raw)) {
				t.Errorf("GET %s: %s\n%s", tt.url, err, r.raw)
			}
		})
	}
}
