package stripeapi_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stripe/stripe-go/v79"

	"github.com/usagemeter/metering/internal/stripeapi"
)

func TestClientUsesBaseAndDoesNotRetry(t *testing.T) {
	var calls int
	var got *http.Request
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls++
		got = r.Clone(r.Context())
		_ = r.ParseForm()
		got.Form = r.Form
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Stripe-Should-Retry", "true")
		w.WriteHeader(http.StatusInternalServerError)
		_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"type": "api_error", "message": "boom"}})
	}))
	defer srv.Close()
	api := stripeapi.New("sk_test_123", srv.URL, nil)
	params := &stripe.BillingMeterEventParams{
		EventName:  stripe.String("api_calls"),
		Identifier: stripe.String("id-1"),
		Payload:    map[string]string{"stripe_customer_id": "cus_1", "value": "5"},
	}
	params.SetIdempotencyKey("idem-1")
	_, err := api.BillingMeterEvents.New(params)
	if err == nil {
		t.Fatal("a 500 was not an error")
	}
	if calls != 1 {
		t.Fatalf("%d calls, want 1 (no retries inside the client)", calls)
	}
	if got.URL.Path != "/v1/billing/meter_events" || got.Header.Get("Authorization") != "Bearer sk_test_123" ||
		got.Header.Get("Idempotency-Key") != "idem-1" || got.Form.Get("identifier") != "id-1" {
		t.Fatalf("request = %s %v %v", got.URL.Path, got.Header, got.Form)
	}
}
