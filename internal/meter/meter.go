// Package meter is the model of a meter: what it aggregates (sum, count,
// max, latest or unique count of one metric's events), which events it
// takes (a filter on properties) and how it splits them (group_by
// properties), with the validation of a definition, the group of an
// event and that group's storage key. It reads no database and no clock.
//
// Every metric has an implicit meter of the same name (Implicit: sum, no
// groups, no filter) whose only group key is the empty string, so usage
// kept before meters existed is that meter's usage.
//
// Invariant: a group's key is its group_by values, in group_by order, as a
// canonical JSON array (a missing property is null; strings are encoded
// exactly as encoding/json encodes them without HTML escaping), so two
// groups of one meter whose values are valid UTF-8 (as validated events'
// are) have equal keys if and only if they are equal, and ParseGroupKey
// gives back the group Key was made from (TestGroupKeyIsJSON,
// TestGroupAndKey, TestParseGroupKeyRefuses, FuzzGroupKey).
package meter

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/events/fieldcheck"
)

// Aggregation is how a meter folds the events it takes into one number
// per window and group.
type Aggregation string

// The aggregations.
const (
	// Sum adds the events' values.
	Sum Aggregation = "sum"
	// Count counts the events.
	Count Aggregation = "count"
	// Max keeps the greatest value.
	Max Aggregation = "max"
	// Latest keeps the value of the event with the greatest time; of
	// events with equal times, the greatest id wins.
	Latest Aggregation = "latest"
	// UniqueCount counts the distinct values of the string property named
	// by the definition's Property, exactly.
	UniqueCount Aggregation = "unique_count"
)

// Aggregations lists every aggregation, in the order messages name them.
var Aggregations = []Aggregation{Sum, Count, Max, Latest, UniqueCount}

// Valid reports whether a is one of Aggregations.
func (a Aggregation) Valid() bool {
	switch a {
	case Sum, Count, Max, Latest, UniqueCount:
		return true
	}
	return false
}

// Limits of a definition.
const (
	// MaxGroupBy is the most properties a meter may group by.
	MaxGroupBy = 5
	// MaxFilter is the most property pairs a filter may hold: an event
	// has at most as many properties, so a longer filter matches nothing.
	MaxFilter = events.MaxProperties
	// MaxDescriptionLen is the longest description, in bytes.
	MaxDescriptionLen = 1024
)

// Definition is one meter. Its JSON form always has every field:
//
//	{"name":"tokens_by_model","metric":"tokens","aggregation":"sum","group_by":["model"],
//	 "filter":{"region":"eu"},"property":null,"description":"..."}
//
// group_by is [] and filter {} when there are none, and property is null
// unless it is set. On input, an absent or null group_by, filter or
// property means none (so does "property": ""). Name is the meter's name
// in the URL (/v1/admin/meters/{meter}); the admin API takes it from the
// path.
type Definition struct {
	// Name names the meter: 1-128 characters of A-Z a-z 0-9 . _ : -,
	// exactly the rules of a metric name.
	Name string `json:"name"`
	// Metric is the metric whose events the meter takes.
	Metric string `json:"metric"`
	// Aggregation is how the events' values are folded.
	Aggregation Aggregation `json:"aggregation"`
	// GroupBy names up to MaxGroupBy event properties; usage is kept per
	// combination of their values, a missing property being a value of
	// its own (null).
	GroupBy []string `json:"group_by"`
	// Filter holds property = value pairs an event must all carry, with
	// exactly these values, to count in this meter. A pair with an empty
	// value matches an empty property, not a missing one.
	Filter map[string]string `json:"filter"`
	// Property is the property whose distinct values UniqueCount counts;
	// set for UniqueCount and only for it.
	Property string `json:"property"`
	// Description is free text for people: at most 1024 bytes of UTF-8
	// without control characters.
	Description string `json:"description"`
}

// Implicit returns the meter every metric has: named as the metric, the
// sum of its values, no groups, no filter. Its only group key is "".
func Implicit(metric string) Definition {
	return Definition{Name: metric, Metric: metric, Aggregation: Sum}
}

// IsImplicit reports whether d is the implicit meter of its metric: named
// as it, the sum of its values, no groups, no filter, no property. Its
// description is free. Counting such a definition besides the implicit
// meter would count its events twice in the same windows.
func (d Definition) IsImplicit() bool {
	return d.Name == d.Metric && d.Aggregation == Sum && len(d.GroupBy) == 0 && len(d.Filter) == 0 && d.Property == ""
}

// definitionJSON is Definition as written: property a pointer so that an
// empty one is null.
type definitionJSON struct {
	Name        string            `json:"name"`
	Metric      string            `json:"metric"`
	Aggregation Aggregation       `json:"aggregation"`
	GroupBy     []string          `json:"group_by"`
	Filter      map[string]string `json:"filter"`
	Property    *string           `json:"property"`
	Description string            `json:"description"`
}

