package stripewebhook_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stripe/stripe-go/v79/webhook"

	"github.com/usagemeter/metering/internal/stripewebhook"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

const secret = "whsec_test"

// eventAt is a Stripe event envelope created at the given time.
func eventAt(id, typ string, created time.Time, object map[string]any) []byte {
	b, _ := json.Marshal(map[string]any{"id": id, "object": "event", "type": typ, "api_version": "2024-06-20", "created": created.Unix(),
		"data": map[string]any{"object": object}})
	return b
}

func event(id, typ string, object map[string]any) []byte {
	return eventAt(id, typ, time.Now(), object)
}

func subscription(id, plan string) map[string]any {
	return map[string]any{"object": "subscription", "id": id, "customer": "cus_acme", "status": "active", "metadata": map[string]string{"plan": plan}}
}

// signedAt posts payload signed with sign at the given time.
func signedAt(t *testing.T, h http.Handler, payload []byte, sign string, at time.Time) (int, string) {
	t.Helper()
	sig := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: payload, Secret: sign, Timestamp: at}).Header
	return postWithHeader(h, payload, sig)
}

func postWithHeader(h http.Handler, payload []byte, sig string) (int, string) {
	r := httptest.NewRequest("POST", "/webhooks/stripe", bytes.NewReader(payload))
	if sig != "" {
		r.Header.Set("Stripe-Signature", sig)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w.Code, w.Body.String()
}

func post(t *testing.T, h http.Handler, payload []byte, sign string) (int, string) {
	t.Helper()
	return signedAt(t, h, payload, sign, time.Now())
}

// fixture is a migrated database with plans free and pro, tenant acme
// (cus_acme) on free, and a handler whose metrics land in reg.
type fixture struct {
	db  *pgtest.DB
	h   *stripewebhook.Handler
	reg *prometheus.Registry
}

func newFixture(t *testing.T) fixture {
	t.Helper()
	db := pgtest.New(t)
	db.Exec(t, `INSERT INTO plans (name) VALUES ('free'), ('pro'), ('team')`)
	db.Exec(t, `INSERT INTO tenants (tenant, plan, stripe_customer_id) VALUES ('acme', 'free', 'cus_acme')`)
	reg := prometheus.NewRegistry()
	return fixture{db: db, reg: reg, h: stripewebhook.New(db.Pool, secret, slog.New(slog.DiscardHandler), stripewebhook.WithRegisterer(reg))}
}

func (f fixture) planOf(t *testing.T) string {
	t.Helper()
	var p *string
	if err := f.db.Pool.QueryRow(context.Background(), `SELECT plan FROM tenants WHERE tenant = 'acme'`).Scan(&p); err != nil {
		t.Fatal(err)
	}
	if p == nil {
		return "(none)"
	}
	return *p
}

func (f fixture) count(t *testing.T, query string, args ...any) int {
	t.Helper()
	var n int
	if err := f.db.Pool.QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// outcomes reads metering_stripe_webhooks_total by outcome.
func outcomes(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "metering_stripe_webhooks_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if v := m.GetCounter().GetValue(); v > 0 {
				got[m.GetLabel()[0].GetValue()] = v
			}
		}
	}
	return got
}

func status(body string) string {
	var b struct{ Status string }
	_ = json.Unmarshal([]byte(body), &b)
	return b.Status
}

