package biller_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/auth"
	"github.com/usagemeter/metering/internal/biller"
	"github.com/usagemeter/metering/internal/periodclose"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/stripeapi"
	"github.com/usagemeter/metering/internal/stripesync"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/testkit/stripefake"
	"github.com/usagemeter/metering/internal/windows"
)

// TestBillingDLQRoutes: operators list and show the billing DLQ; an
// admin replays (sent once to Stripe) or discards a dead push with a
// note; everything else is refused with a reason.
func TestBillingDLQRoutes(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	fake := stripefake.New(stripefake.Config{})
	fakeSrv := httptest.NewServer(fake)
	t.Cleanup(func() { fake.Close(); fakeSrv.Close() })
	fake.EnsureMeter("api_calls")
	db.Exec(t, `INSERT INTO plans (name) VALUES ('pro')`)
	db.Exec(t, `INSERT INTO plan_quotas (plan, metric, quota_limit, period, stripe_event_name) VALUES ('pro', 'api_calls', NULL, 'month', 'api_calls')`)
	db.Exec(t, `INSERT INTO tenants (tenant, plan, stripe_customer_id) VALUES ('t1', 'pro', 'cus_t1'), ('t2', 'pro', 'cus_t2')`)
	month := windows.Month.Start(time.Now())
	db.Exec(t, `INSERT INTO usage_windows (tenant, meter, granularity, window_start, value, events) VALUES
		('t1', 'api_calls', 'month', $1, 10, 1), ('t2', 'api_calls', 'month', $1, 20, 1)`, month)
	b := stripesync.New(db.Pool, stripeapi.NewClient("sk_test_dlq", fakeSrv.URL, time.Second), stripesync.Config{
		RatePerSecond: 1000, BackoffMin: time.Millisecond, BackoffMax: 5 * time.Millisecond, MaxAttempts: 2, Logger: log})
	fake.SetReject(func(string, string) bool { return true })
	if res, err := b.Sync(ctx); err != nil || res.Dead != 2 {
		t.Fatalf("sync: %+v %v", res, err)
	}
	fake.SetReject(nil)
	st := accounts.New(db.Pool)
	const admin = "biller-dlq-admin-key"
	authn := auth.New(st, admin)
	_, viewer, err := authn.CreateKey(ctx, auth.KeySpec{Role: accounts.RoleViewer})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	biller.MountAPI(mux, authn, b, periodclose.New(db.Pool, periodclose.Config{Logger: log}), log)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	do := func(method, path, key, body string) (int, string) {
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(raw)
	}
	for _, s := range []struct {
		name, method, path, key, body string
		status                        int
		has                           string
	}{
		{"no key", "GET", "/v1/admin/dlq/billing", "", "", 401, "unauthorized"},
		{"viewer lists", "GET", "/v1/admin/dlq/billing", viewer, "", 200, `"tenant":"t2"`},
		{"viewer shows", "GET", "/v1/admin/dlq/billing/1", viewer, "", 200, `"status":"dead"`},
		{"unknown", "GET", "/v1/admin/dlq/billing/99", viewer, "", 404, "not_found"},
		{"not an id", "GET", "/v1/admin/dlq/billing/0", viewer, "", 400, "invalid_request"},
		{"viewer replays", "POST", "/v1/admin/dlq/billing/1/replay", viewer, `{"note":"n"}`, 403, "forbidden"},
		{"no note", "POST", "/v1/admin/dlq/billing/1/replay", admin, `{"note":""}`, 400, "invalid_request"},
		{"replay unknown", "POST", "/v1/admin/dlq/billing/99/replay", admin, `{"note":"n"}`, 404, "not_found"},
		{"replay", "POST", "/v1/admin/dlq/billing/1/replay", admin, `{"note":"customer fixed"}`, 200, `"status":"sent"`},
		{"replay again", "POST", "/v1/admin/dlq/billing/1/replay", admin, `{"note":"n"}`, 409, "not_dead"},
		{"discard sent", "POST", "/v1/admin/dlq/billing/1/discard", admin, `{"note":"n"}`, 409, "not_dead"},
		{"discard", "POST", "/v1/admin/dlq/billing/2/discard", admin, `{"note":"written off"}`, 200, `"status":"discarded"`},
		{"empty", "GET", "/v1/admin/dlq/billing", admin, "", 200, `{"dead_letters":[]}`},
	} {
		status, raw := do(s.method, s.path, s.key, s.body)
		if status != s.status || !strings.Contains(raw, s.has) {
			t.Errorf("%s: %d %s, want %d with %s", s.name, status, raw, s.status, s.has)
		}
	}
	var sent int
	for _, e := range fake.Events() {
		if !e.Cancelled {
			sent++
			if e.Customer != "cus_t1" || e.Value != 10 {
				t.Errorf("Stripe got %+v", e)
			}
		}
	}
	if sent != 1 {
		t.Errorf("Stripe got %d events, want 1", sent)
	}
	var note string
	if err := db.Pool.QueryRow(ctx, `SELECT note FROM audit_log WHERE action = 'dlq.billing.discard' AND actor = 'key:bootstrap'`).Scan(&note); err != nil || note != "written off" {
		t.Errorf("the discard's audit: %q %v", note, err)
	}
}
