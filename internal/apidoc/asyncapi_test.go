package apidoc_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/big"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"go.yaml.in/yaml/v3"

	"github.com/usagemeter/metering/internal/apidoc"
	"github.com/usagemeter/metering/internal/billingevents"
	"github.com/usagemeter/metering/internal/price"
	"github.com/usagemeter/metering/internal/storage/accounts"
)

// asyncDocs are the AsyncAPI document and the OpenAPI one its overage
// price refers to, by file name, as generic YAML.
type asyncDocs map[string]map[string]any

func loadAsyncDocs(t *testing.T) asyncDocs {
	t.Helper()
	docs := asyncDocs{}
	for name, raw := range map[string][]byte{"asyncapi.yaml": apidoc.AsyncAPI, "openapi.yaml": apidoc.OpenAPI} {
		var d map[string]any
		if err := yaml.Unmarshal(raw, &d); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		docs[name] = d
	}
	return docs
}

// resolve follows ref ("#/a/b" in doc, or "openapi.yaml#/a/b") and
// returns the schema and the document it lives in.
func (d asyncDocs) resolve(doc, ref string) (any, string, error) {
	file, pointer, ok := strings.Cut(ref, "#")
	if !ok {
		return nil, "", fmt.Errorf("$ref %q has no fragment", ref)
	}
	if file != "" {
		doc = file
	}
	root, found := d[doc]
	if !found {
		return nil, "", fmt.Errorf("$ref %q: no document %s", ref, doc)
	}
	var node any = root
	for _, part := range strings.Split(strings.TrimPrefix(pointer, "/"), "/") {
		m, ok := node.(map[string]any)
		if !ok || m[part] == nil {
			return nil, "", fmt.Errorf("$ref %q: no %s", ref, part)
		}
		node = m[part]
	}
	return node, doc, nil
}

// check returns every way v (numbers as json.Number) breaks schema of doc:
// $ref, type, enum, const, required, properties, additionalProperties,
// items, minItems, maxItems, oneOf, anyOf, pattern, minLength, minimum,
// maximum, and the formats date-time and uuid. An object schema with
// properties documents every member: any other is an error even without
// additionalProperties: false.
func (d asyncDocs) check(path, doc string, schema, v any) []string {
	s, ok := schema.(map[string]any)
	if !ok {
		return []string{path + ": schema is not an object"}
	}
	if ref, ok := s["$ref"].(string); ok {
		target, tdoc, err := d.resolve(doc, ref)
		if err != nil {
			return []string{path + ": " + err.Error()}
		}
		return d.check(path, tdoc, target, v)
	}
	var errs []string
	fail := func(format string, args ...any) { errs = append(errs, path+": "+fmt.Sprintf(format, args...)) }
	if t, ok := s["type"]; ok {
		var types []string
		switch t := t.(type) {
		case string:
			types = []string{t}
		case []any:
			for _, x := range t {
				types = append(types, fmt.Sprint(x))
			}
		}
		if !slices.ContainsFunc(types, func(t string) bool { return jsonTypeIs(v, t) }) {
			return []string{fmt.Sprintf("%s: %s is not of type %v", path, compactJSON(v), types)}
		}
	}
	if enum, ok := s["enum"].([]any); ok && !slices.ContainsFunc(enum, func(e any) bool { return compactJSON(e) == compactJSON(v) }) {
		fail("%s is not one of %v", compactJSON(v), enum)
	}
	if c, ok := s["const"]; ok && compactJSON(c) != compactJSON(v) {
		fail("%s is not %s", compactJSON(v), compactJSON(c))
	}
	for _, key := range []string{"anyOf", "oneOf"} {
		subs, _ := s[key].([]any)
		if len(subs) == 0 {
			continue
		}
		matched := 0
		for _, sub := range subs {
			if len(d.check(path, doc, sub, v)) == 0 {
				matched++
			}
		}
		if matched == 0 || key == "oneOf" && matched > 1 {
			fail("%s matches %d of the %d schemas of %s", compactJSON(v), matched, len(subs), key)
		}
	}
	switch v := v.(type) {
	case map[string]any:
		required, _ := s["required"].([]any)
		for _, r := range required {
			if _, ok := v[fmt.Sprint(r)]; !ok {
				fail("required member %q is missing", r)
			}
		}
		props, _ := s["properties"].(map[string]any)
		additional, hasAdditional := s["additionalProperties"]
		for k, mv := range v {
			switch ps, ok := props[k]; {
			case ok:
				errs = append(errs, d.check(path+"."+k, doc, ps, mv)...)
			case hasAdditional && additional != false:
				errs = append(errs, d.check(path+"."+k, doc, additional, mv)...)
			case props != nil || additional == false:
				fail("member %q is not documented", k)
			}
		}
	case []any:
		if n, ok := s["minItems"].(int); ok && len(v) < n {
			fail("%d items, fewer than %d", len(v), n)
		}
		if n, ok := s["maxItems"].(int); ok && len(v) > n {
			fail("%d items, more than %d", len(v), n)
		}
		if items, ok := s["items"]; ok {
			for i, x := range v {
				errs = append(errs, d.check(fmt.Sprintf("%s[%d]", path, i), doc, items, x)...)
			}
		}
	case string:
		if p, ok := s["pattern"].(string); ok && !regexp.MustCompile(p).MatchString(v) {
			fail("%q does not match %s", v, p)
		}
		if n, ok := s["minLength"].(int); ok && len(v) < n {
			fail("%q is shorter than %d", v, n)
		}
		switch s["format"] {
		case "date-time":
			if _, err := time.Parse(time.RFC3339Nano, v); err != nil {
				fail("%q is not a date-time", v)
			}
		case "uuid":
			if _, err := uuid.Parse(v); err != nil || len(v) != 36 {
				fail("%q is not a UUID", v)
			}
		}
	case json.Number:
		n, isInt := new(big.Int).SetString(string(v), 10)
		if m, ok := s["minimum"]; ok && isInt {
			if min, _ := new(big.Int).SetString(fmt.Sprint(m), 10); min != nil && n.Cmp(min) < 0 {
				fail("%s is below %v", v, m)
			}
		}
		if m, ok := s["maximum"]; ok && isInt {
			if max, _ := new(big.Int).SetString(fmt.Sprint(m), 10); max != nil && n.Cmp(max) > 0 {
				fail("%s is above %v", v, m)
			}
		}
	}
	return errs
}