func TestWebhooks(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	upgrade := event("evt_1", "customer.subscription.updated", subscription("sub_1", "pro"))

	// A bad signature changes nothing.
	if code, body := post(t, f.h, upgrade, "whsec_wrong"); code != 400 || !strings.Contains(body, "invalid_signature") || f.planOf(t) != "free" {
		t.Fatalf("bad signature: %d %s, plan %s", code, body, f.planOf(t))
	}
	if code, body := post(t, f.h, upgrade, secret); code != 200 || status(body) != "processed" || f.planOf(t) != "pro" {
		t.Fatalf("upgrade: %d %s, plan %s", code, body, f.planOf(t))
	}
	// Stripe redelivers the same event after the tenant moved on: no change.
	f.db.Exec(t, `UPDATE tenants SET plan = 'free' WHERE tenant = 'acme'`)
	if code, body := post(t, f.h, upgrade, secret); code != 200 || status(body) != "duplicate" || f.planOf(t) != "free" {
		t.Fatalf("replayed: %d %s, plan %s", code, body, f.planOf(t))
	}
	deleted := eventAt("evt_2", "customer.subscription.deleted", time.Now().Add(time.Second), map[string]any{"id": "sub_1", "customer": "cus_acme", "status": "canceled"})
	if code, body := post(t, f.h, deleted, secret); code != 200 || f.planOf(t) != "(none)" {
		t.Fatalf("deleted: %d %s, plan %s", code, body, f.planOf(t))
	}
	nov := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	if code, body := post(t, f.h, event("evt_3", "invoice.finalized", map[string]any{"id": "in_1", "customer": "cus_acme", "period_start": nov.Unix()}), secret); code != 200 || status(body) != "processed" {
		t.Fatalf("invoice.finalized: %d %s", code, body)
	}
	if f.count(t, `SELECT count(*) FROM billing_periods WHERE tenant = 'acme' AND period_start = $1 AND invoice_id = 'in_1'`, nov) != 1 {
		t.Fatal("period not closed")
	}
	if code, _ := post(t, f.h, event("evt_4", "billing.meter.error_report_triggered", map[string]any{"meter": "mtr_1", "summary": "no customer", "reason": map[string]any{"error_count": 3}}), secret); code != 200 {
		t.Fatal("meter error report refused")
	}
	if f.count(t, `SELECT count(*) FROM stripe_meter_errors WHERE meter = 'mtr_1'`) != 1 {
		t.Fatal("meter error not recorded")
	}
	if code, body := post(t, f.h, event("evt_5", "charge.succeeded", map[string]any{}), secret); code != 200 || status(body) != "ignored" {
		t.Fatalf("other events: %d %s", code, body)
	}
	if n := f.count(t, `SELECT count(*) FROM stripe_webhook_events WHERE outcome = 'processed'`); n != 4 {
		t.Errorf("%d events recorded as processed, want 4", n)
	}
	want := map[string]float64{"refused_signature": 1, "processed": 4, "duplicate": 1, "ignored": 1}
	if got := outcomes(t, f.reg); !equal(got, want) {
		t.Errorf("metering_stripe_webhooks_total = %v, want %v", got, want)
	}
}

