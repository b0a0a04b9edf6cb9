package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/usagemeter/metering/events/jsonscan"
	"github.com/usagemeter/metering/events/jsonstring"
)

// AppendJSON appends the canonical JSON encoding of e to dst: the fields in
// contract order, time in UTC RFC 3339 with only the significant fraction
// digits, source and properties omitted when empty, property keys sorted.
// The SDK and the ingest API both publish exactly these bytes.
func (e Event) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"id":`...)
	dst = jsonstring.Wire.Append(dst, e.ID)
	dst = append(dst, `,"tenant":`...)
	dst = jsonstring.Wire.Append(dst, e.Tenant)
	dst = append(dst, `,"metric":`...)
	dst = jsonstring.Wire.Append(dst, e.Metric)
	dst = append(dst, `,"value":`...)
	dst = strconv.AppendInt(dst, e.Value, 10)
	dst = append(dst, `,"time":"`...)
	dst = e.Time.UTC().AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, '"')
	if e.Source != "" {
		dst = append(dst, `,"source":`...)
		dst = jsonstring.Wire.Append(dst, e.Source)
	}
	if len(e.Properties) > 0 {
		dst = append(dst, `,"properties":{`...)
		for i, k := range sortedKeys(e.Properties) {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = jsonstring.Wire.Append(dst, k)
			dst = append(dst, ':')
			dst = jsonstring.Wire.Append(dst, e.Properties[k])
		}
		dst = append(dst, '}')
	}
	return append(dst, '}')
}

// AppendArray appends evs as a JSON array of canonical events: a request
// body for POST /v1/events.
func AppendArray(dst []byte, evs []Event) []byte {
	dst = append(dst, '[')
	for i, e := range evs {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = e.AppendJSON(dst)
	}
	return append(dst, ']')
}

// MarshalJSON returns the canonical encoding (see AppendJSON).
func (e Event) MarshalJSON() ([]byte, error) {
	return e.AppendJSON(make([]byte, 0, 192)), nil
}

// UnmarshalJSON decodes one event object strictly, by the Decoder's rules
// within the default Limits (a raw Kafka record is read exactly as an
// HTTP event): unknown fields (keys are matched exactly, after
// unescaping), keys sent twice (compared after unescaping and in any
// case), wrong types and non-integer values are errors, a
// *ValidationError; a body beyond the default Limits is a *BodyError. It
// does not check the contract's ranges; call Validate for that.
func (e *Event) UnmarshalJSON(b []byte) error {
	issues, err := jsonscan.Scan(b, jsonscan.Options{ItemKey: eventKey})
	if err != nil {
		if se, ok := scanSyntaxError(err); ok {
			return &ValidationError{Errors: []FieldError{{Message: "must be a JSON object: " + se.Error()}}}
		}
		return Decoder{}.scanError(err, false, "")
	}
	errs := issueErrors(issues, 0, "", eventKeys)
	ev, fe := decodeObject(b, 0, len(issues) > 0)
	if errs = append(errs, fe...); len(errs) > 0 {
		return &ValidationError{Errors: errs}
	}
	*e = ev
	return nil
}

func sortedKeys(m map[string]string) []string {
	if len(m) == 0 {
		return nil
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// wireEvent is the fast-path decoding target; a type error in it sends the
// object to decodeObject, which reports every field error.
type wireEvent struct {
	ID         string            `json:"id"`
	Tenant     string            `json:"tenant"`
	Metric     string            `json:"metric"`
	Value      json.RawMessage   `json:"value"`
	Time       string            `json:"time"`
	Source     string            `json:"source"`
	Properties map[string]string `json:"properties"`
}

func (w *wireEvent) event(index int) (Event, []FieldError) {
	e := Event{ID: w.ID, Tenant: w.Tenant, Metric: w.Metric, Source: w.Source, Properties: w.Properties}
	var errs []FieldError
	v, msg := parseValue(w.Value)
	if msg != "" {
		errs = append(errs, FieldError{Index: index, Field: "value", Message: msg})
	}
	e.Value = v
	t, msg := parseTime(w.Time)
	if msg != "" {
		errs = append(errs, FieldError{Index: index, Field: "time", Message: msg})
	}
	e.Time = t
	return e, errs
}

var eventFields = []string{"id", "tenant", "metric", "value", "time", "source", "properties"}

// decodeObject decodes one event object, already pre-scanned, reporting
// every problem rather than the first. Unknown and duplicate keys are the
// pre-scan's to report; exact (set when the pre-scan found any) skips the
// fast path, whose encoding/json matches field names in any case, so that
// only exact names are read.
func decodeObject(b []byte, index int, exact bool) (Event, []FieldError) {
	if !exact {
		// The pre-scan found only exact field names: encoding/json's
		// matching in any case cannot pick a wrong one.
		if w, ok := scanWireObject(b); ok {
			return w.event(index)
		}
		var w wireEvent
		if err := json.Unmarshal(b, &w); err == nil && !mayHaveNullProperty(b, w) {
			return w.event(index)
		}
	}
	return decodeFields(b, index)
}

// decodeFields decodes one event object field by field, by exact names,
// reporting every field of the wrong type.
func decodeFields(b []byte, index int) (Event, []FieldError) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return Event{}, []FieldError{{Index: index, Field: "", Message: "must be a JSON object: " + jsonErrorText(err)}}
	}
	errs := fieldErrors{index: index}
	var e Event
	e.ID = rawString(&errs, raw, "id")
	e.Tenant = rawString(&errs, raw, "tenant")
	e.Metric = rawString(&errs, raw, "metric")
	e.Source = rawString(&errs, raw, "source")
	v, msg := parseValue(raw["value"])
	errs.check("value", msg)
	e.Value = v
	ts := rawString(&errs, raw, "time")
	if _, ok := raw["time"]; ok && ts != "" {
		t, msg := parseTime(ts)
		errs.check("time", msg)
		e.Time = t
	}
	if m, ok := raw["properties"]; ok && string(m) != "null" {
		e.Properties = decodeProperties(&errs, m)
	}
	return e, errs.list
}

