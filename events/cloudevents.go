package events

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/usagemeter/metering/events/jsonstring"
)

// CloudEvents 1.0 mapping: id→ID, subject→Tenant, type→Metric, time→Time,
// source→Source, data.value→Value, every other data field (a string) →
// Properties. Extension attributes are accepted and ignored.

// DefaultCloudEventSource is the CloudEvents source given to an event that
// has none, since CloudEvents requires one.
const DefaultCloudEventSource = "unknown"

// cloudEventField names an Event field as the CloudEvents attribute it came from.
func cloudEventField(field string) string {
	switch {
	case field == "tenant":
		return "subject"
	case field == "metric":
		return "type"
	case field == "value":
		return "data.value"
	case strings.HasPrefix(field, "properties."):
		return "data." + strings.TrimPrefix(field, "properties.")
	case field == "properties":
		return "data"
	}
	return field
}

func decodeCloudEvent(raw []byte, index int) (Event, []FieldError) {
	errs := fieldErrors{index: index}
	var attrs map[string]json.RawMessage
	if err := json.Unmarshal(raw, &attrs); err != nil {
		errs.add("", "must be a CloudEvents 1.0 JSON object: %s", jsonErrorText(err))
		return Event{}, errs.list
	}
	if v := rawString(&errs, attrs, "specversion"); v != "1.0" {
		errs.add("specversion", "must be \"1.0\", got %q", v)
	}
	e := Event{ID: rawString(&errs, attrs, "id"), Tenant: rawString(&errs, attrs, "subject"),
		Metric: rawString(&errs, attrs, "type"), Source: rawString(&errs, attrs, "source")}
	if e.Source == "" {
		errs.add("source", "is required by CloudEvents 1.0")
	}
	if m, ok := attrs["datacontenttype"]; ok && string(m) != "null" {
		if ct := rawString(&errs, attrs, "datacontenttype"); !errs.has("datacontenttype") && ct != MediaJSON && !strings.HasPrefix(ct, MediaJSON+";") {
			errs.add("datacontenttype", "must be %s, got %q", MediaJSON, ct)
		}
	}
	if _, ok := attrs["data_base64"]; ok {
		errs.add("data_base64", "is not supported; send data as a JSON object")
	}
	if ts := rawString(&errs, attrs, "time"); ts != "" {
		t, msg := parseTime(ts)
		if msg != "" {
			errs.add("time", "%s", msg)
		}
		e.Time = t
	}
	decodeCloudEventData(&e, attrs["data"], &errs)
	return e, errs.list
}

// decodeCloudEventData decodes a CloudEvent's data, a JSON object, into
// e.Value (data.value) and e.Properties (every other member, which must be
// a string). It reports errors under the Event's own field names (value,
// properties.K, properties), which each content mode then renames to the
// attribute they came from.
//
// data has passed the pre-scan (it is the body in binary mode, a member of
// the body in structured mode), so it is valid JSON: jsonscan accepts
// exactly what json.Valid does (FuzzScan). When it does not unmarshal into
// an object, it is another JSON value.
func decodeCloudEventData(e *Event, data json.RawMessage, errs *fieldErrors) {
	data = bytes.TrimSpace(data)
	if len(data) == 0 || string(data) == "null" {
		errs.add("properties", "is required: an object with an integer \"value\"")
		return
	}
	var fields map[string]json.RawMessage
	if json.Unmarshal(data, &fields) != nil {
		errs.add("properties", "must be an object with an integer \"value\", got %s", jsonKind(data))
		return
	}
	v, msg := parseValue(fields["value"])
	if msg != "" {
		errs.add("value", "%s", msg)
	}
	e.Value = v
	for _, k := range sortedRawKeys(fields) {
		if k == "value" {
			continue
		}
		var s string
		if err := json.Unmarshal(fields[k], &s); err != nil || isNull(fields[k]) {
			errs.add("properties."+k, "must be a string (it becomes a property), got %s", jsonKind(fields[k]))
			continue
		}
		if e.Properties == nil {
			e.Properties = make(map[string]string, len(fields)-1)
		}
		e.Properties[k] = s
	}
}

// AppendCloudEvent appends e as a CloudEvents 1.0 structured-mode JSON
// object. An event without Source gets DefaultCloudEventSource. A property
// named "value" cannot be represented, since data.value is the event value.
func (e Event) AppendCloudEvent(dst []byte) ([]byte, error) {
	if _, ok := e.Properties["value"]; ok {
		return dst, fmt.Errorf("events: property %q collides with the CloudEvents data.value attribute", "value")
	}
	source := e.Source
	if source == "" {
		source = DefaultCloudEventSource
	}
	dst = append(dst, `{"specversion":"1.0","id":`...)
	dst = jsonstring.Wire.Append(dst, e.ID)
	dst = append(dst, `,"source":`...)
	dst = jsonstring.Wire.Append(dst, source)
	dst = append(dst, `,"type":`...)
	dst = jsonstring.Wire.Append(dst, e.Metric)
	dst = append(dst, `,"subject":`...)
	dst = jsonstring.Wire.Append(dst, e.Tenant)
	dst = append(dst, `,"time":"`...)
	dst = e.Time.UTC().AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","datacontenttype":"application/json","data":{"value":`...)
	dst = strconv.AppendInt(dst, e.Value, 10)
	for _, k := range sortedKeys(e.Properties) {
		dst = append(dst, ',')
		dst = jsonstring.Wire.Append(dst, k)
		dst = append(dst, ':')
		dst = jsonstring.Wire.Append(dst, e.Properties[k])
	}
	return append(dst, "}}"...), nil
}
