package stripewebhook_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v79/webhook"

	"github.com/usagemeter/metering/internal/pgtest"
	"github.com/usagemeter/metering/internal/stripewebhook"
)

const secret = "whsec_test"

func event(id, typ string, object map[string]any) []byte {
	b, _ := json.Marshal(map[string]any{"id": id, "object": "event", "type": typ, "api_version": "2024-06-20", "created": time.Now().Unix(),
		"data": map[string]any{"object": object}})
	return b
}

func post(t *testing.T, h http.Handler, payload []byte, sign string) (int, string) {
	t.Helper()
	sig := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: payload, Secret: sign}).Header
	r := httptest.NewRequest("POST", "/webhooks/stripe", strings.NewReader(string(payload)))
	r.Header.Set("Stripe-Signature", sig)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w.Code, w.Body.String()
}

func TestWebhooks(t *testing.T) {
	db := pgtest.New(t)
	db.Exec(t, `INSERT INTO plans (name) VALUES ('free'), ('pro')`)
	db.Exec(t, `INSERT INTO tenants (tenant, plan, stripe_customer_id) VALUES ('acme', 'free', 'cus_acme')`)
	h := stripewebhook.New(db.Pool, secret, slog.New(slog.DiscardHandler))
	planOf := func() string {
		var p *string
		_ = db.Pool.QueryRow(context.Background(), `SELECT plan FROM tenants WHERE tenant = 'acme'`).Scan(&p)
		if p == nil {
			return "(none)"
		}
		return *p
	}
	upgrade := event("evt_1", "customer.subscription.updated", map[string]any{"object": "subscription", "customer": "cus_acme", "status": "active", "metadata": map[string]string{"plan": "pro"}})

	// A bad signature changes nothing.
	if code, body := post(t, h, upgrade, "whsec_wrong"); code != 400 || !strings.Contains(body, "invalid_signature") || planOf() != "free" {
		t.Fatalf("bad signature: %d %s, plan %s", code, body, planOf())
	}
	if code, body := post(t, h, upgrade, secret); code != 200 || !strings.Contains(body, "processed") || planOf() != "pro" {
		t.Fatalf("upgrade: %d %s, plan %s", code, body, planOf())
	}
	// Stripe redelivers the same event after the tenant moved on: no change.
	db.Exec(t, `UPDATE tenants SET plan = 'free' WHERE tenant = 'acme'`)
	if code, body := post(t, h, upgrade, secret); code != 200 || !strings.Contains(body, "duplicate") || planOf() != "free" {
		t.Fatalf("replayed: %d %s, plan %s", code, body, planOf())
	}
	if code, _ := post(t, h, event("evt_2", "customer.subscription.deleted", map[string]any{"customer": "cus_acme", "status": "canceled"}), secret); code != 200 || planOf() != "(none)" {
		t.Fatalf("deleted: plan %s", planOf())
	}
	nov := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	if code, _ := post(t, h, event("evt_3", "invoice.finalized", map[string]any{"id": "in_1", "customer": "cus_acme", "period_start": nov.Unix()}), secret); code != 200 {
		t.Fatal("invoice.finalized refused")
	}
	var closed int
	_ = db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM billing_periods WHERE tenant = 'acme' AND period_start = $1 AND invoice_id = 'in_1'`, nov).Scan(&closed)
	if closed != 1 {
		t.Fatal("period not closed")
	}
	if code, _ := post(t, h, event("evt_4", "billing.meter.error_report_triggered", map[string]any{"meter": "mtr_1", "summary": "no customer", "reason": map[string]any{"error_count": 3}}), secret); code != 200 {
		t.Fatal("meter error report refused")
	}
	var errs int
	_ = db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM stripe_meter_errors WHERE meter = 'mtr_1'`).Scan(&errs)
	if errs != 1 {
		t.Fatal("meter error not recorded")
	}
	if code, body := post(t, h, event("evt_5", "charge.succeeded", map[string]any{}), secret); code != 200 || !strings.Contains(body, "ignored") {
		t.Fatalf("other events: %d %s", code, body)
	}
}