// jsonTypeIs reports whether v is of JSON Schema type t; an integer is a
// number without fraction or exponent, of any size.
func jsonTypeIs(v any, t string) bool {
	switch v := v.(type) {
	case nil:
		return t == "null"
	case bool:
		return t == "boolean"
	case string:
		return t == "string"
	case json.Number:
		_, isInt := new(big.Int).SetString(string(v), 10)
		return t == "number" || t == "integer" && isInt
	case map[string]any:
		return t == "object"
	case []any:
		return t == "array"
	}
	return false
}

func compactJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func decodeNumbers(t *testing.T, raw []byte) any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("%v: %s", err, raw)
	}
	return v
}

// messageSchemas returns, by event type, the envelope schema of each
// message of the billing.events channel.
func messageSchemas(t *testing.T, d asyncDocs) map[billingevents.Type]any {
	t.Helper()
	channel, _, err := d.resolve("asyncapi.yaml", "#/channels/billingEvents")
	if err != nil {
		t.Fatal(err)
	}
	if addr := channel.(map[string]any)["address"]; addr != "billing.events" {
		t.Fatalf("channel address %v", addr)
	}
	out := map[billingevents.Type]any{}
	for key, ref := range channel.(map[string]any)["messages"].(map[string]any) {
		msg, _, err := d.resolve("asyncapi.yaml", ref.(map[string]any)["$ref"].(string))
		if err != nil {
			t.Fatal(err)
		}
		m := msg.(map[string]any)
		name := billingevents.Type(fmt.Sprint(m["name"]))
		if _, dup := out[name]; dup {
			t.Errorf("two messages of type %s", name)
		}
		out[name] = m["payload"]
		if m["headers"] == nil || m["examples"] == nil || m["summary"] == nil {
			t.Errorf("message %s (%s) lacks headers, examples or a summary", key, name)
		}
	}
	return out
}

var (
	ts0 = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	ts1 = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
)

func mustPrice(t *testing.T, raw string) *price.Price {
	t.Helper()
	p, err := price.Parse(json.RawMessage(raw))
	if err != nil {
		t.Fatalf("price %s: %v", raw, err)
	}
	return &p
}