func equal(a, b map[string]float64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestOlderUpdateNeverOverwritesNewer: Stripe does not deliver in order.
// Whatever the order of delivery, the tenant ends on the plan of the
// latest event about the subscription (by created, then event id).
func TestOlderUpdateNeverOverwritesNewer(t *testing.T) {
	t.Parallel()
	t2 := time.Now().Truncate(time.Second)
	t1 := t2.Add(-time.Minute)
	type delivery struct {
		payload []byte
		status  string
	}
	tests := []struct {
		name       string
		deliveries []delivery
		plan       string
	}{
		{"newer then older: the older is stale", []delivery{
			{eventAt("evt_new", "customer.subscription.updated", t2, subscription("sub_1", "pro")), "processed"},
			{eventAt("evt_old", "customer.subscription.updated", t1, subscription("sub_1", "free")), "stale"},
		}, "pro"},
		{"in order: both apply", []delivery{
			{eventAt("evt_old", "customer.subscription.updated", t1, subscription("sub_1", "free")), "processed"},
			{eventAt("evt_new", "customer.subscription.updated", t2, subscription("sub_1", "pro")), "processed"},
		}, "pro"},
		{"deleted then an older update: stays cancelled", []delivery{
			{eventAt("evt_del", "customer.subscription.deleted", t2, map[string]any{"id": "sub_1", "customer": "cus_acme", "status": "canceled"}), "processed"},
			{eventAt("evt_upd", "customer.subscription.updated", t1, subscription("sub_1", "pro")), "stale"},
		}, "(none)"},
		{"created after its own update: stale", []delivery{
			{eventAt("evt_upd", "customer.subscription.updated", t2, subscription("sub_1", "team")), "processed"},
			{eventAt("evt_crt", "customer.subscription.created", t1, subscription("sub_1", "pro")), "stale"},
		}, "team"},
		{"same second, higher id first: the lower id is stale", []delivery{
			{eventAt("evt_B", "customer.subscription.updated", t2, subscription("sub_1", "pro")), "processed"},
			{eventAt("evt_A", "customer.subscription.updated", t2, subscription("sub_1", "team")), "stale"},
		}, "pro"},
		{"same second, lower id first: the higher id applies", []delivery{
			{eventAt("evt_A", "customer.subscription.updated", t2, subscription("sub_1", "team")), "processed"},
			{eventAt("evt_B", "customer.subscription.updated", t2, subscription("sub_1", "pro")), "processed"},
		}, "pro"},
		{"another subscription is ordered on its own", []delivery{
			{eventAt("evt_new", "customer.subscription.updated", t2, subscription("sub_1", "pro")), "processed"},
			{eventAt("evt_other", "customer.subscription.updated", t1, subscription("sub_2", "team")), "processed"},
		}, "team"},
		{"a newer event that could not be applied still outranks an older one", []delivery{
			{eventAt("evt_new", "customer.subscription.updated", t2, subscription("sub_1", "enterprise")), "recorded_undecodable"},
			{eventAt("evt_old", "customer.subscription.updated", t1, subscription("sub_1", "pro")), "stale"},
		}, "free"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			for i, d := range tt.deliveries {
				if code, body := post(t, f.h, d.payload, secret); code != 200 || status(body) != d.status {
					t.Fatalf("delivery %d: %d %s, want 200 %s", i+1, code, body, d.status)
				}
			}
			if got := f.planOf(t); got != tt.plan {
				t.Fatalf("plan %s, want %s", got, tt.plan)
			}
			// A redelivery of any of them changes nothing either.
			for _, d := range tt.deliveries {
				if code, body := post(t, f.h, d.payload, secret); code != 200 || status(body) != "duplicate" {
					t.Fatalf("redelivery: %d %s", code, body)
				}
			}
			if got := f.planOf(t); got != tt.plan {
				t.Fatalf("after redelivery: plan %s, want %s", got, tt.plan)
			}
		})
	}
}

