package events_test

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
)

func TestAppendJSONCanonical(t *testing.T) {
	tests := []struct {
		name string
		ev   events.Event
		want string
	}{
		{"contract example", events.Event{
			ID: "0193a5c2-7d3e-7b2a-9f1e-3c4d5e6f7a8b", Tenant: "acme", Metric: "api_calls", Value: 1,
			Time: time.Date(2026, 11, 21, 19, 0, 0, 123e6, time.UTC), Source: "checkout-svc",
			Properties: map[string]string{"region": "eu", "endpoint": "/v1/chat"},
		}, `{"id":"0193a5c2-7d3e-7b2a-9f1e-3c4d5e6f7a8b","tenant":"acme","metric":"api_calls","value":1,"time":"2026-11-21T19:00:00.123Z","source":"checkout-svc","properties":{"endpoint":"/v1/chat","region":"eu"}}`},
		{"optional fields omitted, offset normalised to UTC", events.Event{
			ID: "a", Tenant: "t", Metric: "m", Value: 9007199254740992,
			Time: time.Date(2026, 11, 21, 20, 0, 0, 0, time.FixedZone("CET", 3600)),
		}, `{"id":"a","tenant":"t","metric":"m","value":9007199254740992,"time":"2026-11-21T19:00:00Z"}`},
		{"escaping", events.Event{
			ID: `q"\`, Tenant: "t", Metric: "m", Time: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
			Source: "a\tb", Properties: map[string]string{"k": "ünï\u2028<>&"},
		}, `{"id":"q\"\\","tenant":"t","metric":"m","value":0,"time":"2026-01-01T00:00:00Z","source":"a\tb","properties":{"k":"ünï` + "\u2028" + `<>&"}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := string(tt.ev.AppendJSON(nil))
			if got != tt.want {
				t.Fatalf("AppendJSON =\n%s\nwant\n%s", got, tt.want)
			}
			// encoding/json agrees it is valid JSON with the same content.
			var back events.Event
			if err := json.Unmarshal([]byte(got), &back); err != nil {
				t.Fatalf("Unmarshal: %v", err)
			}
			want := tt.ev
			want.Time = want.Time.UTC()
			if !reflect.DeepEqual(back, want) {
				t.Fatalf("round trip = %+v, want %+v", back, want)
			}
			// json.Marshal uses the same encoding; it only escapes <, >, &
			// and U+2028 further, as it does for every Marshaler.
			m, err := json.Marshal(tt.ev)
			if err != nil {
				t.Fatal(err)
			}
			var viaMarshal events.Event
			if err := json.Unmarshal(m, &viaMarshal); err != nil || !reflect.DeepEqual(viaMarshal, want) {
				t.Fatalf("json.Marshal round trip = %+v, %v", viaMarshal, err)
			}
			if !strings.ContainsAny(got, "<>&\u2028") && string(m) != got {
				t.Fatalf("json.Marshal = %s, want the canonical %s", m, got)
			}
		})
	}
}

func TestUnmarshalStrict(t *testing.T) {
	var e events.Event
	err := json.Unmarshal([]byte(`{"id":5,"tenant":"t","metric":"m","value":1.5,"time":"yesterday","extra":1}`), &e)
	ve, ok := events.AsValidationError(err)
	if !ok {
		t.Fatalf("err = %v, want *ValidationError", err)
	}
	got := map[string]bool{}
	for _, fe := range ve.Errors {
		got[fe.Field] = true
	}
	for _, f := range []string{"id", "value", "time", "extra"} {
		if !got[f] {
			t.Errorf("no error for %s in %v", f, ve.Errors)
		}
	}
}
