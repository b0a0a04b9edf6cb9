package events_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
)

// updateEventVectors rewrites testdata/conformance/events.json from
// eventVectorCases: go test ./events -run TestConformanceEvents -update-event-vectors
var updateEventVectors = flag.Bool("update-event-vectors", false, "rewrite testdata/conformance/events.json from the Go events package")

const eventVectorsPath = "../testdata/conformance/events.json"

// eventVector is one entry of testdata/conformance/events.json: an event
// as typed fields and what Validator.Validate and AppendJSON make of it,
// shared with the SDKs (see the README beside it).
type eventVector struct {
	Name  string          `json:"name"`
	Event eventVectorIn   `json:"event"`
	Want  eventVectorWant `json:"want"`
}

// eventVectorIn is an event's typed fields; Time is RFC 3339 with any
// offset, "" for an event without a time.
type eventVectorIn struct {
	ID         string            `json:"id"`
	Tenant     string            `json:"tenant"`
	Metric     string            `json:"metric"`
	Value      int64             `json:"value"`
	Time       string            `json:"time"`
	Source     string            `json:"source,omitempty"`
	Properties map[string]string `json:"properties,omitempty"`
}

// eventVectorWant is exactly one of the canonical encoding or the field
// errors (a set).
type eventVectorWant struct {
	Canonical *string            `json:"canonical,omitempty"`
	Errors    []eventVectorError `json:"errors,omitempty"`
}

type eventVectorError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

// eventVectorNow is the vectors' clock.
var eventVectorNow = time.Date(2026, 11, 21, 19, 0, 0, 0, time.UTC)

func (in eventVectorIn) event() (events.Event, error) {
	e := events.Event{ID: in.ID, Tenant: in.Tenant, Metric: in.Metric, Value: in.Value, Source: in.Source, Properties: in.Properties}
	if in.Time != "" {
		t, err := time.Parse(time.RFC3339Nano, in.Time)
		if err != nil {
			return e, fmt.Errorf("time %q: %w", in.Time, err)
		}
		e.Time = t
	}
	return e, nil
}

// evaluate is what the Go events package makes of in.
func (in eventVectorIn) evaluate() (eventVectorWant, error) {
	e, err := in.event()
	if err != nil {
		return eventVectorWant{}, err
	}
	errs := (events.Validator{Now: func() time.Time { return eventVectorNow }}).Validate(0, e)
	if len(errs) == 0 {
		c := string(e.AppendJSON(nil))
		return eventVectorWant{Canonical: &c}, nil
	}
	var out []eventVectorError
	for _, fe := range errs {
		out = append(out, eventVectorError{Field: fe.Field, Message: fe.Message})
	}
	return eventVectorWant{Errors: out}, nil
}

// vecEvent is a valid event with the given changes applied.
func vecEvent(change func(*eventVectorIn)) eventVectorIn {
	in := eventVectorIn{ID: "e1", Tenant: "acme", Metric: "api_calls", Value: 1, Time: "2026-11-21T18:59:00Z"}
	if change != nil {
		change(&in)
	}
	return in
}

func vecProps(n int) map[string]string {
	m := make(map[string]string, n)
	for i := range n {
		m[fmt.Sprintf("k%02d", i)] = "v"
	}
	return m
}