// TestUndecodableEventsAreRecorded: a signed event whose content cannot
// take effect is acknowledged (200, so Stripe stops retrying) and kept
// with its reason and its bytes; its redelivery is a duplicate.
func TestUndecodableEventsAreRecorded(t *testing.T) {
	t.Parallel()
	now := time.Now()
	tests := []struct {
		name    string
		payload []byte
		eventID string // as recorded
		reason  string
	}{
		{"not JSON", []byte("not json at all"), "sha256:", "not a JSON object"},
		{"no id", []byte(`{"type":"customer.subscription.updated","created":1,"data":{"object":{}}}`), "sha256:", "not a Stripe event id"},
		{"created not a number", []byte(`{"id":"evt_c","type":"invoice.finalized","created":"yesterday","data":{"object":{}}}`), "evt_c", "created"},
		{"no data.object", []byte(`{"id":"evt_d","type":"customer.subscription.updated","created":1}`), "evt_d", "without data.object"},
		{"customer as an object", eventAt("evt_e", "customer.subscription.updated", now, map[string]any{"id": "sub_1", "customer": map[string]any{"id": "cus_acme"}, "status": "active"}), "evt_e", "decoding"},
		{"subscription without metadata.plan", eventAt("evt_f", "customer.subscription.updated", now, map[string]any{"id": "sub_1", "customer": "cus_acme", "status": "active"}), "evt_f", "no metadata.plan"},
		{"unknown plan", eventAt("evt_g", "customer.subscription.updated", now, subscription("sub_1", "enterprise")), "evt_g", `plan "enterprise"`},
		{"unknown customer", eventAt("evt_h", "customer.subscription.updated", now, map[string]any{"id": "sub_1", "customer": "cus_nobody", "status": "active", "metadata": map[string]string{"plan": "pro"}}), "evt_h", `no tenant has stripe_customer_id "cus_nobody"`},
		{"NUL in the plan", eventAt("evt_i", "customer.subscription.updated", now, subscription("sub_1", "pro\x00")), "evt_i", "SQLSTATE 22"},
		{"invoice without period_start", eventAt("evt_j", "invoice.finalized", now, map[string]any{"id": "in_1", "customer": "cus_acme"}), "evt_j", "without period_start"},
		{"invoice of an unknown customer", eventAt("evt_k", "invoice.finalized", now, map[string]any{"id": "in_1", "customer": "cus_nobody", "period_start": now.Unix()}), "evt_k", "no tenant"},
		{"meter error report of the wrong shape", eventAt("evt_l", "billing.meter.error_report_triggered", now, map[string]any{"meter": "mtr_1", "reason": map[string]any{"error_count": "three"}}), "evt_l", "decoding"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			for i := range 2 {
				code, body := post(t, f.h, tt.payload, secret)
				want := []string{"recorded_undecodable", "duplicate"}[i]
				if code != 200 || status(body) != want {
					t.Fatalf("delivery %d: %d %s, want 200 %s", i+1, code, body, want)
				}
			}
			var id, reason string
			var payload []byte
			err := f.db.Pool.QueryRow(context.Background(), `SELECT event_id, reason, payload FROM stripe_webhook_undecodable`).Scan(&id, &reason, &payload)
			if err != nil {
				t.Fatalf("one row in stripe_webhook_undecodable: %v", err)
			}
			if !strings.HasPrefix(id, tt.eventID) || !strings.Contains(reason, tt.reason) || !bytes.Equal(payload, tt.payload) {
				t.Errorf("recorded %s %q %q, want id %s..., a reason with %q and the payload", id, reason, payload, tt.eventID, tt.reason)
			}
			if n := f.count(t, `SELECT count(*) FROM stripe_webhook_events WHERE event_id = $1 AND outcome = 'undecodable'`, id); n != 1 {
				t.Errorf("%d stripe_webhook_events rows for %s", n, id)
			}
			if f.planOf(t) != "free" || f.count(t, `SELECT count(*) FROM billing_periods`) != 0 {
				t.Error("an undecodable event had an effect")
			}
			want := map[string]float64{"recorded_undecodable": 1, "duplicate": 1}
			if got := outcomes(t, f.reg); !equal(got, want) {
				t.Errorf("metering_stripe_webhooks_total = %v, want %v", got, want)
			}
		})
	}
}

// TestPostgresDownAnswers5xx: a failure of ours is not the event's fault:
// Stripe must retry, so the answer is 5xx, and it names no address.
func TestPostgresDownAnswers5xx(t *testing.T) {
	t.Parallel()
	closed := newFixture(t)
	closed.db.Pool.Close()
	unreachable, err := pgxpool.New(context.Background(), "postgres://postgres@127.0.0.1:1/metering?sslmode=disable&connect_timeout=2")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unreachable.Close)
	tests := []struct {
		name string
		pool *pgxpool.Pool
	}{{"closed pool", closed.db.Pool}, {"nothing listening", unreachable}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			reg := prometheus.NewRegistry()
			h := stripewebhook.New(tt.pool, secret, slog.New(slog.DiscardHandler), stripewebhook.WithRegisterer(reg))
			for _, payload := range [][]byte{
				event("evt_1", "customer.subscription.updated", subscription("sub_1", "pro")),
				[]byte("not json"), // even an undecodable one must be recorded before it is acknowledged
			} {
				code, body := post(t, h, payload, secret)
				if code < 500 || !strings.Contains(body, `"internal"`) || strings.Contains(body, "127.0.0.1") || strings.Contains(body, "pool") {
					t.Fatalf("%d %s, want 5xx internal with no detail", code, body)
				}
			}
			if got := outcomes(t, reg); !equal(got, map[string]float64{"failed": 2}) {
				t.Errorf("metering_stripe_webhooks_total = %v, want failed 2", got)
			}
		})
	}
}

