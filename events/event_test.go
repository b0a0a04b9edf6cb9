package events_test

import (
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
)

var now = time.Date(2026, 11, 21, 19, 0, 0, 0, time.UTC)

func validEvent() events.Event {
	return events.Event{
		ID: "0193a5c2-7d3e-7b2a-9f1e-3c4d5e6f7a8b", Tenant: "acme", Metric: "api_calls", Value: 1,
		Time: now.Add(-time.Minute), Source: "checkout-svc",
		Properties: map[string]string{"endpoint": "/v1/chat", "region": "eu"},
	}
}

func TestValidate(t *testing.T) {
	v := events.Validator{Now: func() time.Time { return now }}
	manyProps := map[string]string{}
	for i := range 33 {
		manyProps[strings.Repeat("k", i+1)] = "v"
	}
	tests := []struct {
		name   string
		mutate func(*events.Event)
		fields []string // expected error fields, in order
	}{
		{"valid", func(*events.Event) {}, nil},
		{"zero value is valid", func(e *events.Event) { e.Value = 0 }, nil},
		{"max value", func(e *events.Event) { e.Value = events.MaxValue }, nil},
		{"value over 2^53", func(e *events.Event) { e.Value = events.MaxValue + 1 }, []string{"value"}},
		{"negative value", func(e *events.Event) { e.Value = -1 }, []string{"value"}},
		{"missing id", func(e *events.Event) { e.ID = "" }, []string{"id"}},
		{"id of 128", func(e *events.Event) { e.ID = strings.Repeat("a", 128) }, nil},
		{"id of 129", func(e *events.Event) { e.ID = strings.Repeat("a", 129) }, []string{"id"}},
		{"id non-ascii", func(e *events.Event) { e.ID = "é" }, []string{"id"}},
		{"id control char", func(e *events.Event) { e.ID = "a\nb" }, []string{"id"}},
		{"tenant bad char", func(e *events.Event) { e.Tenant = "ac me" }, []string{"tenant"}},
		{"tenant all allowed chars", func(e *events.Event) { e.Tenant = "Az09._:-" }, nil},
		{"metric too long", func(e *events.Event) { e.Metric = strings.Repeat("m", 129) }, []string{"metric"}},
		{"missing time", func(e *events.Event) { e.Time = time.Time{} }, []string{"time"}},
		{"5 minutes ahead is fine", func(e *events.Event) { e.Time = now.Add(5 * time.Minute) }, nil},
		{"too far in the future", func(e *events.Event) { e.Time = now.Add(5*time.Minute + time.Second) }, []string{"time"}},
		{"at the horizon", func(e *events.Event) { e.Time = now.Add(-events.DefaultHorizon) }, nil},
		{"older than the horizon", func(e *events.Event) { e.Time = now.Add(-events.DefaultHorizon - time.Second) }, []string{"time"}},
		{"source too long", func(e *events.Event) { e.Source = strings.Repeat("s", 257) }, []string{"source"}},
		{"too many properties", func(e *events.Event) { e.Properties = manyProps }, []string{"properties"}},
		{"empty property key", func(e *events.Event) { e.Properties = map[string]string{"": "x"} }, []string{"properties"}},
		{"property value too long", func(e *events.Event) { e.Properties = map[string]string{"k": strings.Repeat("v", 1025)} }, []string{"properties.k"}},
		{"property value control char", func(e *events.Event) { e.Properties = map[string]string{"k": "a\x00"} }, []string{"properties.k"}},
		{"every field wrong at once", func(e *events.Event) {
			*e = events.Event{Value: -5}
		}, []string{"id", "tenant", "metric", "value", "time"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := validEvent()
			tt.mutate(&e)
			errs := v.Validate(7, e)
			var got []string
			for _, fe := range errs {
				got = append(got, fe.Field)
				if fe.Index != 7 {
					t.Errorf("index = %d, want 7", fe.Index)
				}
				if fe.Message == "" {
					t.Errorf("field %s has no message", fe.Field)
				}
			}
			if strings.Join(got, ",") != strings.Join(tt.fields, ",") {
				t.Fatalf("error fields = %v, want %v (%v)", got, tt.fields, errs)
			}
		})
	}
}

func TestEventValidateReturnsValidationError(t *testing.T) {
	err := events.Event{}.Validate()
	ve, ok := events.AsValidationError(err)
	if !ok {
		t.Fatalf("Validate() = %v, want *ValidationError", err)
	}
	if len(ve.Errors) != 4 { // id, tenant, metric, time
		t.Fatalf("got %d errors, want 4: %v", len(ve.Errors), ve)
	}
	if err := events.New("acme", "api_calls", 3).Validate(); err != nil {
		t.Fatalf("New(...).Validate() = %v", err)
	}
}

func TestNewIDIsUUIDv7AndOrdered(t *testing.T) {
	a, b := events.NewID(), events.NewID()
	if len(a) != 36 || a[14] != '7' {
		t.Fatalf("NewID() = %q, want a UUIDv7", a)
	}
	if a == b {
		t.Fatal("two ids are equal")
	}
	if a[:8] > b[:8] {
		t.Fatalf("ids not time ordered: %s then %s", a, b)
	}
}

// TestFutureTimeMessage: how far ahead an event is reads as a duration,
// or in days, also for times past time.Duration's range (year 9999).
func TestFutureTimeMessage(t *testing.T) {
	t.Parallel()
	tests := []struct {
		ahead time.Time
		want  string
	}{
		{now.Add(10 * time.Minute), "is 10m0s ahead"},
		{now.AddDate(0, 0, 400), "is 400 days ahead"},
		{time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC), "is 2912117 days ahead"},
	}
	for _, tt := range tests {
		e := events.Event{ID: "e1", Tenant: "acme", Metric: "m", Value: 1, Time: tt.ahead}
		errs := events.Validator{Now: func() time.Time { return now }}.Validate(0, e)
		if len(errs) != 1 || errs[0].Field != "time" || !strings.Contains(errs[0].Message, tt.want) {
			t.Errorf("%s: %v, want %q", tt.ahead, errs, tt.want)
		}
	}
}
