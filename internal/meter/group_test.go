package meter_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/meter"
)

func event(props map[string]string) events.Event {
	return events.Event{ID: "e1", Tenant: "acme", Metric: "tokens", Value: 1500,
		Time: time.Date(2026, 11, 21, 19, 0, 0, 0, time.UTC), Properties: props}
}

func TestMatches(t *testing.T) {
	t.Parallel()
	eu := meter.Definition{Metric: "tokens", Filter: map[string]string{"region": "eu", "tier": ""}}
	tests := []struct {
		name   string
		d      meter.Definition
		metric string
		props  map[string]string
		want   bool
	}{
		{"implicit takes its metric", meter.Implicit("tokens"), "tokens", nil, true},
		{"implicit ignores properties", meter.Implicit("tokens"), "tokens", map[string]string{"a": "b"}, true},
		{"another metric", meter.Implicit("tokens"), "api_calls", nil, false},
		{"every pair equal", eu, "tokens", map[string]string{"region": "eu", "tier": "", "x": "y"}, true},
		{"a pair differs", eu, "tokens", map[string]string{"region": "us", "tier": ""}, false},
		{"values compare exactly", eu, "tokens", map[string]string{"region": "EU", "tier": ""}, false},
		{"an empty value does not match a missing one", eu, "tokens", map[string]string{"region": "eu"}, false},
		{"no properties", eu, "tokens", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := event(tt.props)
			e.Metric = tt.metric
			if got := tt.d.Matches(e); got != tt.want {
				t.Fatalf("Matches = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestGroupAndKey(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		groupBy []string
		props   map[string]string
		key     string
		json    string
	}{
		{"no group_by: the empty key", nil, map[string]string{"model": "gpt-4"}, "", `{}`},
		{"one value", []string{"model"}, map[string]string{"model": "gpt-4", "x": "y"}, `["gpt-4"]`, `{"model":"gpt-4"}`},
		{"missing is null", []string{"model", "region"}, map[string]string{"model": "gpt-4"}, `["gpt-4",null]`, `{"model":"gpt-4","region":null}`},
		{"empty is not null", []string{"model", "region"}, map[string]string{"model": "", "region": "eu"}, `["","eu"]`, `{"model":"","region":"eu"}`},
		{"group_by order, not key order", []string{"region", "model"}, map[string]string{"model": "m", "region": "r"}, `["r","m"]`, `{"region":"r","model":"m"}`},
		{"all missing", []string{"a", "b", "c"}, nil, `[null,null,null]`, `{"a":null,"b":null,"c":null}`},
		{"a value spelled null", []string{"a"}, map[string]string{"a": "null"}, `["null"]`, `{"a":"null"}`},
		{"quotes, commas and brackets", []string{"a", "b"}, map[string]string{"a": `x","y`, "b": `]\[`}, `["x\",\"y","]\\["]`, `{"a":"x\",\"y","b":"]\\["}`},
		{"unicode as is, html not escaped", []string{"模型"}, map[string]string{"模型": "é<&>\u2028"}, `["é<&>\u2028"]`, `{"模型":"é<&>\u2028"}`},
		{"controls escaped", []string{"a"}, map[string]string{"a": "\x00\t\x1f\x7f"}, `["\u0000\t\u001f` + "\x7f" + `"]`, `{"a":"\u0000\t\u001f` + "\x7f" + `"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := meter.Definition{Metric: "tokens", Aggregation: meter.Sum, GroupBy: tt.groupBy}
			g := d.Group(event(tt.props))
			if got := g.Key(); got != tt.key {
				t.Fatalf("Key = %s, want %s", got, tt.key)
			}
			if got := string(g.AppendKey([]byte("x"))); got != "x"+tt.key {
				t.Fatalf("AppendKey = %s, want x%s", got, tt.key)
			}
			b, err := json.Marshal(g)
			if err != nil {
				t.Fatal(err)
			}
			if j, _ := g.MarshalJSON(); string(j) != tt.json {
				t.Fatalf("MarshalJSON = %s, want %s", j, tt.json)
			}
			if got := string(g.AppendJSON([]byte("x"))); got != "x"+tt.json {
				t.Fatalf("AppendJSON = %s, want x%s", got, tt.json)
			}
			if !json.Valid(b) {
				t.Fatalf("json.Marshal = %s, not JSON", b)
			}
			back, err := meter.ParseGroupKey(tt.groupBy, g.Key())
			if err != nil {
				t.Fatalf("ParseGroupKey(%s): %v", g.Key(), err)
			}
			if !back.Equal(g) || back.Key() != g.Key() {
				t.Fatalf("ParseGroupKey(%s) = %s", g.Key(), back.Key())
			}
			for i, name := range tt.groupBy {
				v, ok := g.Value(i)
				want, wantOK := tt.props[name]
				if g.Name(i) != name || v != want || ok != wantOK {
					t.Fatalf("property %d = %s %q %v, want %s %q %v", i, g.Name(i), v, ok, name, want, wantOK)
				}
			}
		})
	}
}

func TestImplicitGroupKeyIsEmpty(t *testing.T) {
	t.Parallel()
	d := meter.Implicit("tokens")
	if k := d.Group(event(map[string]string{"model": "x"})).Key(); k != "" {
		t.Fatalf("implicit key = %q, want \"\"", k)
	}
	if d.Aggregation != meter.Sum || d.Name != "tokens" || d.GroupBy != nil || d.Filter != nil || d.Property != "" {
		t.Fatalf("Implicit = %+v", d)
	}
}

// TestGroupKeyIsJSON: Key is what encoding/json writes for the array of
// values (null for a missing one) without HTML escaping, for every byte
// value and the runes it treats specially.
func TestGroupKeyIsJSON(t *testing.T) {
	t.Parallel()
	var values []string
	for c := range 256 {
		values = append(values, string([]byte{byte(c)}), "a"+string([]byte{byte(c)})+"b")
	}
	values = append(values, "\u2028", "\u2029", "\ufffd", "\xe2\x80", "é\xc3(", "\U0010ffff", `\u00e9`, strings.Repeat(`"`, 70))
	d := meter.Definition{GroupBy: []string{"v", "missing"}}
	for _, v := range values {
		g := d.Group(event(map[string]string{"v": v}))
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode([]*string{&v, nil}); err != nil {
			t.Fatal(err)
		}
		if want := strings.TrimSuffix(buf.String(), "\n"); g.Key() != want {
			t.Errorf("Key of %q = %s, encoding/json writes %s", v, g.Key(), want)
		}
	}
}

func TestParseGroupKeyRefuses(t *testing.T) {
	t.Parallel()
	two := []string{"a", "b"}
	tests := []struct {
		name    string
		groupBy []string
		key     string
	}{
		{"a key for a meter without group_by", nil, `["x"]`},
		{"the empty key for a grouped meter", two, ``},
		{"an empty array", two, `[]`},
		{"too few values", two, `["x"]`},
		{"too many values", two, `["x","y","z"]`},
		{"spaces", two, `["x", "y"]`},
		{"a number", two, `["x",1]`},
		{"upper-case hex", two, `["\u001F",null]`},
		{"an escape Key does not write", two, `["\u0041",null]`},
		{"a long escape of a short one", two, `["\u000a",null]`},
		{"an escaped slash", two, `["\/",null]`},
		{"a raw control", two, "[\"\x01\",null]"},
		{"a raw line separator", two, "[\"\u2028\",null]"},
		{"invalid UTF-8", two, "[\"\xff\",null]"},
		{"unterminated", two, `["x`},
		{"trailing bytes", two, `["x",null] `},
		{"more than five names", []string{"a", "b", "c", "d", "e", "f"}, `[null,null,null,null,null,null]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if g, err := meter.ParseGroupKey(tt.groupBy, tt.key); err == nil {
				t.Fatalf("ParseGroupKey(%q) = %s, want an error", tt.key, g.Key())
			}
		})
	}
}

// TestParseGroupKeyOfInvalidUTF8: Key writes an invalid byte as \ufffd,
// which reads back as U+FFFD.
func TestParseGroupKeyOfInvalidUTF8(t *testing.T) {
	t.Parallel()
	d := meter.Definition{GroupBy: []string{"a"}}
	key := d.Group(event(map[string]string{"a": "x\xffy"})).Key()
	g, err := meter.ParseGroupKey(d.GroupBy, key)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := g.Value(0); v != "x\ufffdy" {
		t.Fatalf("value = %q, want x\\ufffdy", v)
	}
}

func TestContribution(t *testing.T) {
	t.Parallel()
	e := event(map[string]string{"user": "u1"})
	tests := []struct {
		agg      meter.Aggregation
		value    int64
		distinct string
		has      bool
	}{
		{meter.Sum, 1500, "", false},
		{meter.Max, 1500, "", false},
		{meter.Latest, 1500, "", false},
		{meter.Count, 1, "", false},
		{meter.UniqueCount, 0, "u1", true},
	}
	for _, tt := range tests {
		d := meter.Definition{Metric: "tokens", Aggregation: tt.agg, Property: "user"}
		c := d.Contribution(e)
		if c.Aggregation != tt.agg || c.Value != tt.value || c.Distinct != tt.distinct || c.HasDistinct != tt.has || !c.Time.Equal(e.Time) || c.ID != e.ID {
			t.Errorf("%s: %+v", tt.agg, c)
		}
	}
	d := meter.Definition{Metric: "tokens", Aggregation: meter.UniqueCount, Property: "team"}
	if c := d.Contribution(e); c.HasDistinct || c.Distinct != "" {
		t.Errorf("missing property: %+v, want no distinct value", c)
	}
	e.Properties["team"] = ""
	if c := d.Contribution(e); !c.HasDistinct || c.Distinct != "" {
		t.Errorf("empty property: %+v, want the distinct value \"\"", c)
	}
}

func TestLater(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 11, 21, 19, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		a, b meter.Contribution
		want bool
	}{
		{"later time", meter.Contribution{Time: t0.Add(time.Nanosecond), ID: "a"}, meter.Contribution{Time: t0, ID: "z"}, true},
		{"earlier time", meter.Contribution{Time: t0, ID: "z"}, meter.Contribution{Time: t0.Add(time.Nanosecond), ID: "a"}, false},
		{"tie, greater id", meter.Contribution{Time: t0, ID: "b"}, meter.Contribution{Time: t0, ID: "a"}, true},
		{"tie, smaller id", meter.Contribution{Time: t0, ID: "a"}, meter.Contribution{Time: t0, ID: "b"}, false},
		{"same event", meter.Contribution{Time: t0, ID: "a"}, meter.Contribution{Time: t0, ID: "a"}, false},
		{"same instant in another zone", meter.Contribution{Time: t0.In(time.FixedZone("X", 3600)), ID: "b"}, meter.Contribution{Time: t0, ID: "a"}, true},
	}
	for _, tt := range tests {
		if got := tt.a.Later(tt.b); got != tt.want {
			t.Errorf("%s: Later = %v, want %v", tt.name, got, tt.want)
		}
	}
}