// producedEvents makes, with the package's own constructors, events of
// every type: each with every optional field set, and with none.
func producedEvents(t *testing.T) []billingevents.Event {
	t.Helper()
	str := func(s string) *string { return &s }
	exp := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	var evs []billingevents.Event
	add := func(ev billingevents.Event, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, ev)
	}
	// plan.changed as the plan hook makes it: a first plan since always,
	// a change, the default plan applying, and none configured.
	for _, c := range []struct {
		change      accounts.PlanChange
		defaultPlan string
	}{
		{accounts.PlanChange{Tenant: "acme", To: str("free"), Version: 1, Now: ts0, Source: "admin"}, ""},
		{accounts.PlanChange{Tenant: "acme", From: str("free"), To: str("pro"), Version: 3, At: ts0.Add(time.Hour + time.Nanosecond), Now: ts0, Source: "stripe"}, ""},
		{accounts.PlanChange{Tenant: "acme", From: str("pro"), Version: 1, At: ts1, Now: ts1, Source: "admin"}, "starter"},
		{accounts.PlanChange{Tenant: "acme", From: str("pro"), At: ts1, Now: ts1}, ""},
	} {
		add(billingevents.PlanChangedOf(c.change, c.defaultPlan))
	}
	big70 := new(big.Int).Lsh(big.NewInt(1), 70)
	for _, p := range []billingevents.Payload{
		billingevents.GrantCreated{GrantID: "g1", Amount: "5000", Unit: billingevents.UnitMeterUnits, Meter: "api_calls", EffectiveAt: ts0, ExpiresAt: &exp},
		billingevents.GrantCreated{GrantID: "g2", Amount: "100.50", Unit: "usd", EffectiveAt: ts0},
		billingevents.GrantExpired{GrantID: "g1", Remaining: "1200", Unit: billingevents.UnitMeterUnits, ExpiredAt: exp},
		billingevents.GrantVoided{GrantID: "g1", Remaining: "4100", Unit: billingevents.UnitMeterUnits, VoidedAt: ts1, Reason: "wrong tenant"},
		billingevents.GrantVoided{GrantID: "g2", Remaining: "0", Unit: "usd", VoidedAt: ts1},
		billingevents.AdjustmentRecorded{AdjustmentID: "5f0d3c1e-8a4b-4c2d-9e6f-7a8b9c0d1e2f", Period: "2026-11", Amount: "-500", Unit: "usage",
			Meter: "tokens_by_model", Group: `["gpt-4"]`, Reason: "outage credit"},
		billingevents.AdjustmentRecorded{AdjustmentID: "6a1e4d2f-9b5c-4d3e-8f7a-8b9c0d1e2f3a", Period: "2026-11", Amount: "12.5", Unit: "usd"},
		billingevents.OverageStarted{Meter: "api_calls", PeriodStart: ts0, PeriodEnd: ts1, Included: big.NewInt(1000), Usage: big.NewInt(1003), StartedAt: ts0.Add(time.Hour)},
		billingevents.OverageStarted{Meter: "tokens_by_model", Group: `["gpt-4"]`, PeriodStart: ts0, PeriodEnd: ts1, Included: big70, Usage: new(big.Int).Add(big70, big.NewInt(1)),
			StartedAt: ts0.Add(time.Hour), OveragePrice: mustPrice(t, `{"model":"per_unit","unit_amount":"0.004"}`)},
		billingevents.OverageStarted{Meter: "api_calls", Group: "", PeriodStart: ts1, PeriodEnd: exp, Included: big.NewInt(1), Usage: big.NewInt(2), StartedAt: ts1,
			OveragePrice: mustPrice(t, `{"model":"graduated","tiers":[{"up_to":1000,"unit_amount":"0","flat_amount":"5"},{"up_to":null,"unit_amount":"0.001"}]}`)},
		billingevents.OverageStarted{Meter: "exports", PeriodStart: ts0, PeriodEnd: ts1, Included: big.NewInt(1), Usage: big.NewInt(2), StartedAt: ts0,
			OveragePrice: mustPrice(t, `{"model":"package","package_size":100,"package_amount":"2","round":"down"}`)},
		billingevents.PeriodClosed{PeriodStart: ts0, PeriodEnd: ts1, AllowedLateness: "1h0m0s", Usage: []billingevents.MeterUsage{
			{Meter: "api_calls", Metric: "api_calls", Aggregation: "sum", Value: big.NewInt(1201)},
			{Meter: "tokens_by_model", Metric: "tokens", Aggregation: "unique_count", Group: `["gpt-4"]`, Value: big70}}},
		billingevents.PeriodClosed{PeriodStart: ts1, PeriodEnd: exp, AllowedLateness: "0s", Usage: []billingevents.MeterUsage{}},
		billingevents.SpendThreshold{Threshold: "100.00", ProjectedTotal: "104.17", Total: "37.50", Currency: "usd", PeriodStart: ts0, PeriodEnd: ts1,
			Plan: "pro", PlanVersion: 3, DetectedAt: ts0.Add(11 * 24 * time.Hour)},
	} {
		add(billingevents.New("acme", ts1, p))
	}
	return evs
}

