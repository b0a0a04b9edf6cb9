package biller_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/auth"
	"github.com/usagemeter/metering/internal/biller"
	"github.com/usagemeter/metering/internal/config"
	"github.com/usagemeter/metering/internal/periodclose"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/stripeapi"
	"github.com/usagemeter/metering/internal/stripesync"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/testkit/stripefake"
	"github.com/usagemeter/metering/internal/windows"
)

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// TestHoldRoutesAndCommands: a spike on a plan with hold_on_anomaly is
// held; operators list it over HTTP and the CLI; an admin approves one
// and rejects another with a note; everything else is refused.
func TestHoldRoutesAndCommands(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	fake := stripefake.New(stripefake.Config{})
	fakeSrv := httptest.NewServer(fake)
	t.Cleanup(func() { fake.Close(); fakeSrv.Close() })
	fake.EnsureMeter("api_calls")
	st := accounts.New(db.Pool)
	if _, _, err := st.SavePlan(ctx, accounts.Plan{Name: "pro", HoldOnAnomaly: &accounts.HoldOnAnomaly{Factor: "10"},
		Quotas: []accounts.Quota{{Metric: "api_calls", Period: "month", StripeEventName: "api_calls"}}}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if p, err := st.Plan(ctx, "pro"); err != nil || p.HoldOnAnomaly == nil || p.HoldOnAnomaly.Factor != "10" {
		t.Fatalf("plan read back: %+v, %v", p, err)
	}
	db.Exec(t, `INSERT INTO tenants (tenant, plan, stripe_customer_id) VALUES ('t1', 'pro', 'cus_t1'), ('t2', 'pro', 'cus_t2')`)
	month := windows.Month.Start(time.Now())
	b := stripesync.New(db.Pool, stripeapi.NewClient("sk_test_hold", fakeSrv.URL, time.Second), stripesync.Config{
		RatePerSecond: 1000, BackoffMin: time.Millisecond, BackoffMax: 5 * time.Millisecond, MaxAttempts: 2, Logger: log})
	for _, v := range []int64{10, 1000} {
		db.Exec(t, `INSERT INTO usage_windows (tenant, meter, granularity, window_start, value, events) VALUES
			('t1', 'api_calls', 'month', $1, $2, 1), ('t2', 'api_calls', 'month', $1, $2, 1)
			ON CONFLICT (tenant, meter, group_key, granularity, window_start) DO UPDATE SET value = EXCLUDED.value`, month, v)
		if _, err := b.Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	holds, err := b.Holds(ctx)
	if err != nil || len(holds) != 2 {
		t.Fatalf("holds: %+v, %v", holds, err)
	}
	first, second := holds[0].ID, holds[1].ID

	const admin = "biller-hold-admin-key"
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
	id := func(n int64) string { return "/v1/admin/holds/" + itoa(n) }
	for _, s := range []struct {
		name, method, path, key, body string
		status                        int
		has                           string
	}{
		{"no key", "GET", "/v1/admin/holds", "", "", 401, "unauthorized"},
		{"viewer lists", "GET", "/v1/admin/holds", viewer, "", 200, `"reason":"delta 990 is more than 10`},
		{"viewer approves", "POST", id(first) + "/approve", viewer, `{"note":"n"}`, 403, "forbidden"},
		{"no note", "POST", id(first) + "/approve", admin, `{"note":" "}`, 400, "invalid_request"},
		{"unknown", "POST", "/v1/admin/holds/999/approve", admin, `{"note":"n"}`, 404, "not_found"},
		{"not an id", "POST", "/v1/admin/holds/x/reject", admin, `{"note":"n"}`, 400, "invalid_request"},
		{"approve", "POST", id(first) + "/approve", admin, `{"note":"expected growth"}`, 200, `"status":"sent"`},
		{"approve again", "POST", id(first) + "/approve", admin, `{"note":"n"}`, 409, "not_held"},
		{"reject", "POST", id(second) + "/reject", admin, `{"note":"test traffic"}`, 200, `"status":"discarded"`},
		{"empty", "GET", "/v1/admin/holds", admin, "", 200, `{"holds":[]}`},
	} {
		status, raw := do(s.method, s.path, s.key, s.body)
		if status != s.status || !strings.Contains(raw, s.has) {
			t.Errorf("%s: %d %s, want %d with %s", s.name, status, raw, s.status, s.has)
		}
	}
	want := map[string]int64{"cus_t1": 1000, "cus_t2": 10}
	got := map[string]int64{}
	for _, e := range fake.Events() {
		got[e.Customer] += e.Value
	}
	for c, v := range want {
		if got[c] != v {
			t.Errorf("Stripe has %d for %s, want %d", got[c], c, v)
		}
	}
	var n int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM audit_log WHERE actor = 'key:bootstrap' AND
		((action = 'billing.hold.approve' AND note = 'expected growth') OR (action = 'billing.hold.reject' AND note = 'test traffic'))`).Scan(&n); err != nil || n != 2 {
		t.Errorf("audit rows: %d, %v", n, err)
	}

	// The CLI: a third spike, listed, refused without a note, rejected.
	db.Exec(t, `UPDATE usage_windows SET value = 1000000 WHERE tenant = 't1'`)
	if res, err := b.Sync(ctx); err != nil || res.Held != 1 {
		t.Fatalf("third spike: %+v, %v", res, err)
	}
	holds, _ = b.Holds(ctx)
	cfg := config.Biller{}
	cfg.DatabaseURL, cfg.StripeAPIKey, cfg.StripeAPIBase = db.URL, "sk_test_hold", fakeSrv.URL
	var out bytes.Buffer
	if err := biller.HoldsCommand(ctx, cfg, log, "list", nil, &out); err != nil || !strings.Contains(out.String(), "1 pushes held for approval") {
		t.Fatalf("holds list: %v\n%s", err, out.String())
	}
	if err := biller.HoldsCommand(ctx, cfg, log, "reject", []string{itoa(holds[0].ID)}, &out); err == nil || !strings.Contains(err.Error(), "--note") {
		t.Fatalf("reject without a note: %v", err)
	}
	out.Reset()
	if err := biller.HoldsCommand(ctx, cfg, log, "reject", []string{itoa(holds[0].ID), "--note", "bot traffic", "--actor", "ops"}, &out); err != nil ||
		!strings.Contains(out.String(), "rejected") {
		t.Fatalf("holds reject: %v\n%s", err, out.String())
	}
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM audit_log WHERE actor = 'cli:ops' AND action = 'billing.hold.reject' AND note = 'bot traffic'`).Scan(&n); err != nil || n != 1 {
		t.Errorf("CLI audit rows: %d, %v", n, err)
	}
}