// TestSignatureAndTolerance: only a signature made with the secret, at a
// time within 5 minutes of our clock either way, gets the event read;
// refusals name no internal detail.
func TestSignatureAndTolerance(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	payload := event("evt_1", "customer.subscription.updated", subscription("sub_1", "pro"))
	now := time.Now()
	future := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: payload, Secret: secret, Timestamp: now.Add(time.Hour)})
	tests := []struct {
		name   string
		header string
		status int
		code   string
	}{
		{"no header", "", 400, "invalid_signature"},
		{"garbage header", "nonsense", 400, "invalid_signature"},
		{"wrong secret", header(payload, "whsec_wrong", now), 400, "invalid_signature"},
		{"wrong secret, old timestamp", header(payload, "whsec_wrong", now.Add(-time.Hour)), 400, "invalid_signature"},
		{"wrong secret, future timestamp", header(payload, "whsec_wrong", now.Add(time.Hour)), 400, "invalid_signature"},
		{"signed an hour ahead", future.Header, 400, "timestamp_in_future"},
		{"an older t before the signed future one", "t=" + itoa(now.Unix()) + "," + future.Header, 400, "timestamp_in_future"},
		{"signed an hour ago", header(payload, secret, now.Add(-time.Hour)), 400, "timestamp_too_old"},
		{"signed 6 minutes ahead", header(payload, secret, now.Add(6*time.Minute)), 400, "timestamp_in_future"},
	}
	for _, tt := range tests {
		code, body := postWithHeader(f.h, payload, tt.header)
		var e struct {
			Error struct{ Code, Message string }
		}
		_ = json.Unmarshal([]byte(body), &e)
		if code != tt.status || e.Error.Code != tt.code {
			t.Errorf("%s: %d %s, want %d %s", tt.name, code, body, tt.status, tt.code)
		}
		for _, leak := range []string{"webhook", "tolerance", "whsec", secret} {
			if strings.Contains(e.Error.Message, leak) {
				t.Errorf("%s: message %q shows %q", tt.name, e.Error.Message, leak)
			}
		}
	}
	if f.planOf(t) != "free" || f.count(t, `SELECT count(*) FROM stripe_webhook_events`) != 0 {
		t.Fatal("a refused delivery had an effect")
	}
	want := map[string]float64{"refused_signature": 5, "refused_future": 3, "refused_too_old": 1}
	if got := outcomes(t, f.reg); !equal(got, want) {
		t.Errorf("metering_stripe_webhooks_total = %v, want %v", got, want)
	}
	// 4 minutes ahead is within tolerance (clocks drift).
	if code, body := signedAt(t, f.h, payload, secret, now.Add(4*time.Minute)); code != 200 || f.planOf(t) != "pro" {
		t.Fatalf("signed 4 minutes ahead: %d %s", code, body)
	}
	big := append(bytes.Repeat([]byte(" "), stripewebhook.MaxPayload), payload...)
	if code, body := post(t, f.h, big, secret); code != 413 || !strings.Contains(body, "payload_too_large") {
		t.Fatalf("a body over 1 MiB: %d %s", code, body)
	}
	r := httptest.NewRequest("POST", "/webhooks/stripe", io.MultiReader(strings.NewReader("{"), iotest.ErrReader(errors.New("connection reset by 10.0.0.7"))))
	w := httptest.NewRecorder()
	f.h.ServeHTTP(w, r)
	if w.Code != 400 || !strings.Contains(w.Body.String(), "malformed_body") || strings.Contains(w.Body.String(), "10.0.0.7") {
		t.Fatalf("an unreadable body: %d %s", w.Code, w.Body.String())
	}
	if got := outcomes(t, f.reg); got["refused_body"] != 2 || got["processed"] != 1 {
		t.Errorf("metering_stripe_webhooks_total = %v, want 2 refused_body and 1 processed", got)
	}
}

func header(payload []byte, sign string, at time.Time) string {
	return webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: payload, Secret: sign, Timestamp: at}).Header
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
