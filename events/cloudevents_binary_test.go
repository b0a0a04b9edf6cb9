package events_test

import (
	"errors"
	"fmt"
	"maps"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
)

// binaryHeaders are the headers the official SDKs send for one event in
// HTTP binary content mode, canonical as a server sees them.
func binaryHeaders() http.Header {
	return http.Header{
		"Ce-Specversion": {"1.0"},
		"Ce-Id":          {"e1"},
		"Ce-Source":      {"svc"},
		"Ce-Type":        {"api_calls"},
		"Ce-Subject":     {"acme"},
		"Ce-Time":        {"2026-11-21T18:59:00Z"},
		"Content-Type":   {"application/json"},
	}
}

const binaryData = `{"value":1,"region":"eu"}`

func withHeaders(set map[string][]string, del ...string) http.Header {
	h := binaryHeaders()
	for _, k := range del {
		delete(h, k)
	}
	maps.Copy(h, set)
	return h
}

func binaryWant() events.Event {
	return events.Event{ID: "e1", Tenant: "acme", Metric: "api_calls", Value: 1,
		Time: time.Date(2026, 11, 21, 18, 59, 0, 0, time.UTC), Source: "svc", Properties: map[string]string{"region": "eu"}}
}

func TestDecodeCloudEventBinary(t *testing.T) {
	t.Parallel()
	want := binaryWant()
	edit := func(f func(*events.Event)) events.Event {
		e := binaryWant()
		f(&e)
		return e
	}
	tests := []struct {
		name   string
		header http.Header
		body   string
		want   events.Event
	}{
		{"as the SDKs send it", binaryHeaders(), binaryData, want},
		{"charset parameter", withHeaders(map[string][]string{"Content-Type": {"application/json; charset=utf-8"}}), binaryData, want},
		{"no Content-Type means JSON", withHeaders(nil, "Content-Type"), binaryData, want},
		{"header names in any case", http.Header{"ce-specversion": {"1.0"}, "CE-ID": {"e1"}, "ce-Source": {"svc"}, "ce-type": {"api_calls"},
			"ce-subject": {"acme"}, "ce-time": {"2026-11-21T18:59:00Z"}, "content-type": {"application/json"}}, binaryData, want},
		{"extensions and dataschema ignored", withHeaders(map[string][]string{"Ce-Traceparent": {"00-abc"}, "Ce-Dataschema": {"https://example.com/s"}}), binaryData, want},
		{"percent-encoded values", withHeaders(map[string][]string{"Ce-Id": {"order%20%2542%22"}, "Ce-Source": {"Euro%20%E2%82%AC%20%f0%9f%98%80"}}), binaryData,
			edit(func(e *events.Event) { e.ID = `order %42"`; e.Source = "Euro € 😀" })},
		{"needlessly percent-encoded", withHeaders(map[string][]string{"Ce-Subject": {"%61cme"}}), binaryData, want},
		{"double-quoted values", withHeaders(map[string][]string{"Ce-Source": {`"my svc \"x\""`}}), binaryData,
			edit(func(e *events.Event) { e.Source = `my svc "x"` })},
		{"time with offset and fraction", withHeaders(map[string][]string{"Ce-Time": {"2026-11-21T19:59:00.5+01:00"}}), binaryData,
			edit(func(e *events.Event) { e.Time = e.Time.Add(500 * time.Millisecond) })},
		{"no properties", binaryHeaders(), ` {"value": 7} `, edit(func(e *events.Event) { e.Value = 7; e.Properties = nil })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := decoder().DecodeCloudEventBinary(tt.header, []byte(tt.body))
			if err != nil {
				t.Fatalf("DecodeCloudEventBinary: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
			// The same event in structured mode decodes to the same bytes.
			ce, err := got.AppendCloudEvent(nil)
			if err != nil {
				t.Fatal(err)
			}
			structured, err := decoder().Decode(events.MediaCloudEvent, ce)
			if err != nil || string(structured[0].AppendJSON(nil)) != string(got.AppendJSON(nil)) {
				t.Fatalf("structured twin %s → %v, %v", ce, structured, err)
			}
		})
	}
}

func TestDecodeCloudEventBinaryFieldErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		header http.Header
		body   string
		want   []string // fields, all at index 0
	}{
		{"unsupported specversion", withHeaders(map[string][]string{"Ce-Specversion": {"0.3"}}), binaryData, []string{"ce-specversion"}},
		{"no attributes at all", http.Header{"Content-Type": {"application/json"}}, binaryData,
			[]string{"ce-specversion", "ce-source", "ce-id", "ce-subject", "ce-type", "ce-time"}},
		{"missing subject", withHeaders(nil, "Ce-Subject"), binaryData, []string{"ce-subject"}},
		{"bad tenant", withHeaders(map[string][]string{"Ce-Subject": {"ac%20me"}}), binaryData, []string{"ce-subject"}},
		{"bad time", withHeaders(map[string][]string{"Ce-Time": {"yesterday"}}), binaryData, []string{"ce-time"}},
		{"time beyond the horizon", withHeaders(map[string][]string{"Ce-Time": {"2020-01-01T00:00:00Z"}}), binaryData, []string{"ce-time"}},
		{"id too long", withHeaders(map[string][]string{"Ce-Id": {strings.Repeat("x", 129)}}), binaryData, []string{"ce-id"}},
		{"id not ASCII", withHeaders(map[string][]string{"Ce-Id": {"caf%C3%A9"}}), binaryData, []string{"ce-id"}},
		{"source too long", withHeaders(map[string][]string{"Ce-Source": {strings.Repeat("s", 257)}}), binaryData, []string{"ce-source"}},
		{"attribute sent twice", withHeaders(map[string][]string{"Ce-Subject": {"acme", "globex"}}), binaryData, []string{"ce-subject"}},
		{"specversion sent twice", withHeaders(map[string][]string{"Ce-Specversion": {"1.0", "1.0"}}), binaryData, []string{"ce-specversion"}},
		{"Content-Type sent twice", withHeaders(map[string][]string{"Content-Type": {"application/json", "application/json"}}), binaryData, []string{"Content-Type"}},
		{"ce-datacontenttype is not for binary mode", withHeaders(map[string][]string{"Ce-Datacontenttype": {"application/json"}}), binaryData, []string{"ce-datacontenttype"}},
		{"stray percent", withHeaders(map[string][]string{"Ce-Id": {"50%off"}}), binaryData, []string{"ce-id"}},
		{"truncated percent", withHeaders(map[string][]string{"Ce-Source": {"svc%4"}}), binaryData, []string{"ce-source"}},
		{"overlong UTF-8", withHeaders(map[string][]string{"Ce-Source": {"a%C0%A0b"}}), binaryData, []string{"ce-source"}},
		{"raw bytes that are not UTF-8", withHeaders(map[string][]string{"Ce-Source": {"a\xffb"}}), binaryData, []string{"ce-source"}},
		{"unterminated quote", withHeaders(map[string][]string{"Ce-Source": {`"svc`}}), binaryData, []string{"ce-source"}},
		{"fraction", binaryHeaders(), `{"value":1.5}`, []string{"data.value"}},
		{"missing value", binaryHeaders(), `{"region":"eu"}`, []string{"data.value"}},
		{"negative value", binaryHeaders(), `{"value":-1}`, []string{"data.value"}},
		{"value as string", binaryHeaders(), `{"value":"1"}`, []string{"data.value"}},
		{"non-string member", binaryHeaders(), `{"value":1,"n":2,"o":{}}`, []string{"data.n", "data.o"}},
		{"null member", binaryHeaders(), `{"value":1,"k":null}`, []string{"data.k"}},
		{"value twice", binaryHeaders(), `{"value":1,"value":900}`, []string{"data.value"}},
		{"member twice", binaryHeaders(), `{"value":1,"id":"a","id":"b"}`, []string{"data.id"}},
		{"empty body", binaryHeaders(), "", []string{"data"}},
		{"null body", binaryHeaders(), "null", []string{"data"}},
		{"body not JSON", binaryHeaders(), "{nope", []string{"data"}},
		{"body an array", binaryHeaders(), `[{"value":1,"value":2}]`, []string{"data"}},
		{"trailing garbage", binaryHeaders(), binaryData + "x", []string{"data"}},
		{"too many properties", binaryHeaders(), `{"value":1` + manyMembers(33) + `}`, []string{"data"}},
		{"property too long", binaryHeaders(), `{"value":1,"k":"` + strings.Repeat("v", 1025) + `"}`, []string{"data.k"}},
		{"everything wrong at once", withHeaders(map[string][]string{"Ce-Specversion": {"2.0"}, "Ce-Type": {"a b"}}, "Ce-Source"), `{"value":0.5}`,
			[]string{"ce-specversion", "ce-source", "data.value", "ce-type"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := decoder().DecodeCloudEventBinary(tt.header, []byte(tt.body))
			ve, ok := events.AsValidationError(err)
			if !ok {
				t.Fatalf("err = %v, want *ValidationError", err)
			}
			var got []string
			for _, fe := range ve.Errors {
				if fe.Index != 0 || fe.Message == "" {
					t.Errorf("error %+v: want index 0 and a message", fe)
				}
				got = append(got, fe.Field)
			}
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Fatalf("fields = %v, want %v\n%v", got, tt.want, ve)
			}
		})
	}
}

