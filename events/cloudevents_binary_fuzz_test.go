package events_test

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"testing"

	"github.com/usagemeter/metering/events"
)

// percentEncode encodes a string attribute as a ce-* header value the way
// the CloudEvents HTTP binding (3.1.3.2) says a sender must.
func percentEncode(s string) string {
	var b []byte
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x21 || c > 0x7e || c == '"' || c == '%' {
			b = fmt.Appendf(b, "%%%02X", c)
		} else {
			b = append(b, c)
		}
	}
	return string(b)
}

// encodeBinary is ev in HTTP binary content mode: headers and data.
func encodeBinary(t *testing.T, ev events.Event) (http.Header, []byte) {
	t.Helper()
	h := http.Header{
		"Ce-Specversion": {"1.0"},
		"Ce-Id":          {percentEncode(ev.ID)},
		"Ce-Source":      {percentEncode(ev.Source)},
		"Ce-Type":        {percentEncode(ev.Metric)},
		"Ce-Subject":     {percentEncode(ev.Tenant)},
		"Ce-Time":        {ev.Time.Format("2006-01-02T15:04:05.999999999Z07:00")},
		"Content-Type":   {events.MediaJSON},
	}
	// The data is the structured form's "data" member.
	ce, err := ev.AppendCloudEvent(nil)
	if err != nil {
		t.Fatalf("AppendCloudEvent: %v", err)
	}
	_, data, ok := bytes.Cut(ce, []byte(`"data":`))
	if !ok {
		t.Fatalf("no data in %s", ce)
	}
	return h, data[:len(data)-1]
}

// FuzzDecodeCloudEventBinary checks, for any headers and body, that
// binary-mode decoding never panics, fails only with a documented error,
// and that an accepted event is the one its structured twin decodes to and
// survives a spec-conforming re-encoding into headers unchanged.
func FuzzDecodeCloudEventBinary(f *testing.F) {
	f.Add("1.0", "e1", "svc", "api_calls", "acme", "2026-11-21T18:59:00Z", "application/json", []byte(binaryData))
	f.Add("1.0", "order%20%2542", `"my \"svc\""`, "tokens", "%61cme", "2026-11-21T19:59:00.5+01:00", "", []byte(`{"value":9007199254740992}`))
	f.Add("1.0", "a", "Euro%20%E2%82%AC", "m", "t", "2026-11-21T18:59:00Z", "application/json; charset=utf-8", []byte(`{"value":0,"é":"\u2028"}`))
	f.Add("0.3", "50%off", "a%C0%A0b", "a b", "", "yesterday", "text/plain", []byte(`{"value":1.5,"n":1}`))
	f.Add("1.0", "e1", "svc", "api_calls", "acme", "2026-11-21T18:59:00Z", "application/json", []byte(`{"value":1,"value":2}`))
	f.Add("1.0", "e1", "svc", "api_calls", "acme", "2026-11-21T18:59:00Z", "application/json", []byte(`[{"value":1}]`))
	f.Add("1.0", "e1", "svc", "api_calls", "acme", "2026-11-21T18:59:00Z", "application/json", []byte("\xff"))
	f.Add("1.0", "e1", "svc", "api_calls", "acme", "2026-11-21T18:59:00Z", "application/json", []byte(`{"value":1,"VALUE":900}`))
	f.Add("1.0", "e1", "svc", "api_calls", "acme", "2026-11-21T18:59:00Z", "application/json", []byte(`{"value":1,"k":[[[[[[[[[[1]]]]]]]]]]}`))
	withSmallStack(f)
	f.Fuzz(func(t *testing.T, specversion, id, source, typ, subject, ts, contentType string, body []byte) {
		h := http.Header{}
		for name, v := range map[string]string{"Ce-Specversion": specversion, "Ce-Id": id, "Ce-Source": source,
			"Ce-Type": typ, "Ce-Subject": subject, "Ce-Time": ts, "Content-Type": contentType} {
			if v != "" {
				h[name] = []string{v}
			}
		}
		d := decoder()
		var ev events.Event
		var err error
		boundedMemory(t, len(body), func() { ev, err = d.DecodeCloudEventBinary(h, body) })
		if err != nil {
			var be *events.BodyError
			if _, ok := events.AsValidationError(err); !ok && !errors.As(err, &be) && !errors.Is(err, events.ErrUnsupportedMediaType) {
				t.Fatalf("undocumented error type %T: %v", err, err)
			}
			if ve, ok := events.AsValidationError(err); ok {
				for _, fe := range ve.Errors {
					if fe.Index != 0 || fe.Field == "" || fe.Message == "" {
						t.Fatalf("field error %+v: want index 0, a field and a message", fe)
					}
				}
			}
			return
		}
		if errs := (events.Validator{Now: d.Validator.Now}).Validate(0, ev); len(errs) > 0 {
			t.Fatalf("accepted an invalid event %+v: %v", ev, errs)
		}
		canon := ev.AppendJSON(nil)
		if _, clash := ev.Properties["value"]; clash {
			t.Fatalf("accepted a property named value: %+v", ev)
		}
		ce, err := ev.AppendCloudEvent(nil)
		if err != nil {
			t.Fatalf("AppendCloudEvent: %v", err)
		}
		structured, err := d.Decode(events.MediaCloudEvent, ce)
		if err != nil || !bytes.Equal(structured[0].AppendJSON(nil), canon) {
			t.Fatalf("structured twin %s → %v, %v; want %s", ce, structured, err, canon)
		}
		h2, data := encodeBinary(t, ev)
		again, err := d.DecodeCloudEventBinary(h2, data)
		if err != nil {
			t.Fatalf("re-encoded %v %s does not decode: %v", h2, data, err)
		}
		if !reflect.DeepEqual(again, ev) {
			t.Fatalf("re-encoding changed the event:\n%+v\n%+v", ev, again)
		}
	})
}
