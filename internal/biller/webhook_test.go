package biller_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stripe/stripe-go/v79/webhook"

	"github.com/usagemeter/metering/internal/stripewebhook"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// TestWebhookOnTwoReplicas: Stripe may deliver one event several times at
// once, to any replica. Each event takes effect exactly once across two
// billers' handlers (each with its own pool) receiving 8 concurrent
// deliveries of it.
func TestWebhookOnTwoReplicas(t *testing.T) {
	t.Parallel()
	const secret = "whsec_replicas"
	db := pgtest.New(t)
	db.Exec(t, `INSERT INTO plans (name) VALUES ('free'), ('pro')`)
	db.Exec(t, `INSERT INTO tenants (tenant, plan, stripe_customer_id) VALUES ('acme', 'free', 'cus_acme')`)
	var handlers []*stripewebhook.Handler
	for range 2 {
		pool, err := pgxpool.New(context.Background(), db.URL)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		handlers = append(handlers, stripewebhook.New(pool, secret, slog.New(slog.DiscardHandler)))
	}
	tests := []struct {
		id, typ string
		object  map[string]any
		effect  string // counts the event's effect rows
	}{
		{"evt_inv", "invoice.finalized", map[string]any{"object": "invoice", "id": "in_1", "customer": "cus_acme", "period_start": time.Now().Unix()},
			`SELECT count(*) FROM billing_periods WHERE invoice_id = 'in_1'`},
		{"evt_err", "billing.meter.error_report_triggered", map[string]any{"meter": "mtr_1", "summary": "no customer", "reason": map[string]any{"error_count": 2}},
			`SELECT count(*) FROM stripe_meter_errors WHERE event_id = 'evt_err'`},
		{"evt_sub", "customer.subscription.updated", map[string]any{"object": "subscription", "id": "sub_1", "customer": "cus_acme", "status": "active", "metadata": map[string]string{"plan": "pro"}},
			`SELECT count(*) FROM tenants WHERE plan = 'pro'`},
	}
	for _, tt := range tests {
		payload, _ := json.Marshal(map[string]any{"id": tt.id, "object": "event", "type": tt.typ, "api_version": "2024-06-20",
			"created": time.Now().Unix(), "data": map[string]any{"object": tt.object}})
		var mu sync.Mutex
		outcomes := map[string]int{}
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Go(func() {
				sig := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: payload, Secret: secret}).Header
				r := httptest.NewRequest("POST", "/webhooks/stripe", strings.NewReader(string(payload)))
				r.Header.Set("Stripe-Signature", sig)
				w := httptest.NewRecorder()
				handlers[i%2].ServeHTTP(w, r)
				var body struct{ Status string }
				_ = json.Unmarshal(w.Body.Bytes(), &body)
				mu.Lock()
				outcomes[body.Status+" "+http2xx(w.Code)]++
				mu.Unlock()
			})
		}
		wg.Wait()
		if outcomes["processed 2xx"] != 1 || outcomes["duplicate 2xx"] != 7 {
			t.Errorf("%s: outcomes %v, want 1 processed and 7 duplicates", tt.typ, outcomes)
		}
		var effects, recorded int
		_ = db.Pool.QueryRow(context.Background(), tt.effect).Scan(&effects)
		_ = db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM stripe_webhook_events WHERE event_id = $1`, tt.id).Scan(&recorded)
		if effects != 1 || recorded != 1 {
			t.Errorf("%s: %d effects, %d records, want 1 and 1", tt.typ, effects, recorded)
		}
	}
}

func http2xx(code int) string {
	if code >= 200 && code < 300 {
		return "2xx"
	}
	return "status " + string(rune('0'+code/100)) + "xx"
}