func manyMembers(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, `,"k%d":"v"`, i)
	}
	return b.String()
}

func TestDecodeCloudEventBinaryOtherErrors(t *testing.T) {
	t.Parallel()
	for _, ct := range []string{"text/plain", "application/xml", "application/x-ndjson", "application/octet-stream",
		"application/cloudevents+json", "///", "application/json;;"} {
		_, err := decoder().DecodeCloudEventBinary(withHeaders(map[string][]string{"Content-Type": {ct}}), []byte(binaryData))
		if !errors.Is(err, events.ErrUnsupportedMediaType) || !strings.Contains(err.Error(), "binary content mode") {
			t.Errorf("Content-Type %q: err = %v, want ErrUnsupportedMediaType naming binary mode", ct, err)
		}
	}
	_, err := decoder().DecodeCloudEventBinary(binaryHeaders(), []byte(`{"value":1,"k":"`+"\xff"+`"}`))
	var be *events.BodyError
	if !errors.As(err, &be) || be.Code != events.CodeInvalidUTF8 {
		t.Errorf("body not UTF-8: err = %v, want BodyError %s", err, events.CodeInvalidUTF8)
	}
}

func TestDecodeHTTPChoosesTheContentMode(t *testing.T) {
	t.Parallel()
	want := binaryWant()
	structured := `{"specversion":"1.0","id":"e1","source":"svc","type":"api_calls","subject":"acme","time":"2026-11-21T18:59:00Z","data":{"value":1,"region":"eu"}}`
	plain := events.Event{ID: "e1", Tenant: "acme", Metric: "api_calls", Value: 1, Time: want.Time}
	tests := []struct {
		name   string
		header http.Header
		body   string
		binary bool
		want   events.Event
	}{
		{"ce-specversion and JSON: binary", binaryHeaders(), binaryData, true, want},
		{"ce-specversion, no Content-Type: binary", withHeaders(nil, "Content-Type"), binaryData, true, want},
		{"structured with attributes repeated as headers", withHeaders(map[string][]string{"Content-Type": {"application/cloudevents+json; charset=utf-8"}}), structured, false, want},
		{"batch with a ce-specversion header", withHeaders(map[string][]string{"Content-Type": {events.MediaCloudEventBatch}}), "[" + structured + "]", false, want},
		{"plain event", http.Header{"Content-Type": {"application/json"}}, okEvent, false, plain},
		{"plain event, lower-case header", http.Header{"content-type": {"application/json"}}, okEvent, false, plain},
		{"no headers", nil, okEvent, false, plain},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := events.IsCloudEventBinary(tt.header); got != tt.binary {
				t.Errorf("IsCloudEventBinary = %v, want %v", got, tt.binary)
			}
			got, err := decoder().DecodeHTTP(tt.header, []byte(tt.body))
			if err != nil {
				t.Fatalf("DecodeHTTP: %v", err)
			}
			if len(got) != 1 || !reflect.DeepEqual(got[0], tt.want) {
				t.Fatalf("got %+v, want [%+v]", got, tt.want)
			}
		})
	}
	if _, err := decoder().DecodeHTTP(withHeaders(map[string][]string{"Content-Type": {"text/plain"}}), []byte(binaryData)); !errors.Is(err, events.ErrUnsupportedMediaType) {
		t.Errorf("binary mode with text/plain data: err = %v, want ErrUnsupportedMediaType", err)
	}
}

