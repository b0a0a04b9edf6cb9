package biller_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/usagemeter/metering/internal/biller"
	"github.com/usagemeter/metering/internal/config"
	"github.com/usagemeter/metering/internal/record"
	"github.com/usagemeter/metering/internal/storage/webhooks"
	"github.com/usagemeter/metering/internal/testkit/kafkatest"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/testkit/stripefake"
)

// TestBillerSendsWebhooks runs the biller: a quota breach written to
// quota.breaches after it started and a credit grant expiring within
// GRANT_EXPIRING_WARNING each reach the tenant's endpoint once, signed
// with its secret.
func TestBillerSendsWebhooks(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	kc := kafkatest.Start(t)
	stripe := httptest.NewServer(stripefake.New(stripefake.Config{}))
	t.Cleanup(stripe.Close)
	var mu sync.Mutex
	got := map[string][]string{} // event id -> signature headers
	var bodies []string
	const secret = "whsec_biller_test"
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		got[r.Header.Get("Usagemeter-Event-Id")] = append(got[r.Header.Get("Usagemeter-Event-Id")], r.Header.Get("Usagemeter-Signature"))
		bodies = append(bodies, string(b))
		// The reference check: HMAC-SHA256 of "<t>.<body>".
		sig := r.Header.Get("Usagemeter-Signature")
		ts, rest, _ := strings.Cut(strings.TrimPrefix(sig, "t="), ",v1=")
		mac := hmac.New(sha256.New, []byte(secret))
		mac.Write([]byte(ts + "." + string(b)))
		if want := hex.EncodeToString(mac.Sum(nil)); rest != want {
			w.WriteHeader(http.StatusUnauthorized)
		}
	}))
	t.Cleanup(rcv.Close)
	now := time.Now().UTC()
	db.Exec(t, `INSERT INTO tenants (tenant) VALUES ('acme')`)
	if _, err := webhooks.CreateEndpoint(context.Background(), db.Pool, webhooks.Endpoint{ID: uuid.NewString(), Tenant: "acme", URL: rcv.URL,
		Kinds: []string{"quota.blocked", "grant.expiring"}, Secret: secret, CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	hour := now.Truncate(time.Hour)
	db.Exec(t, `INSERT INTO credit_grants (grant_id, tenant, meter, amount, effective_at, expires_at, priority, reason, source, created_by)
		VALUES ($1, 'acme', 'tokens', 500, $2, $3, 10, 'r', 'goodwill', 'test')`, uuid.NewString(), hour.Add(-time.Hour), hour.Add(24*time.Hour))
	cfg, _, err := config.LoadBiller("biller", []string{"-http-addr", "127.0.0.1:0", "-sync-interval", "1h"}, func(k string) string {
		return map[string]string{"DATABASE_URL": db.URL, "KAFKA_BROKERS": kc.Addr(), "STRIPE_API_KEY": "sk_test_webhooks",
			"STRIPE_API_BASE": stripe.URL, "WEBHOOK_POLL_INTERVAL": "50ms", "WEBHOOK_CHECK_INTERVAL": "200ms"}[k]
	}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	addrc := make(chan net.Addr, 1)
	go func() { done <- biller.Run(ctx, cfg, slog.New(slog.DiscardHandler), func(a net.Addr) { addrc <- a }) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-addrc:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor("the reader to store its offsets", func() bool {
		offs, _ := webhooks.Offsets(context.Background(), db.Pool, "quota.breaches")
		return len(offs) > 0
	})
	kc.Write(t, "quota.breaches", record.Record{Key: []byte("acme"), Value: []byte(
		`{"breach_id":"b-blocked","tenant":"acme","threshold":"blocked","detected_at":"2026-11-21T19:00:00Z"}`)})
	waitFor("both deliveries to land", func() bool {
		ds, _ := webhooks.ListDeliveries(context.Background(), db.Pool, webhooks.Filter{Status: webhooks.StatusDelivered})
		return len(ds) == 2
	})
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 || len(got["b-blocked"]) != 1 {
		t.Fatalf("receiver got %v", got)
	}
	joined := strings.Join(bodies, "\n")
	if !strings.Contains(joined, `"type":"quota.blocked"`) || !strings.Contains(joined, `"type":"grant.expiring"`) {
		t.Fatalf("bodies %s", joined)
	}
}