// eventVectorCases are the inputs of events.json, one per rule or
// message of Validator.Validate, fieldcheck and the canonical encoding.
// Values out of range are exact in IEEE 754 doubles, so that readers
// whose JSON numbers are doubles read them as written.
func eventVectorCases() []struct {
	name string
	in   eventVectorIn
} {
	type c = struct {
		name string
		in   eventVectorIn
	}
	set := func(f func(*eventVectorIn)) eventVectorIn { return vecEvent(f) }
	return []c{
		// Valid events and their canonical encoding.
		{"minimal valid event", vecEvent(nil)},
		{"source and properties, keys sorted by bytes", set(func(e *eventVectorIn) {
			e.Source = "checkout-svc"
			e.Properties = map[string]string{"region": "eu", "endpoint": "/v1/chat", "Zone": "b", "_x": "", "é": "1", "a": "2"}
		})},
		{"empty property value", set(func(e *eventVectorIn) { e.Properties = map[string]string{"k": ""} })},
		{"value 0", set(func(e *eventVectorIn) { e.Value = 0 })},
		{"value 2^53", set(func(e *eventVectorIn) { e.Value = events.MaxValue })},
		{"time with a positive offset is written in UTC", set(func(e *eventVectorIn) { e.Time = "2026-11-21T20:59:00+02:00" })},
		{"time with a negative half-hour offset", set(func(e *eventVectorIn) { e.Time = "2026-11-21T13:29:00-05:30" })},
		{"time with nanoseconds", set(func(e *eventVectorIn) { e.Time = "2026-11-21T18:59:00.123456789Z" })},
		{"time fraction trailing zeros dropped", set(func(e *eventVectorIn) { e.Time = "2026-11-21T18:59:00.120000Z" })},
		{"time zero fraction dropped", set(func(e *eventVectorIn) { e.Time = "2026-11-21T18:59:00.000Z" })},
		{"time crossing midnight by offset", set(func(e *eventVectorIn) { e.Time = "2026-11-22T00:30:00+05:45" })},
		{"time exactly 5 minutes ahead", set(func(e *eventVectorIn) { e.Time = "2026-11-21T19:05:00Z" })},
		{"time exactly at the 35-day horizon", set(func(e *eventVectorIn) { e.Time = "2026-10-17T19:00:00Z" })},
		{"id of every printable ASCII character", set(func(e *eventVectorIn) {
			var b strings.Builder
			for c := byte(0x20); c <= 0x7e; c++ {
				b.WriteByte(c)
			}
			e.ID = b.String()
		})},
		{"id of 128 characters", set(func(e *eventVectorIn) { e.ID = strings.Repeat("i", 128) })},
		{"UUIDv7 id", set(func(e *eventVectorIn) { e.ID = "0193a5c2-7d3e-7b2a-9f1e-3c4d5e6f7a8b" })},
		{"names of every allowed character", set(func(e *eventVectorIn) {
			e.Tenant = "ABCXYZ-abcxyz_0189.:"
			e.Metric = "..."
		})},
		{"names of 128 characters", set(func(e *eventVectorIn) {
			e.Tenant = strings.Repeat("t", 128)
			e.Metric = strings.Repeat("m", 128)
		})},
		{"escaping: quotes and backslashes", set(func(e *eventVectorIn) {
			e.ID = `a"b\c`
			e.Source = `say "hi" \o/`
			e.Properties = map[string]string{`k"\`: `v"\`}
		})},
		{"escaping: HTML characters are written as they are", set(func(e *eventVectorIn) {
			e.ID = "<a&b>"
			e.Source = "<script>&amp;</script>"
			e.Properties = map[string]string{"<k>": "a&b"}
		})},
		{"escaping: non-ASCII is written as UTF-8, U+2028 and U+2029 included", set(func(e *eventVectorIn) {
			e.Source = "日本 🙂 \u00a0\u2028\u2029\ufffd\u00ad"
			e.Properties = map[string]string{"ключ": "значение", "emoji🙂": "🙂", "ls\u2028": "ps\u2029"}
		})},
		{"source of 256 bytes", set(func(e *eventVectorIn) { e.Source = strings.Repeat("s", 254) + "é" })},
		{"32 properties", set(func(e *eventVectorIn) { e.Properties = vecProps(32) })},
		{"property key of 128 bytes and value of 1024 bytes", set(func(e *eventVectorIn) {
			e.Properties = map[string]string{strings.Repeat("é", 64): strings.Repeat("v", 1022) + "é"}
		})},

		// id
		{"id missing", set(func(e *eventVectorIn) { e.ID = "" })},
		{"id of 129 characters", set(func(e *eventVectorIn) { e.ID = strings.Repeat("i", 129) })},
		{"id with a tab", set(func(e *eventVectorIn) { e.ID = "a\tb" })},
		{"id with NUL", set(func(e *eventVectorIn) { e.ID = "\x00" })},
		{"id with DEL", set(func(e *eventVectorIn) { e.ID = "ab\x7f" })},
		{"id with non-ASCII", set(func(e *eventVectorIn) { e.ID = "idé" })},
		{"id of 129 non-ASCII bytes reports the length", set(func(e *eventVectorIn) { e.ID = strings.Repeat("é", 64) + "x" })},

		// tenant and metric
		{"tenant missing", set(func(e *eventVectorIn) { e.Tenant = "" })},
		{"metric missing", set(func(e *eventVectorIn) { e.Metric = "" })},
		{"tenant of 129 characters", set(func(e *eventVectorIn) { e.Tenant = strings.Repeat("t", 129) })},
		{"metric of 129 bytes, non-ASCII", set(func(e *eventVectorIn) { e.Metric = strings.Repeat("é", 64) + "m" })},
		{"tenant reserved name .", set(func(e *eventVectorIn) { e.Tenant = "." })},
		{"tenant reserved name ..", set(func(e *eventVectorIn) { e.Tenant = ".." })},
		{"metric reserved name .", set(func(e *eventVectorIn) { e.Metric = "." })},
		{"metric reserved name ..", set(func(e *eventVectorIn) { e.Metric = ".." })},
		{"tenant with a space", set(func(e *eventVectorIn) { e.Tenant = "a b" })},
		{"tenant with a slash", set(func(e *eventVectorIn) { e.Tenant = "a/b" })},
		{"metric with non-ASCII", set(func(e *eventVectorIn) { e.Metric = "tökens" })},
		{"metric with an emoji", set(func(e *eventVectorIn) { e.Metric = "m🙂" })},
		{"metric with NUL", set(func(e *eventVectorIn) { e.Metric = "m\x00" })},
		{"metric with a newline", set(func(e *eventVectorIn) { e.Metric = "m\n" })},
		{"metric with DEL", set(func(e *eventVectorIn) { e.Metric = "m\x7f" })},
		{"metric with a C1 control", set(func(e *eventVectorIn) { e.Metric = "m\u0085" })},
		{"metric with a soft hyphen", set(func(e *eventVectorIn) { e.Metric = "m\u00ad" })},
		{"metric with U+2028", set(func(e *eventVectorIn) { e.Metric = "m\u2028" })},
		{"tenant with an apostrophe", set(func(e *eventVectorIn) { e.Tenant = "o'brien" })},
		{"tenant with a double quote", set(func(e *eventVectorIn) { e.Tenant = `a"b` })},
		{"tenant with a backslash", set(func(e *eventVectorIn) { e.Tenant = `a\b` })},
		{"tenant with a bell", set(func(e *eventVectorIn) { e.Tenant = "a\a" })},
		{"tenant with ESC", set(func(e *eventVectorIn) { e.Tenant = "a\x1b" })},
		{"tenant reports the first bad character only", set(func(e *eventVectorIn) { e.Tenant = "ok!?" })},

		// value
		{"value negative", set(func(e *eventVectorIn) { e.Value = -1 })},
		{"value above 2^53", set(func(e *eventVectorIn) { e.Value = events.MaxValue + 2 })},
		{"value 2^60", set(func(e *eventVectorIn) { e.Value = 1 << 60 })},

		// time
		{"time missing", set(func(e *eventVectorIn) { e.Time = "" })},
		{"time 1 second too far ahead", set(func(e *eventVectorIn) { e.Time = "2026-11-21T19:05:01Z" })},
		{"time ahead by a fraction, rounded half away from zero", set(func(e *eventVectorIn) { e.Time = "2026-11-21T19:05:00.5Z" })},
		{"time ahead by a fraction, rounded down", set(func(e *eventVectorIn) { e.Time = "2026-11-21T19:05:00.499999999Z" })},
		{"time 1 nanosecond too far ahead", set(func(e *eventVectorIn) { e.Time = "2026-11-21T19:05:00.000000001Z" })},
		{"time an hour ahead", set(func(e *eventVectorIn) { e.Time = "2026-11-21T20:00:00Z" })},
		{"time ahead with an offset", set(func(e *eventVectorIn) { e.Time = "2026-11-21T22:30:15+02:00" })},
		{"time 47h59m59s ahead", set(func(e *eventVectorIn) { e.Time = "2026-11-23T18:59:59Z" })},
		{"time 48 hours ahead is told in days", set(func(e *eventVectorIn) { e.Time = "2026-11-23T19:00:00Z" })},
		{"time 3 days 11 hours ahead", set(func(e *eventVectorIn) { e.Time = "2026-11-25T06:00:00Z" })},
		{"time 3 days 12 hours ahead rounds up", set(func(e *eventVectorIn) { e.Time = "2026-11-25T07:00:00Z" })},
		{"time centuries ahead", set(func(e *eventVectorIn) { e.Time = "9999-12-31T23:59:59.999999999Z" })},
		{"time 1 nanosecond beyond the horizon", set(func(e *eventVectorIn) { e.Time = "2026-10-17T18:59:59.999999999Z" })},
		{"time a year old", set(func(e *eventVectorIn) { e.Time = "2025-11-21T19:00:00Z" })},
		{"time at the year 1", set(func(e *eventVectorIn) { e.Time = "0001-01-02T00:00:00Z" })},

		// source
		{"source of 257 bytes", set(func(e *eventVectorIn) { e.Source = strings.Repeat("s", 255) + "é" })},
		{"source of 257 bytes with a control character reports the length", set(func(e *eventVectorIn) { e.Source = strings.Repeat("s", 256) + "\n" })},
		{"source with a tab", set(func(e *eventVectorIn) { e.Source = "a\tb" })},
		{"source with NUL", set(func(e *eventVectorIn) { e.Source = "\x00" })},
		{"source with DEL", set(func(e *eventVectorIn) { e.Source = "svc\x7f" })},
		{"source with U+0080", set(func(e *eventVectorIn) { e.Source = "svc\u0080" })},
		{"source with U+009F", set(func(e *eventVectorIn) { e.Source = "svc\u009f" })},
		{"source with U+00A0 is allowed", set(func(e *eventVectorIn) { e.Source = "svc\u00a0" })},
		{"source reports the first control character", set(func(e *eventVectorIn) { e.Source = "a\u0085b\x01" })},

		// properties
		{"33 properties", set(func(e *eventVectorIn) { e.Properties = vecProps(33) })},
		{"33 properties, one with a bad value", set(func(e *eventVectorIn) {
			e.Properties = vecProps(33)
			e.Properties["k05"] = "bad\n"
		})},
		{"property key empty", set(func(e *eventVectorIn) { e.Properties = map[string]string{"": "x"} })},
		{"property key empty is reported before its value", set(func(e *eventVectorIn) { e.Properties = map[string]string{"": "\x00"} })},
		{"property key of 129 bytes", set(func(e *eventVectorIn) { e.Properties = map[string]string{strings.Repeat("k", 129): "x"} })},
		{"property key of 130 bytes, non-ASCII, is named by its first 16 bytes", set(func(e *eventVectorIn) {
			e.Properties = map[string]string{strings.Repeat("é", 65): "x"}
		})},
		{"property key with a newline", set(func(e *eventVectorIn) { e.Properties = map[string]string{"a\nb": "x"} })},
		{"property key with quotes, backslash and C1 is quoted", set(func(e *eventVectorIn) {
			e.Properties = map[string]string{"\"é\\\u0085": "x"}
		})},
		{"property key with DEL and a non-printable character", set(func(e *eventVectorIn) {
			e.Properties = map[string]string{"k\u00ad\x7f": "x"}
		})},
		{"property key with NUL and an emoji", set(func(e *eventVectorIn) {
			e.Properties = map[string]string{"🙂\x00": "x"}
		})},
		{"property value of 1025 bytes", set(func(e *eventVectorIn) { e.Properties = map[string]string{"k": strings.Repeat("v", 1025)} })},
		{"property value of 1026 bytes, non-ASCII", set(func(e *eventVectorIn) { e.Properties = map[string]string{"k": strings.Repeat("é", 513)} })},
		{"property value with a control character", set(func(e *eventVectorIn) { e.Properties = map[string]string{"k": "\u009f"} })},
		{"property value with CR", set(func(e *eventVectorIn) { e.Properties = map[string]string{"k": "a\rb"} })},
		{"property keys equal in any case: the later in byte order is refused", set(func(e *eventVectorIn) {
			e.Properties = map[string]string{"region": "eu", "Region": "us", "REGION": "ap"}
		})},
		{"property keys equal under Unicode case folding (K and the Kelvin sign)", set(func(e *eventVectorIn) {
			e.Properties = map[string]string{"k": "a", "\u212a": "b"}
		})},
		{"property key error is reported before a value error", set(func(e *eventVectorIn) {
			e.Properties = map[string]string{"k\t": strings.Repeat("v", 2000)}
		})},
		{"several properties with errors, each reported", set(func(e *eventVectorIn) {
			e.Properties = map[string]string{"": "x", "a": "\x01", "b": "ok", "c\x02": "y", "d": strings.Repeat("v", 1025)}
		})},

		// everything at once
		{"every field invalid", eventVectorIn{
			ID: "", Tenant: "..", Metric: "a b", Value: -5, Time: "2026-11-21T19:10:00Z",
			Source: "x\x00", Properties: map[string]string{"": "v", "k": "\x7f"},
		}},
	}
}

// TestConformanceEvents checks the Go events package against every vector
// of events.json, and that the file is what the cases above generate.
func TestConformanceEvents(t *testing.T) {
	cases := eventVectorCases()
	var generated []eventVector
	for _, c := range cases {
		want, err := c.in.evaluate()
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		generated = append(generated, eventVector{Name: c.name, Event: c.in, Want: want})
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", " ")
	if err := enc.Encode(generated); err != nil {
		t.Fatal(err)
	}
	if *updateEventVectors {
		if err := os.WriteFile(eventVectorsPath, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	file, err := os.ReadFile(eventVectorsPath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(file, buf.Bytes()) {
		t.Errorf("%s is not what the cases generate; run go test ./events -run TestConformanceEvents -update-event-vectors", eventVectorsPath)
	}
	var vs []eventVector
	if err := json.Unmarshal(file, &vs); err != nil {
		t.Fatalf("events.json: %v", err)
	}
	names := map[string]bool{}
	for _, v := range vs {
		if names[v.Name] {
			t.Errorf("vector name %q appears twice", v.Name)
		}
		names[v.Name] = true
		t.Run(v.Name, func(t *testing.T) {
			t.Parallel()
			if (v.Want.Canonical == nil) == (len(v.Want.Errors) == 0) {
				t.Fatalf("want must hold exactly one of canonical and errors: %+v", v.Want)
			}
			got, err := v.Event.evaluate()
			if err != nil {
				t.Fatal(err)
			}
			if v.Want.Canonical != nil {
				if got.Canonical == nil || *got.Canonical != *v.Want.Canonical {
					t.Fatalf("got %+v, want canonical %s", got, *v.Want.Canonical)
				}
				return
			}
			key := func(e eventVectorError) string { return e.Field + "\x00" + e.Message }
			var g, w []string
			for _, e := range got.Errors {
				g = append(g, key(e))
			}
			for _, e := range v.Want.Errors {
				w = append(w, key(e))
			}
			slices.Sort(g)
			slices.Sort(w)
			if !slices.Equal(g, w) {
				t.Fatalf("errors = %q, want %q", g, w)
			}
		})
	}
}
