package stripesync_test

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/stripeapi"
	"github.com/usagemeter/metering/internal/stripesync"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/testkit/stripefake"
	"github.com/usagemeter/metering/internal/windows"
)

// BenchmarkSync10kTenants syncs and reconciles 10,000 tenants × 3 metrics
// against the Stripe test server and reports wall times and Stripe calls
// per tenant-metric: with a delta (target exactly 1) and without (target 0).
// Run it with -benchtime 1x.
func BenchmarkSync10kTenants(b *testing.B) {
	tenants := 10000
	if n, err := strconv.Atoi(os.Getenv("BENCH_TENANTS")); err == nil && n > 0 {
		tenants = n // make bench-quick uses fewer
	}
	for b.Loop() {
		b.StopTimer()
		db := pgtest.New(b)
		fake := stripefake.New(stripefake.Config{})
		srv := httptest.NewServer(fake)
		for _, m := range metrics3 {
			fake.EnsureMeter(m)
		}
		db.Exec(b, `INSERT INTO plans (name) VALUES ('pro')`)
		for _, m := range metrics3 {
			db.Exec(b, `INSERT INTO plan_quotas (plan, metric, period, stripe_event_name) VALUES ('pro', $1, 'month', $1)`, m)
		}
		db.Exec(b, `INSERT INTO tenants (tenant, plan, stripe_customer_id) SELECT 't' || g, 'pro', 'cus_t' || g FROM generate_series(1, $1) g`, tenants)
		month := windows.Month.Start(time.Now())
		db.Exec(b, `INSERT INTO usage_windows (tenant, meter, granularity, window_start, value, events)
			SELECT 't' || g, m, 'month', $1, g, 1 FROM generate_series(1, $2) g, unnest(ARRAY['api_calls', 'tokens', 'bytes']) m`, month, tenants)
		bl := stripesync.New(db.Pool, stripeapi.NewClient("sk_test_bench", srv.URL, 10*time.Second), stripesync.Config{
			RatePerSecond: 1e6, Concurrency: 16, Logger: slog.New(slog.DiscardHandler)})
		ctx := context.Background()
		pairs := float64(tenants * len(metrics3))
		calls := func() float64 { return float64(fake.Calls()["POST /v1/billing/meter_events"]) }
		b.StartTimer()

		start := time.Now()
		res, err := bl.Sync(ctx)
		if err != nil || res.Sent != tenants*len(metrics3) {
			b.Fatalf("sync: %+v, %v", res, err)
		}
		b.ReportMetric(time.Since(start).Seconds(), "sync-all-s")
		b.ReportMetric(calls()/pairs, "calls/pair-with-delta")

		before := calls()
		start = time.Now()
		if _, err := bl.Sync(ctx); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(time.Since(start).Seconds(), "sync-idle-s")
		b.ReportMetric((calls()-before)/pairs, "calls/pair-without-delta")

		start = time.Now()
		rows, err := bl.Reconcile(ctx, month)
		if err != nil || len(rows) != tenants*len(metrics3) {
			b.Fatalf("reconcile: %d rows, %v", len(rows), err)
		}
		for _, r := range rows {
			if r.Status != stripesync.StatusOK {
				b.Fatalf("row %+v", r)
			}
		}
		b.ReportMetric(time.Since(start).Seconds(), "reconcile-s")
		b.StopTimer()
		srv.Close()
		fake.Close()
		b.StartTimer()
	}
}
