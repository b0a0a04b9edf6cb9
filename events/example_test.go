package events_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"time"

	"github.com/usagemeter/metering/events"
)

// Emit one event per billable call. Keep the event if the call might be
// retried: resending the same id counts once.
func ExampleProducer() {
	p, err := events.NewProducer(events.ProducerConfig{Brokers: []string{"127.0.0.1:9092"}})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()

	ev := events.New("acme", "api_calls", 1)
	ev.Source = "checkout-svc"
	ev.Properties = map[string]string{"endpoint": "/v1/chat"}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Emit(ctx, ev); err != nil {
		log.Printf("usage not recorded yet, retry with the same event: %v", err)
	}
}

func ExampleEvent_AppendJSON() {
	ev := events.Event{
		ID: "order-1234", Tenant: "acme", Metric: "tokens", Value: 1500,
		Time:       time.Date(2026, 11, 21, 19, 0, 0, 123e6, time.UTC),
		Properties: map[string]string{"model": "small"},
	}
	fmt.Println(string(ev.AppendJSON(nil)))
	// Output: {"id":"order-1234","tenant":"acme","metric":"tokens","value":1500,"time":"2026-11-21T19:00:00.123Z","properties":{"model":"small"}}
}

func ExampleDecoder_Decode() {
	body := `{"id":"a1","tenant":"acme","metric":"api_calls","value":2.5,"time":"2026-11-21T19:00:00Z"}
{"id":"a2","tenant":"acme corp","metric":"api_calls","value":1,"time":"2026-11-21T19:00:00Z"}`
	d := events.Decoder{Validator: events.Validator{Now: func() time.Time {
		return time.Date(2026, 11, 21, 19, 1, 0, 0, time.UTC)
	}}}
	_, err := d.Decode(events.MediaNDJSON, []byte(body))
	if ve, ok := events.AsValidationError(err); ok {
		for _, fe := range ve.Errors {
			fmt.Printf("event %d %s: %s\n", fe.Index, fe.Field, fe.Message)
		}
	}
	// Output:
	// event 0 value: must be an integer, got 2.5; count in the smallest unit (bytes, milliseconds, tokens)
	// event 1 tenant: may contain only A-Z a-z 0-9 . _ : -; found ' ' at byte 4
}

func ExampleEvent_AppendCloudEvent() {
	ev := events.Event{
		ID: "a1", Tenant: "acme", Metric: "api_calls", Value: 1, Source: "checkout-svc",
		Time: time.Date(2026, 11, 21, 19, 0, 0, 0, time.UTC),
	}
	b, _ := ev.AppendCloudEvent(nil)
	fmt.Println(string(b))
	// Output: {"specversion":"1.0","id":"a1","source":"checkout-svc","type":"api_calls","subject":"acme","time":"2026-11-21T19:00:00Z","datacontenttype":"application/json","data":{"value":1}}
}

// Refuse work for tenants whose hard quota is used up, until their period
// ends; other requests go through.
func ExampleQuotaGuard() {
	guard, err := events.NewQuotaGuard(events.GuardConfig{
		BaseURL: "http://127.0.0.1:8080",
		APIKey:  "mk_...", // a viewer key
		Tenant: func(r *http.Request) (string, bool) {
			t := r.Header.Get("X-Tenant")
			return t, t != ""
		},
		Metrics: []string{"api_calls"},
	})
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/chat", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "hello") })
	log.Fatal(http.ListenAndServe(":9000", guard.Middleware(mux)))
}

// Build a POST /v1/events body from a batch of events.
func ExampleAppendArray() {
	t := time.Date(2026, 11, 21, 19, 0, 0, 0, time.UTC)
	body := events.AppendArray(nil, []events.Event{
		{ID: "a1", Tenant: "acme", Metric: "api_calls", Value: 1, Time: t},
		{ID: "a2", Tenant: "acme", Metric: "api_calls", Value: 2, Time: t},
	})
	fmt.Println(string(body))
	// Output: [{"id":"a1","tenant":"acme","metric":"api_calls","value":1,"time":"2026-11-21T19:00:00Z"},{"id":"a2","tenant":"acme","metric":"api_calls","value":2,"time":"2026-11-21T19:00:00Z"}]
}