// rawString decodes member field of raw: a string, or "" when it is
// missing or null; anything else is an error.
func rawString(errs *fieldErrors, raw map[string]json.RawMessage, field string) string {
	m, ok := raw[field]
	if !ok || string(m) == "null" {
		return ""
	}
	var s string
	if err := json.Unmarshal(m, &s); err != nil {
		errs.add(field, "must be a string, got %s", jsonKind(m))
	}
	return s
}

// decodeProperties decodes an event's properties, m: an object of string
// values. A value of another type (null included) is an error of its
// property, in key order; nil is returned when m is not an object.
func decodeProperties(errs *fieldErrors, m json.RawMessage) map[string]string {
	var props map[string]json.RawMessage
	if err := json.Unmarshal(m, &props); err != nil {
		errs.add("properties", "must be an object of string values, got %s", jsonKind(m))
		return nil
	}
	out := make(map[string]string, len(props))
	for _, k := range sortedRawKeys(props) {
		var s string
		if err := json.Unmarshal(props[k], &s); err != nil || isNull(props[k]) {
			errs.add("properties."+k, "must be a string, got %s", jsonKind(props[k]))
			continue
		}
		out[k] = s
	}
	return out
}

// mayHaveNullProperty reports whether b, from which ws were decoded, may
// hold a property whose value is null: encoding/json leaves it "", so the
// field-by-field decoder must look and reject it.
func mayHaveNullProperty(b []byte, ws ...wireEvent) bool {
	for i := range ws {
		if len(ws[i].Properties) > 0 {
			return bytes.Contains(b, []byte("null"))
		}
	}
	return false
}

func isNull(m json.RawMessage) bool { return string(bytes.TrimSpace(m)) == "null" }

func sortedRawKeys(m map[string]json.RawMessage) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// parseValue accepts only a JSON integer literal in [0, MaxValue].
func parseValue(m json.RawMessage) (int64, string) {
	m = bytes.TrimSpace(m)
	if len(m) == 0 || string(m) == "null" {
		return 0, "is required (an integer count in the smallest unit)"
	}
	if m[0] == '-' {
		return 0, fmt.Sprintf("must be at least 0, got %s", m)
	}
	for _, c := range m {
		if c < '0' || c > '9' {
			if c == '.' || c == 'e' || c == 'E' {
				return 0, fmt.Sprintf("must be an integer, got %s; count in the smallest unit (bytes, milliseconds, tokens)", truncate(m))
			}
			return 0, "must be an integer, got " + jsonKind(m)
		}
	}
	v, err := strconv.ParseUint(string(m), 10, 64)
	if err != nil || v > uint64(MaxValue) {
		return 0, fmt.Sprintf("must be at most 2^53 (%d), got %s", MaxValue, truncate(m))
	}
	return int64(v), ""
}

func parseTime(s string) (time.Time, string) {
	if s == "" {
		return time.Time{}, ""
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Sprintf("must be an RFC 3339 timestamp such as 2026-11-21T19:00:00.123Z, got %q", truncate([]byte(s)))
	}
	return t.UTC(), ""
}

func truncate(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "..."
	}
	return string(b)
}

func jsonKind(m json.RawMessage) string {
	m = bytes.TrimSpace(m)
	if len(m) == 0 {
		return "nothing"
	}
	switch m[0] {
	case '"':
		return "a string"
	case '{':
		return "an object"
	case '[':
		return "an array"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	default:
		return "a number"
	}
}

func jsonErrorText(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("%s (at byte %d)", se.Error(), se.Offset)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("got a JSON %s", te.Value)
	}
	return err.Error()
}
