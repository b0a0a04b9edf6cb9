package biller_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/auth"
	"github.com/usagemeter/metering/internal/biller"
	"github.com/usagemeter/metering/internal/config"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/auditlog"
	"github.com/usagemeter/metering/internal/testkit/kafkatest"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/testkit/stripefake"
)

// TestBillerRefusesRevokedAndExpiredKeys: the biller's reconciliation
// route takes the bootstrap key until ingest (or anyone on the database)
// revokes it, answers 401 expired_key to an expired key, and 503 when it
// cannot check a key at all.
func TestBillerRefusesRevokedAndExpiredKeys(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	kc := kafkatest.Start(t)
	stripe := httptest.NewServer(stripefake.New(stripefake.Config{}))
	t.Cleanup(stripe.Close)
	const bootstrap = "biller-test-admin-key"
	cfg, _, err := config.LoadBiller("biller", []string{"-http-addr", "127.0.0.1:0", "-sync-interval", "1h"}, func(k string) string {
		return map[string]string{"DATABASE_URL": db.URL, "KAFKA_BROKERS": kc.Addr(), "STRIPE_API_KEY": "sk_test_auth",
			"STRIPE_API_BASE": stripe.URL, "ADMIN_API_KEY": bootstrap}[k]
	}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	addrc := make(chan net.Addr, 1)
	go func() { done <- biller.Run(ctx, cfg, slog.New(slog.DiscardHandler), func(a net.Addr) { addrc <- a }) }()
	t.Cleanup(func() { cancel(); <-done })
	var base string
	select {
	case a := <-addrc:
		base = "http://" + a.String()
	case err := <-done:
		t.Fatalf("Run: %v", err)
	}
	get := func(key string) (int, string) {
		req, _ := http.NewRequest("GET", base+"/v1/reconciliation?period=2026-11", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct {
			Error struct{ Code string } `json:"error"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body.Error.Code
	}
	st := accounts.New(db.Pool)
	ingest := auth.New(st, bootstrap) // ingest's Authenticator, on the same database
	_, viewer, err := ingest.CreateKey(ctx, auth.KeySpec{Role: accounts.RoleViewer})
	if err != nil {
		t.Fatal(err)
	}
	soon := time.Now().Add(time.Hour)
	expiring, expiringSecret, err := ingest.CreateKey(ctx, auth.KeySpec{Role: accounts.RoleViewer, ExpiresAt: &soon})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{bootstrap, viewer, expiringSecret} {
		if code, _ := get(k); code != 200 {
			t.Fatalf("before: %d", code)
		}
	}
	if _, err := ingest.RevokeBootstrap(ctx, auditlog.By{}); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1::uuid`, expiring.ID)
	if code, _ := get(bootstrap); code != 401 {
		t.Fatalf("revoked bootstrap key: %d, want 401", code)
	}
	if code, errCode := get(expiringSecret); code != 401 || errCode != "expired_key" {
		t.Fatalf("expired key: %d %s, want 401 expired_key", code, errCode)
	}
	if code, _ := get(viewer); code != 200 {
		t.Fatalf("other keys keep working: %d", code)
	}
	// A key that cannot be checked (the keys table unreachable) is not
	// the caller's fault: 503 to retry, not 401.
	db.Exec(t, `ALTER TABLE api_keys RENAME TO api_keys_away`)
	if code, errCode := get(viewer); code != 503 || errCode != "unavailable" {
		t.Fatalf("keys unreadable: %d %s, want 503 unavailable", code, errCode)
	}
}
