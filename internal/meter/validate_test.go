package meter_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/meter"
)

func validDefinition() meter.Definition {
	return meter.Definition{
		Name: "tokens_by_model", Metric: "tokens", Aggregation: meter.Sum,
		GroupBy: []string{"model"}, Filter: map[string]string{"region": "eu"},
		Description: "Tokens per model, in the EU",
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("k", 129)
	manyFilters := map[string]string{}
	for i := range 33 {
		manyFilters[fmt.Sprintf("k%02d", i)] = "v"
	}
	tests := []struct {
		name   string
		mutate func(*meter.Definition)
		want   []string // "field: message", in order
	}{
		{"valid", func(*meter.Definition) {}, nil},
		{"implicit meter", func(d *meter.Definition) { *d = meter.Implicit("api_calls") }, nil},
		{"every aggregation but unique_count", func(d *meter.Definition) { d.Aggregation = meter.Latest }, nil},
		{"unique_count with its property", func(d *meter.Definition) {
			d.Aggregation, d.Property = meter.UniqueCount, "user"
		}, nil},
		{"five group_by", func(d *meter.Definition) { d.GroupBy = []string{"a", "b", "c", "d", "e"} }, nil},
		{"filter value empty", func(d *meter.Definition) { d.Filter = map[string]string{"region": ""} }, nil},
		{"description of 1024 bytes", func(d *meter.Definition) { d.Description = strings.Repeat("é", 512) }, nil},
		{"unicode property names", func(d *meter.Definition) { d.GroupBy = []string{"模型", "a b/c"} }, nil},

		{"name missing", func(d *meter.Definition) { d.Name = "" },
			[]string{"name: is required (1-128 characters of A-Z a-z 0-9 . _ : -)"}},
		{"name too long", func(d *meter.Definition) { d.Name = strings.Repeat("n", 129) },
			[]string{"name: must be at most 128 characters, got 129"}},
		{"name dot dot", func(d *meter.Definition) { d.Name = ".." },
			[]string{`name: must not be ".."`}},
		{"name bad char", func(d *meter.Definition) { d.Name = "tokens/eu" },
			[]string{`name: may contain only A-Z a-z 0-9 . _ : -; found '/' at byte 6`}},
		{"metric missing", func(d *meter.Definition) { d.Metric = "" },
			[]string{"metric: is required (1-128 characters of A-Z a-z 0-9 . _ : -)"}},
		{"metric non-ascii", func(d *meter.Definition) { d.Metric = "tökens" },
			[]string{`metric: may contain only A-Z a-z 0-9 . _ : -; found 'ö' at byte 1`}},
		{"aggregation missing", func(d *meter.Definition) { d.Aggregation = "" },
			[]string{"aggregation: is required (one of sum, count, max, latest, unique_count)"}},
		{"aggregation unknown", func(d *meter.Definition) { d.Aggregation = "avg" },
			[]string{`aggregation: must be one of sum, count, max, latest, unique_count, got "avg"`}},
		{"aggregation in another case", func(d *meter.Definition) { d.Aggregation = "SUM" },
			[]string{`aggregation: must be one of sum, count, max, latest, unique_count, got "SUM"`}},
		{"six group_by", func(d *meter.Definition) { d.GroupBy = []string{"a", "b", "c", "d", "e", "f"} },
			[]string{"group_by: must name at most 5 properties, got 6"}},
		{"group_by empty name", func(d *meter.Definition) { d.GroupBy = []string{"model", ""} },
			[]string{"group_by[1]: must not be empty (a property name)"}},
		{"group_by name too long", func(d *meter.Definition) { d.GroupBy = []string{long} },
			[]string{"group_by[0]: must be at most 128 bytes, got 129"}},
		{"group_by control character", func(d *meter.Definition) { d.GroupBy = []string{"a\tb"} },
			[]string{"group_by[0]: must not contain control characters (found U+0009)"}},
		{"group_by invalid UTF-8", func(d *meter.Definition) { d.GroupBy = []string{"a\xffb"} },
			[]string{"group_by[0]: must be valid UTF-8"}},
		{"group_by repeated", func(d *meter.Definition) { d.GroupBy = []string{"model", "region", "model"} },
			[]string{`group_by[2]: repeats "model" (group_by[0]); name each property once`}},
		{"filter too many", func(d *meter.Definition) { d.Filter = manyFilters },
			[]string{"filter: must have at most 32 properties, got 33 (an event has at most 32)"}},
		{"filter empty key", func(d *meter.Definition) { d.Filter = map[string]string{"": "x"} },
			[]string{"filter: keys must not be empty"}},
		{"filter key too long", func(d *meter.Definition) { d.Filter = map[string]string{long: "x"} },
			[]string{"filter.kkkkkkkkkkkkkkkk...: key must be at most 128 bytes"}},
		{"filter key control character", func(d *meter.Definition) { d.Filter = map[string]string{"a\x00": "x"} },
			[]string{`filter: key "a\x00" must not contain control characters (found U+0000)`}},
		{"filter value too long", func(d *meter.Definition) { d.Filter = map[string]string{"region": strings.Repeat("v", 1025)} },
			[]string{"filter.region: must be at most 1024 bytes, got 1025"}},
		{"filter value C1 control", func(d *meter.Definition) { d.Filter = map[string]string{"region": "e\u0085u"} },
			[]string{"filter.region: must not contain control characters (found U+0085)"}},
		{"filter errors in key order", func(d *meter.Definition) { d.Filter = map[string]string{"b": "\x7f", "a": "\xfe"} },
			[]string{"filter.a: must be valid UTF-8", "filter.b: must not contain control characters (found U+007F)"}},
		{"unique_count without property", func(d *meter.Definition) { d.Aggregation = meter.UniqueCount },
			[]string{"property: is required for unique_count: the property whose distinct values are counted"}},
		{"property on sum", func(d *meter.Definition) { d.Property = "user" },
			[]string{"property: must be null unless aggregation is unique_count"}},
		{"property invalid", func(d *meter.Definition) { d.Aggregation, d.Property = meter.UniqueCount, "us\ter" },
			[]string{"property: must not contain control characters (found U+0009)"}},
		{"property grouped by", func(d *meter.Definition) {
			d.Aggregation, d.Property, d.GroupBy = meter.UniqueCount, "user", []string{"model", "user"}
		}, []string{"property: must not be grouped by (group_by[1]): each group would count at most 1 distinct value"}},
		{"property in filter", func(d *meter.Definition) {
			d.Aggregation, d.Property = meter.UniqueCount, "region"
		}, []string{"property: must not be in filter: the filter fixes its value, so the count is at most 1"}},
		{"description too long", func(d *meter.Definition) { d.Description = strings.Repeat("d", 1025) },
			[]string{"description: must be at most 1024 bytes, got 1025"}},
		{"description newline", func(d *meter.Definition) { d.Description = "a\nb" },
			[]string{"description: must not contain control characters (found U+000A)"}},
		{"every field wrong at once", func(d *meter.Definition) {
			*d = meter.Definition{Name: ".", Aggregation: "median", GroupBy: []string{"a", "a"},
				Filter: map[string]string{"": ""}, Property: "p", Description: "\x01"}
		}, []string{
			`name: must not be "."`,
			"metric: is required (1-128 characters of A-Z a-z 0-9 . _ : -)",
			`aggregation: must be one of sum, count, max, latest, unique_count, got "median"`,
			`group_by[1]: repeats "a" (group_by[0]); name each property once`,
			"filter: keys must not be empty",
			"property: must be null unless aggregation is unique_count",
			"description: must not contain control characters (found U+0001)",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := validDefinition()
			tt.mutate(&d)
			var got []string
			for _, fe := range d.Validate() {
				if fe.Index != 0 {
					t.Errorf("index = %d, want 0", fe.Index)
				}
				got = append(got, fe.Field+": "+fe.Message)
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Fatalf("Validate() =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

// TestChecksAgreeWithEvents: a meter's name and metric follow the rules of
// an event's metric, and its filter the rules of an event's properties,
// with the same messages, as events.Validator states them.
func TestChecksAgreeWithEvents(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 21, 19, 0, 0, 0, time.UTC)
	v := events.Validator{Now: func() time.Time { return now }}
	base := events.Event{ID: "e1", Tenant: "acme", Metric: "tokens", Value: 1, Time: now}
	names := []string{"", "a", ".", "..", "...", "a b", "tökens", "A-z_0.9:x", strings.Repeat("m", 128), strings.Repeat("m", 129), "a\x00", "a/b"}
	for _, name := range names {
		e := base
		e.Metric = name
		want := messages(v.Validate(0, e), "metric", "")
		d := meter.Implicit(name)
		if got := messages(d.Validate(), "metric", ""); got != want {
			t.Errorf("metric %q: meter says %q, events say %q", name, got, want)
		}
		if got := messages(d.Validate(), "name", "metric"); got != want {
			t.Errorf("name %q: meter says %q, events say %q", name, got, want)
		}
	}
	props := []map[string]string{
		{"": "x"}, {"k": ""}, {"k": "\x00"}, {"k": "\u009f"}, {"k": "\x7f"}, {"k": "\xc3"}, {"\xc3": "v"},
		{"a\nb": "v"}, {strings.Repeat("k", 128): strings.Repeat("v", 1024)},
		{strings.Repeat("k", 129): "v"}, {"k": strings.Repeat("v", 1025)}, {"b": "\x01", "a": "\x02", "c": "ok"},
	}
	for _, p := range props {
		e := base
		e.Properties = p
		want := messages(v.Validate(0, e), "properties", "filter")
		d := validDefinition()
		d.Filter = p
		if got := messages(d.Validate(), "filter", "filter"); got != want {
			t.Errorf("filter %q: meter says %q, events say %q", p, got, want)
		}
	}
}

// messages joins the errors of field and its sub-fields, renaming the
// prefix field to as (when as is set).
func messages(errs []events.FieldError, field, as string) string {
	var out []string
	for _, fe := range errs {
		if fe.Field != field && !strings.HasPrefix(fe.Field, field+".") {
			continue
		}
		f := fe.Field
		if as != "" {
			f = as + strings.TrimPrefix(f, field)
		}
		out = append(out, f+": "+fe.Message)
	}
	return strings.Join(out, "; ")
}

func TestDefinitionJSON(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		d    meter.Definition
		want string
	}{
		{"implicit: every field present", meter.Implicit("api_calls"),
			`{"name":"api_calls","metric":"api_calls","aggregation":"sum","group_by":[],"filter":{},"property":null,"description":""}`},
		{"full", meter.Definition{Name: "users", Metric: "api_calls", Aggregation: meter.UniqueCount,
			GroupBy: []string{"plan", "region"}, Filter: map[string]string{"z": "1", "a": "<&>"}, Property: "user", Description: "Distinct users"},
			`{"name":"users","metric":"api_calls","aggregation":"unique_count","group_by":["plan","region"],"filter":{"a":"<&>","z":"1"},"property":"user","description":"Distinct users"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b, err := tt.d.MarshalJSON() // as httpjson.Write sends it: no HTML escaping
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tt.want {
				t.Fatalf("json.Marshal =\n%s\nwant\n%s", b, tt.want)
			}
			var back meter.Definition
			if err := json.Unmarshal(b, &back); err != nil {
				t.Fatal(err)
			}
			if again, _ := back.MarshalJSON(); string(again) != tt.want {
				t.Fatalf("round trip = %s", again)
			}
		})
	}
	// On input, absent and null mean none.
	var d meter.Definition
	if err := json.Unmarshal([]byte(`{"metric":"tokens","aggregation":"sum","group_by":null,"filter":null,"property":null}`), &d); err != nil {
		t.Fatal(err)
	}
	if d.GroupBy != nil || d.Filter != nil || d.Property != "" {
		t.Fatalf("nulls decoded as %+v", d)
	}
}

func TestIsImplicit(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		d    meter.Definition
		want bool
	}{
		{meter.Implicit("tokens"), true},
		{meter.Definition{Name: "tokens", Metric: "tokens", Aggregation: meter.Sum, Description: "free text"}, true},
		{meter.Definition{Name: "tokens_sum", Metric: "tokens", Aggregation: meter.Sum}, false},
		{meter.Definition{Name: "tokens", Metric: "tokens", Aggregation: meter.Max}, false},
		{meter.Definition{Name: "tokens", Metric: "tokens", Aggregation: meter.Sum, GroupBy: []string{"model"}}, false},
		{meter.Definition{Name: "tokens", Metric: "tokens", Aggregation: meter.Sum, Filter: map[string]string{"region": "eu"}}, false},
	} {
		if got := tc.d.IsImplicit(); got != tc.want {
			t.Errorf("%+v.IsImplicit() = %v, want %v", tc.d, got, tc.want)
		}
	}
}
