package httpguard_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/aggregator"
	"github.com/usagemeter/metering/internal/biller"
	"github.com/usagemeter/metering/internal/config"
	"github.com/usagemeter/metering/internal/httpguard"
	"github.com/usagemeter/metering/internal/service"
	"github.com/usagemeter/metering/internal/testkit/kafkatest"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// run starts a service's Run in the background and returns its base URL;
// it stops when the test ends.
func run(t *testing.T, start func(ctx context.Context, ready func(net.Addr)) error) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() { done <- start(ctx, func(a net.Addr) { addrc <- a }) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case a := <-addrc:
		return "http://" + a.String()
	case err := <-done:
		t.Fatalf("Run: %v", err)
		return ""
	}
}

// TestAggregatorAndBillerSendSecurityHeaders starts the aggregator and the
// biller as their commands do and asks every route each serves (and an
// unknown one), without and with bad input: every answer carries the
// security headers. (Ingest's routes are covered in package ingest.) The
// reconciliation with Stripe unreachable names no address.
func TestAggregatorAndBillerSendSecurityHeaders(t *testing.T) {
	db := pgtest.NewEmpty(t)
	kc := kafkatest.Start(t)
	env := func(extra map[string]string) func(string) string {
		return func(k string) string { return extra[k] }
	}
	common := []string{"-database-url", db.URL, "-kafka-brokers", kc.Addr(), "-http-addr", "127.0.0.1:0"}
	acfg, _, err := config.LoadAggregator("aggregator", common, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	bcfg, _, err := config.LoadBiller("biller", common, env(map[string]string{
		"STRIPE_API_KEY": "sk_test_headers", "STRIPE_API_BASE": "http://127.0.0.1:1", "ADMIN_API_KEY": "headers-admin-key",
		"STRIPE_WEBHOOK_SECRET": "whsec_headers", "STRIPE_MAX_ATTEMPTS": "1", "STRIPE_TIMEOUT": "1s",
	}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	services := map[string]struct {
		base   string
		routes []string
	}{
		"aggregator": {run(t, func(ctx context.Context, ready func(net.Addr)) error { return aggregator.Run(ctx, acfg, log, ready) }), nil},
		"biller":     {run(t, func(ctx context.Context, ready func(net.Addr)) error { return biller.Run(ctx, bcfg, log, ready) }), biller.Routes},
	}
	for name, s := range services {
		routes := append(append([]string{"GET /nowhere", "DELETE /healthz"}, service.Routes...), s.routes...)
		for _, route := range routes {
			method, path, _ := strings.Cut(route, " ")
			for _, key := range []string{"", "headers-admin-key"} {
				req, _ := http.NewRequest(method, s.base+path+"?period=2026-13", strings.NewReader("{}"))
				if key != "" {
					req.Header.Set("Authorization", "Bearer "+key)
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if missing := httpguard.Missing(resp.Header); len(missing) > 0 {
					t.Errorf("%s %s (key %v): %d without %v", name, route, key != "", resp.StatusCode, missing)
				}
			}
		}
	}

	// With Stripe unreachable, the reconciliation says so without its
	// address or the client's error.
	month := time.Now().UTC().Format("2006-01")
	db.Exec(t, `INSERT INTO plans (name) VALUES ('free')`)
	db.Exec(t, `INSERT INTO plan_quotas (plan, metric, period, stripe_event_name) VALUES ('free', 'api_calls', 'month', 'api_calls')`)
	db.Exec(t, `INSERT INTO tenants (tenant, plan, stripe_customer_id) VALUES ('acme', 'free', 'cus_acme')`)
	db.Exec(t, `INSERT INTO usage_windows (tenant, meter, granularity, window_start, value, events) VALUES ('acme', 'api_calls', 'month', $1, 5, 5)`,
		time.Date(time.Now().UTC().Year(), time.Now().UTC().Month(), 1, 0, 0, 0, 0, time.UTC))
	req, _ := http.NewRequest("GET", services["biller"].base+"/v1/reconciliation?period="+month, nil)
	req.Header.Set("Authorization", "Bearer headers-admin-key")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("reconciliation with Stripe down: %d %s, want 502", resp.StatusCode, raw)
	}
	for _, leak := range []string{"127.0.0.1", ":1/", "dial tcp", "refused", "http://"} {
		if strings.Contains(string(raw), leak) {
			t.Errorf("reconciliation error names %q: %s", leak, raw)
		}
	}
}
