package events_test

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
)

const okEvent = `{"id":"e1","tenant":"acme","metric":"api_calls","value":1,"time":"2026-11-21T18:59:00Z"}`

func decoder() events.Decoder {
	return events.Decoder{Validator: events.Validator{Now: func() time.Time { return now }}}
}

func TestDecodeFormats(t *testing.T) {
	want := events.Event{ID: "e1", Tenant: "acme", Metric: "api_calls", Value: 1, Time: time.Date(2026, 11, 21, 18, 59, 0, 0, time.UTC)}
	ce := `{"specversion":"1.0","id":"e1","source":"svc","type":"api_calls","subject":"acme","time":"2026-11-21T18:59:00Z","data":{"value":1,"region":"eu"}}`
	wantCE := want
	wantCE.Source = "svc"
	wantCE.Properties = map[string]string{"region": "eu"}
	tests := []struct {
		name, contentType, body string
		want                    []events.Event
	}{
		{"object", "application/json", okEvent, []events.Event{want}},
		{"object, no content type", "", okEvent, []events.Event{want}},
		{"object with charset", "application/json; charset=utf-8", okEvent, []events.Event{want}},
		{"null source and properties", "", strings.TrimSuffix(okEvent, "}") + `,"source":null,"properties":null}`, []events.Event{want}},
		{"the word null in a property", "", "[" + strings.TrimSuffix(okEvent, "}") + `,"properties":{"k":"null"}}]`,
			[]events.Event{func() events.Event { e := want; e.Properties = map[string]string{"k": "null"}; return e }()}},
		{"array", "application/json", "[" + okEvent + "," + okEvent + "]", []events.Event{want, want}},
		{"ndjson with blank lines and CRLF", "application/x-ndjson", okEvent + "\r\n\n" + okEvent + "\n", []events.Event{want, want}},
		{"cloudevent", "application/cloudevents+json", ce, []events.Event{wantCE}},
		{"cloudevents batch", "application/cloudevents-batch+json", "[" + ce + "]", []events.Event{wantCE}},
		{"cloudevent extension attributes ignored", "application/cloudevents+json",
			strings.Replace(ce, `"specversion"`, `"traceparent":"00-abc","specversion"`, 1), []events.Event{wantCE}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decoder().Decode(tt.contentType, []byte(tt.body))
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Decode = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestDecodeBodyErrors(t *testing.T) {
	big := "[" + strings.TrimSuffix(strings.Repeat(okEvent+",", 1001), ",") + "]"
	tests := []struct {
		name, contentType, body, code string
	}{
		{"empty", "application/json", "  ", events.CodeEmpty},
		{"empty array", "application/json", "[]", events.CodeEmpty},
		{"not json", "application/json", "hello", events.CodeMalformed},
		{"truncated object", "application/json", `{"id":"a"`, events.CodeMalformed},
		{"truncated array", "application/json", `[` + okEvent, events.CodeMalformed},
		{"trailing garbage", "application/json", okEvent + "x", events.CodeMalformed},
		{"invalid utf-8", "application/json", "{\"id\":\"\xff\"}", events.CodeInvalidUTF8},
		{"over 1000 events", "application/json", big, events.CodeTooMany},
		{"over 1000 ndjson lines", "application/x-ndjson", strings.Repeat(okEvent+"\n", 1001), events.CodeTooMany},
		{"cloudevents batch not array", "application/cloudevents-batch+json", okEvent, events.CodeMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decoder().Decode(tt.contentType, []byte(tt.body))
			var be *events.BodyError
			if !errors.As(err, &be) {
				t.Fatalf("err = %v, want *BodyError", err)
			}
			if be.Code != tt.code {
				t.Fatalf("code = %s, want %s (%s)", be.Code, tt.code, be.Message)
			}
		})
	}
}

func TestDecodeUnsupportedMediaType(t *testing.T) {
	for _, ct := range []string{"text/plain", "application/xml", "multipart/form-data; boundary=x", "///"} {
		_, err := decoder().Decode(ct, []byte(okEvent))
		if !errors.Is(err, events.ErrUnsupportedMediaType) {
			t.Errorf("Decode(%q) err = %v, want ErrUnsupportedMediaType", ct, err)
		}
	}
}

func TestDecodeFieldErrors(t *testing.T) {
	tests := []struct {
		name, contentType, body string
		want                    []string // "index:field"
	}{
		{"fraction", "", `{"id":"a","tenant":"t","metric":"m","value":1.5,"time":"2026-11-21T18:59:00Z"}`, []string{"0:value"}},
		{"exponent", "", `{"id":"a","tenant":"t","metric":"m","value":1e3,"time":"2026-11-21T18:59:00Z"}`, []string{"0:value"}},
		{"negative", "", `{"id":"a","tenant":"t","metric":"m","value":-1,"time":"2026-11-21T18:59:00Z"}`, []string{"0:value"}},
		{"huge", "", `{"id":"a","tenant":"t","metric":"m","value":123456789012345678901234567890,"time":"2026-11-21T18:59:00Z"}`, []string{"0:value"}},
		{"value as string", "", `{"id":"a","tenant":"t","metric":"m","value":"1","time":"2026-11-21T18:59:00Z"}`, []string{"0:value"}},
		{"missing value", "", `{"id":"a","tenant":"t","metric":"m","time":"2026-11-21T18:59:00Z"}`, []string{"0:value"}},
		{"wrong types everywhere", "", `{"id":1,"tenant":true,"metric":[],"value":{},"time":5,"properties":{"a":1}}`,
			[]string{"0:id", "0:tenant", "0:metric", "0:value", "0:time", "0:properties.a"}},
		{"null property", "", `{"id":"a","tenant":"t","metric":"m","value":1,"time":"2026-11-21T18:59:00Z","properties":{"k":null,"j":"x"}}`, []string{"0:properties.k"}},
		{"null property in an array", "", "[" + okEvent + `,{"id":"a","tenant":"t","metric":"m","value":1,"time":"2026-11-21T18:59:00Z","properties":{"k":null}}]`, []string{"1:properties.k"}},
		{"null property in NDJSON", "application/x-ndjson", `{"id":"a","tenant":"t","metric":"m","value":1,"time":"2026-11-21T18:59:00Z","properties":{"k":null}}`, []string{"0:properties.k"}},
		{"cloudevent empty datacontenttype", "application/cloudevents+json",
			`{"specversion":"1.0","id":"a","source":"s","type":"m","subject":"t","time":"2026-11-21T18:59:00Z","datacontenttype":"","data":{"value":1}}`, []string{"0:datacontenttype"}},
		{"cloudevent text datacontenttype", "application/cloudevents+json",
			`{"specversion":"1.0","id":"a","source":"s","type":"m","subject":"t","time":"2026-11-21T18:59:00Z","datacontenttype":"text/plain","data":{"value":1}}`, []string{"0:datacontenttype"}},
		{"cloudevent datacontenttype not a string", "application/cloudevents+json",
			`{"specversion":"1.0","id":"a","source":"s","type":"m","subject":"t","time":"2026-11-21T18:59:00Z","datacontenttype":5,"data":{"value":1}}`, []string{"0:datacontenttype"}},
		{"cloudevent null data member", "application/cloudevents+json",
			`{"specversion":"1.0","id":"a","source":"s","type":"m","subject":"t","time":"2026-11-21T18:59:00Z","data":{"value":1,"k":null}}`, []string{"0:data.k"}},
		{"unknown field", "", `{"id":"a","tenant":"t","metric":"m","value":1,"time":"2026-11-21T18:59:00Z","tennant":"x"}`, []string{"0:tennant"}},
		{"bad time format", "", `{"id":"a","tenant":"t","metric":"m","value":1,"time":"21/11/2026"}`, []string{"0:time"}},
		{"array element not an object", "", `[` + okEvent + `,5]`, []string{"1:"}},
		{"second of three bad", "", `[` + okEvent + `,{"id":"","tenant":"t","metric":"m","value":1,"time":"2026-11-21T18:59:00Z"},` + okEvent + `]`, []string{"1:id"}},
		{"ndjson line errors keep their index", "application/x-ndjson", okEvent + "\n{\"id\":\"x\"}\n", []string{"1:value", "1:tenant", "1:metric", "1:time"}},
		{"ndjson malformed line", "application/x-ndjson", "{nope\n" + okEvent, []string{"0:"}},
		{"cloudevent names its own attributes", "application/cloudevents+json",
			`{"specversion":"0.3","id":"a","source":"","type":"m","time":"2026-11-21T18:59:00Z","data":{"value":1.5,"n":1}}`,
			[]string{"0:specversion", "0:source", "0:data.value", "0:data.n", "0:subject"}},
		{"cloudevent missing subject and data", "application/cloudevents+json",
			`{"specversion":"1.0","id":"a","source":"s","type":"m","time":"2026-11-21T18:59:00Z"}`, []string{"0:data", "0:subject"}},
		{"cloudevent missing subject", "application/cloudevents+json",
			`{"specversion":"1.0","id":"a","source":"s","type":"m","time":"2026-11-21T18:59:00Z","data":{"value":1}}`, []string{"0:subject"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decoder().Decode(tt.contentType, []byte(tt.body))
			ve, ok := events.AsValidationError(err)
			if !ok {
				t.Fatalf("err = %v, want *ValidationError", err)
			}
			var got []string
			for _, fe := range ve.Errors {
				got = append(got, fmt.Sprintf("%d:%s", fe.Index, fe.Field))
			}
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Fatalf("errors = %v, want %v\n%v", got, tt.want, ve)
			}
		})
	}
}

func TestCloudEventRoundTrip(t *testing.T) {
	ev := validEvent()
	b, err := ev.AppendCloudEvent(nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decoder().Decode(events.MediaCloudEvent, b)
	if err != nil {
		t.Fatalf("Decode(%s): %v", b, err)
	}
	if !reflect.DeepEqual(got[0], ev) {
		t.Fatalf("event → CloudEvent → event = %+v, want %+v", got[0], ev)
	}
	// And the other way: a CloudEvent decodes to the event that encodes back to it.
	b2, err := got[0].AppendCloudEvent(nil)
	if err != nil || string(b2) != string(b) {
		t.Fatalf("CloudEvent → event → CloudEvent = %s, %v; want %s", b2, err, b)
	}

	noSource := ev
	noSource.Source = ""
	b, _ = noSource.AppendCloudEvent(nil)
	got, err = decoder().Decode(events.MediaCloudEvent, b)
	if err != nil || got[0].Source != events.DefaultCloudEventSource {
		t.Fatalf("event without source → %+v, %v", got, err)
	}

	clash := ev
	clash.Properties = map[string]string{"value": "x"}
	if _, err := clash.AppendCloudEvent(nil); err == nil {
		t.Fatal("property named value encoded without error")
	}
}

func TestDecodeRejectsDuplicateKeys(t *testing.T) {
	tests := []struct {
		name, contentType, body string
		want                    []string
	}{
		{"top-level value twice", "", `{"id":"a","tenant":"t","metric":"m","value":1,"value":900,"time":"2026-11-21T18:59:00Z"}`, []string{"0:value"}},
		{"property twice", "", `{"id":"a","tenant":"t","metric":"m","value":1,"time":"2026-11-21T18:59:00Z","properties":{"k":"1","k":"2"}}`, []string{"0:properties.k"}},
		{"second event of an array", "", "[" + okEvent + `,{"id":"b","id":"c","tenant":"t","metric":"m","value":1,"time":"2026-11-21T18:59:00Z"}]`, []string{"1:id"}},
		{"ndjson line", "application/x-ndjson", okEvent + "\n" + `{"id":"b","tenant":"t","tenant":"u","metric":"m","value":1,"time":"2026-11-21T18:59:00Z"}`, []string{"1:tenant"}},
		{"cloudevent data", "application/cloudevents+json", `{"specversion":"1.0","id":"e1","source":"s","type":"m","subject":"t","time":"2026-11-21T18:59:00Z","data":{"value":1,"value":2}}`, []string{"0:data.value"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decoder().Decode(tt.contentType, []byte(tt.body))
			ve, ok := events.AsValidationError(err)
			if !ok {
				t.Fatalf("err = %v, want *ValidationError", err)
			}
			var got []string
			for _, fe := range ve.Errors {
				got = append(got, fmt.Sprintf("%d:%s", fe.Index, fe.Field))
			}
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Fatalf("errors = %v, want %v", got, tt.want)
			}
		})
	}
}