// MarshalJSON writes every field: group_by [] and filter {} when empty,
// property null when empty, filter keys sorted, no HTML escaping.
func (d Definition) MarshalJSON() ([]byte, error) {
	out := definitionJSON{
		Name: d.Name, Metric: d.Metric, Aggregation: d.Aggregation,
		GroupBy: d.GroupBy, Filter: d.Filter, Description: d.Description,
	}
	if out.GroupBy == nil {
		out.GroupBy = []string{}
	}
	if out.Filter == nil {
		out.Filter = map[string]string{}
	}
	if d.Property != "" {
		out.Property = &d.Property
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(out); err != nil {
		return nil, fmt.Errorf("encoding meter %q: %w", d.Name, err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// Validate returns every field error of d, in the order of its fields, or
// nil. Index is 0 in each; Field names the field as JSON spells it
// ("group_by[1]", "filter.region").
func (d Definition) Validate() []events.FieldError {
	var errs []events.FieldError
	add := func(field, format string, args ...any) {
		errs = append(errs, events.FieldError{Field: field, Message: fmt.Sprintf(format, args...)})
	}
	if msg := fieldcheck.Name(d.Name); msg != "" {
		add("name", "%s", msg)
	}
	if msg := fieldcheck.Name(d.Metric); msg != "" {
		add("metric", "%s", msg)
	}
	switch {
	case d.Aggregation == "":
		add("aggregation", "is required (one of %s)", aggregationList())
	case !d.Aggregation.Valid():
		add("aggregation", "must be one of %s, got %q", aggregationList(), string(d.Aggregation))
	}
	if len(d.GroupBy) > MaxGroupBy {
		add("group_by", "must name at most %d properties, got %d", MaxGroupBy, len(d.GroupBy))
	}
	for i, k := range d.GroupBy {
		field := fmt.Sprintf("group_by[%d]", i)
		if msg := checkPropertyKey(k); msg != "" {
			add(field, "%s", msg)
			continue
		}
		for j := range i {
			if d.GroupBy[j] == k {
				add(field, "repeats %q (group_by[%d]); name each property once", k, j)
				break
			}
		}
	}
	if len(d.Filter) > MaxFilter {
		add("filter", "must have at most %d properties, got %d (an event has at most %d)", MaxFilter, len(d.Filter), events.MaxProperties)
	}
	// The filter's pairs are checked as events' properties are, with the
	// same messages.
	for _, k := range slices.Sorted(maps.Keys(d.Filter)) {
		if field, msg := fieldcheck.Property("filter", k, d.Filter[k]); msg != "" {
			add(field, "%s", msg)
		}
	}
	switch {
	case d.Aggregation == UniqueCount && d.Property == "":
		add("property", "is required for unique_count: the property whose distinct values are counted")
	case d.Aggregation != UniqueCount && d.Property != "":
		add("property", "must be null unless aggregation is unique_count")
	case d.Property != "":
		if msg := checkPropertyKey(d.Property); msg != "" {
			add("property", "%s", msg)
		} else if i := indexOf(d.GroupBy, d.Property); i >= 0 {
			add("property", "must not be grouped by (group_by[%d]): each group would count at most 1 distinct value", i)
		} else if _, ok := d.Filter[d.Property]; ok {
			add("property", "must not be in filter: the filter fixes its value, so the count is at most 1")
		}
	}
	if len(d.Description) > MaxDescriptionLen {
		add("description", "must be at most %d bytes, got %d", MaxDescriptionLen, len(d.Description))
	} else if msg := fieldcheck.Text(d.Description); msg != "" {
		add("description", "%s", msg)
	}
	return errs
}

// aggregationList is "sum, count, max, latest, unique_count".
func aggregationList() string {
	names := make([]string, len(Aggregations))
	for i, a := range Aggregations {
		names[i] = string(a)
	}
	return strings.Join(names, ", ")
}

func indexOf(list []string, s string) int {
	for i, v := range list {
		if v == s {
			return i
		}
	}
	return -1
}

// Matches reports whether e counts in this meter: its metric is the
// meter's and it carries every filter pair with exactly that value.
func (d Definition) Matches(e events.Event) bool {
	if e.Metric != d.Metric {
		return false
	}
	for k, want := range d.Filter {
		if got, ok := e.Properties[k]; !ok || got != want {
			return false
		}
	}
	return true
}

// Contribution is what one event adds to a window of a meter, for any
// aggregation: the aggregator folds Value (sum adds it, max keeps the
// greatest, latest keeps the one of the Later contribution, count adds
// it: 1) or, for unique_count, the Distinct value.
type Contribution struct {
	// Aggregation is the meter's.
	Aggregation Aggregation
	// Value is the event's value for sum, max and latest, 1 for count and
	// 0 for unique_count.
	Value int64
	// Time and ID order contributions for latest (see Later).
	Time time.Time
	ID   string
	// Distinct is the value of the unique_count property, when HasDistinct.
	// An event without that property adds no distinct value (as SQL's
	// COUNT(DISTINCT) ignores NULL), though it still counts as an event.
	Distinct    string
	HasDistinct bool
}

// Contribution returns what e adds to this meter's window. It does not
// check Matches.
func (d Definition) Contribution(e events.Event) Contribution {
	c := Contribution{Aggregation: d.Aggregation, Time: e.Time, ID: e.ID}
	switch d.Aggregation {
	case Count:
		c.Value = 1
	case UniqueCount:
		c.Distinct, c.HasDistinct = e.Properties[d.Property]
	default:
		c.Value = e.Value
	}
	return c
}

// Later reports whether c supersedes o for latest: a greater time, or an
// equal time (to the nanosecond) and a greater id.
func (c Contribution) Later(o Contribution) bool {
	if n := c.Time.Compare(o.Time); n != 0 {
		return n > 0
	}
	return c.ID > o.ID
}