// TestBillingEventsMatchTheAsyncAPIDocument: every billing.events message
// internal/billingevents produces (every type, every optional field set
// and left out) validates against the AsyncAPI document, with no member
// the document does not describe and none it requires missing; its
// headers too. Every type has its message, and every message a type.
func TestBillingEventsMatchTheAsyncAPIDocument(t *testing.T) {
	t.Parallel()
	d := loadAsyncDocs(t)
	if v := d["asyncapi.yaml"]["asyncapi"]; v != "3.0.0" {
		t.Fatalf("asyncapi = %v, want 3.0.0", v)
	}
	schemas := messageSchemas(t, d)
	headers, _, err := d.resolve("asyncapi.yaml", "#/components/schemas/Headers")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[billingevents.Type]bool{}
	for _, ev := range producedEvents(t) {
		m, err := ev.Message()
		if err != nil {
			t.Fatal(err)
		}
		schema, ok := schemas[ev.Type]
		if !ok {
			t.Errorf("type %s has no message in the document", ev.Type)
			continue
		}
		seen[ev.Type] = true
		for _, e := range d.check(string(ev.Type), "asyncapi.yaml", schema, decodeNumbers(t, m.Value)) {
			t.Errorf("%s\n  in %s", e, m.Value)
		}
		hs := map[string]any{}
		for k, v := range m.Headers {
			hs[k] = v
		}
		for _, e := range d.check(string(ev.Type)+" headers", "asyncapi.yaml", headers, hs) {
			t.Error(e)
		}
	}
	for _, typ := range billingevents.Types {
		if !seen[typ] {
			t.Errorf("no event of type %s was checked", typ)
		}
	}
	if len(schemas) != len(billingevents.Types) {
		t.Errorf("the document has %d messages, the code %d types", len(schemas), len(billingevents.Types))
	}
}

// TestAsyncAPIDescribesEveryPayloadField holds each payload struct's
// JSON fields to its schema's: the same members, required exactly when
// the field is never omitted; the envelope's too.
func TestAsyncAPIDescribesEveryPayloadField(t *testing.T) {
	t.Parallel()
	d := loadAsyncDocs(t)
	payloads := map[string]any{
		"PlanChanged": billingevents.PlanChanged{}, "GrantCreated": billingevents.GrantCreated{}, "GrantExpired": billingevents.GrantExpired{},
		"GrantVoided": billingevents.GrantVoided{}, "AdjustmentRecorded": billingevents.AdjustmentRecorded{},
		"OverageStarted": billingevents.OverageStarted{}, "PeriodClosed": billingevents.PeriodClosed{}, "MeterUsage": billingevents.MeterUsage{},
	}
	for _, typ := range []string{"PlanChangedEvent", "GrantCreatedEvent", "GrantExpiredEvent", "GrantVoidedEvent", "AdjustmentRecordedEvent",
		"OverageStartedEvent", "PeriodClosedEvent"} {
		payloads[typ] = billingevents.Event{}
	}
	for name, v := range payloads {
		schema, _, err := d.resolve("asyncapi.yaml", "#/components/schemas/"+name)
		if err != nil {
			t.Error(err)
			continue
		}
		s := schema.(map[string]any)
		var documented, required []string
		for k := range s["properties"].(map[string]any) {
			documented = append(documented, k)
		}
		for _, r := range s["required"].([]any) {
			required = append(required, fmt.Sprint(r))
		}
		var fields, always []string
		rt := reflect.TypeOf(v)
		for i := range rt.NumField() {
			tag, ok := rt.Field(i).Tag.Lookup("json")
			if !ok || tag == "-" {
				continue
			}
			fname, opts, _ := strings.Cut(tag, ",")
			fields = append(fields, fname)
			if !strings.Contains(opts, "omitempty") && !strings.Contains(opts, "omitzero") {
				always = append(always, fname)
			}
		}
		sort.Strings(documented)
		sort.Strings(required)
		sort.Strings(fields)
		sort.Strings(always)
		if !slices.Equal(documented, fields) {
			t.Errorf("%s: the document describes %v, the code writes %v", name, documented, fields)
		}
		if !slices.Equal(required, always) {
			t.Errorf("%s: the document requires %v, the code always writes %v", name, required, always)
		}
	}
}