// TestCloudEventDataThatIsNotJSONIsRefused: data that is not JSON is
// refused by the pre-scan with its syntax error, in both content modes,
// and data that is JSON but not an object is named by its kind. The data
// decoder itself only ever sees JSON the pre-scan accepted.
func TestCloudEventDataThatIsNotJSONIsRefused(t *testing.T) {
	t.Parallel()
	binary := []struct{ body, want string }{
		{`{nope`, `must be a JSON object with an integer "value": unexpected 'n'; expected a string key or the end of the object (at byte 1)`},
		{`{"value":1`, `must be a JSON object with an integer "value": the JSON ends too early; expected , or the end of an object or array (in value, at byte 10)`},
		{binaryData + `x`, `must be a JSON object with an integer "value": unexpected 'x'; expected the end of the JSON value (at byte 25)`},
		{`7`, `must be an object with an integer "value", got a number`},
		{`"x"`, `must be an object with an integer "value", got a string`},
		{`[{"value":1}]`, `must be an object with an integer "value", got an array`},
	}
	for _, tt := range binary {
		_, err := decoder().DecodeCloudEventBinary(binaryHeaders(), []byte(tt.body))
		ve, ok := events.AsValidationError(err)
		if !ok || len(ve.Errors) != 1 || ve.Errors[0].Field != "data" || ve.Errors[0].Message != tt.want {
			t.Errorf("binary data %s: err = %v, want one error of data: %s", tt.body, err, tt.want)
		}
	}
	structured := `{"specversion":"1.0","id":"e1","source":"svc","type":"api_calls","subject":"acme","time":"2026-11-21T18:59:00Z","data":`
	_, err := decoder().Decode(events.MediaCloudEvent, []byte(structured+`{nope}`))
	ve, ok := events.AsValidationError(err)
	if !ok || len(ve.Errors) != 1 || ve.Errors[0].Field != "" || !strings.HasPrefix(ve.Errors[0].Message, "must be a CloudEvents 1.0 JSON object: unexpected 'n'") {
		t.Errorf("structured data not JSON: err = %v, want the event refused as not JSON", err)
	}
	_, err = decoder().Decode(events.MediaCloudEvent, []byte(structured+`7}`))
	ve, ok = events.AsValidationError(err)
	if !ok || len(ve.Errors) != 1 || ve.Errors[0].Field != "data" || ve.Errors[0].Message != `must be an object with an integer "value", got a number` {
		t.Errorf("structured data a number: err = %v, want one error of data", err)
	}
}