// TestAsyncAPIExamplesAreRealEvents: each message's examples validate
// against its schema, decode with billingevents.Decode, and are exactly
// what the package writes for that fact (so the id is the fact's real id)
// with the headers it sets.
func TestAsyncAPIExamplesAreRealEvents(t *testing.T) {
	t.Parallel()
	d := loadAsyncDocs(t)
	msgs := d["asyncapi.yaml"]["components"].(map[string]any)["messages"].(map[string]any)
	for key, m := range msgs {
		msg := m.(map[string]any)
		examples, _ := msg["examples"].([]any)
		if len(examples) == 0 {
			t.Errorf("message %s has no example", key)
		}
		for _, x := range examples {
			ex := x.(map[string]any)
			raw, err := json.Marshal(ex["payload"])
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range d.check(key, "asyncapi.yaml", msg["payload"], decodeNumbers(t, raw)) {
				t.Errorf("example %v: %s", ex["name"], e)
			}
			ev, err := billingevents.Decode(raw)
			if err != nil {
				t.Errorf("example %v of %s: %v", ex["name"], key, err)
				continue
			}
			again, err := billingevents.New(ev.Tenant, ev.OccurredAt, ev.Data)
			if err != nil {
				t.Errorf("example %v of %s: %v", ex["name"], key, err)
				continue
			}
			out, err := again.Message()
			if err != nil {
				t.Fatal(err)
			}
			if string(out.Value) != compactJSON(decodeNumbers(t, raw)) && !sameJSONBytes(out.Value, raw) {
				t.Errorf("example %v of %s is not what the code writes for its fact:\n got %s\nwant %s", ex["name"], key, raw, out.Value)
			}
			hs, _ := ex["headers"].(map[string]any)
			if fmt.Sprint(hs["event-id"]) != out.Headers[billingevents.HeaderEventID] || fmt.Sprint(hs["event-type"]) != out.Headers[billingevents.HeaderEventType] {
				t.Errorf("example %v of %s: headers %v, the code sets %v", ex["name"], key, hs, out.Headers)
			}
		}
	}
}

// sameJSONBytes reports whether a and b hold the same JSON value, member
// order aside.
func sameJSONBytes(a, b []byte) bool {
	var x, y any
	da, db := json.NewDecoder(bytes.NewReader(a)), json.NewDecoder(bytes.NewReader(b))
	da.UseNumber()
	db.UseNumber()
	if da.Decode(&x) != nil || db.Decode(&y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

// TestAsyncAPICheckerCatchesDrift: the checker the tests above rely on
// refuses a payload with an undocumented member, one without a required
// member, a float where an integer is due and a wrong type const.
func TestAsyncAPICheckerCatchesDrift(t *testing.T) {
	t.Parallel()
	d := loadAsyncDocs(t)
	schemas := messageSchemas(t, d)
	base := `{"id":"b18487b8-60fd-5191-80d6-1619323f3610","type":"period.closed","tenant":"acme","occurred_at":"2026-12-01T01:00:05Z",` +
		`"data":{"period_start":"2026-11-01T00:00:00Z","period_end":"2026-12-01T00:00:00Z","allowed_lateness":"1h0m0s","usage":[%s]}%s}`
	usage := `{"meter":"api_calls","metric":"api_calls","aggregation":"sum","group":"","value":%s%s}`
	if errs := d.check("ok", "asyncapi.yaml", schemas[billingevents.TypePeriodClosed], decodeNumbers(t, fmt.Appendf(nil, base, fmt.Sprintf(usage, "12", ""), ""))); len(errs) > 0 {
		t.Fatalf("a valid payload was refused: %v", errs)
	}
	for name, raw := range map[string]string{
		"undocumented member": fmt.Sprintf(base, fmt.Sprintf(usage, "12", `,"unit":"calls"`), ""),
		"envelope member":     fmt.Sprintf(base, fmt.Sprintf(usage, "12", ""), `,"extra":1`),
		"float value":         fmt.Sprintf(base, fmt.Sprintf(usage, "12.5", ""), ""),
		"missing required":    strings.Replace(fmt.Sprintf(base, fmt.Sprintf(usage, "12", ""), ""), `"allowed_lateness":"1h0m0s",`, "", 1),
		"wrong type":          strings.Replace(fmt.Sprintf(base, fmt.Sprintf(usage, "12", ""), ""), `"period.closed"`, `"grant.created"`, 1),
	} {
		if errs := d.check(name, "asyncapi.yaml", schemas[billingevents.TypePeriodClosed], decodeNumbers(t, []byte(raw))); len(errs) == 0 {
			t.Errorf("%s: accepted %s", name, raw)
		}
	}
}
