package stripesync_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/stripeapi"
	"github.com/usagemeter/metering/internal/stripesync"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/testkit/stripefake"
	"github.com/usagemeter/metering/internal/windows"
)

var metrics3 = []string{"api_calls", "tokens", "bytes"}

type fixture struct {
	t      *testing.T
	db     *pgtest.DB
	fake   *stripefake.Server
	biller *stripesync.Biller
	now    time.Time
	url    string // of the Stripe test server
}

func newFixture(t *testing.T, tenants int, fake stripefake.Config) *fixture {
	t.Helper()
	db := pgtest.New(t)
	srv := stripefake.New(fake)
	hs := httptest.NewServer(srv)
	t.Cleanup(func() { srv.Close(); hs.Close() })
	for _, m := range metrics3 {
		srv.EnsureMeter(m)
	}
	db.Exec(t, `INSERT INTO plans (name) VALUES ('pro')`)
	for _, m := range metrics3 {
		db.Exec(t, `INSERT INTO plan_quotas (plan, metric, quota_limit, period, stripe_event_name) VALUES ('pro', $1, NULL, 'month', $1)`, m)
	}
	db.Exec(t, `INSERT INTO tenants (tenant, plan, stripe_customer_id) SELECT 't' || g, 'pro', 'cus_t' || g FROM generate_series(1, $1) g`, tenants)
	f := &fixture{t: t, db: db, fake: srv, now: time.Now().UTC()}
	f.biller = stripesync.New(db.Pool, stripeapi.NewClient("sk_test_123", hs.URL, 300*time.Millisecond), stripesync.Config{
		RatePerSecond: 1000, BackoffMin: time.Millisecond, BackoffMax: 20 * time.Millisecond, MaxAttempts: 12,
		Logger: slog.New(slog.DiscardHandler),
	})
	return f
}

// meter sets the month window of tenant/metric, as the aggregator would.
func (f *fixture) meter(tenant, metric string, value int64) {
	f.t.Helper()
	f.db.Exec(f.t, `INSERT INTO usage_windows (tenant, meter, granularity, window_start, value, events) VALUES ($1, $2, 'month', $3, $4, 1)
		ON CONFLICT (tenant, meter, group_key, granularity, window_start) DO UPDATE SET value = EXCLUDED.value`, tenant, metric, windows.Month.Start(f.now), value)
}

func (f *fixture) stripeTotal(tenant, metric string) int64 {
	start, end := windows.Month.Span(f.now)
	return f.fake.Total(metric, "cus_"+tenant, start, end)
}

func TestSyncSendsDeltasOnce(t *testing.T) {
	f := newFixture(t, 1, stripefake.Config{})
	ctx := context.Background()
	f.meter("t1", "api_calls", 100)
	res, err := f.biller.Sync(ctx)
	if err != nil || res.Intents != 1 || res.Sent != 1 {
		t.Fatalf("first sync: %+v, %v", res, err)
	}
	calls := f.fake.Calls()["POST /v1/billing/meter_events"]
	// Nothing new: no call at all.
	if res, err := f.biller.Sync(ctx); err != nil || res.Intents != 0 || f.fake.Calls()["POST /v1/billing/meter_events"] != calls {
		t.Fatalf("idle sync: %+v, %v, calls %v", res, err, f.fake.Calls())
	}
	f.meter("t1", "api_calls", 130)
	if _, err := f.biller.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := f.stripeTotal("t1", "api_calls"); got != 130 {
		t.Fatalf("Stripe total %d, want 130", got)
	}
	evs := f.fake.Events()
	if len(evs) != 2 || evs[0].Value != 100 || evs[1].Value != 30 || evs[0].Identifier == evs[1].Identifier {
		t.Fatalf("events %+v", evs)
	}
	start, end := windows.Month.Span(f.now)
	for _, e := range evs {
		if e.Timestamp.Before(start) || !e.Timestamp.Before(end) {
			t.Errorf("timestamp %v outside the period", e.Timestamp)
		}
	}
}

func TestFaultsOfEveryKindStillAddUp(t *testing.T) {
	f := newFixture(t, 40, stripefake.Config{FaultRate: 0.10, Seed: 3})
	ctx := context.Background()
	want := map[string]int64{}
	for round := range 4 {
		for i := 1; i <= 40; i++ {
			for j, m := range metrics3 {
				v := int64((round+1)*(i*10+j) + round)
				key := fmt.Sprintf("t%d/%s", i, m)
				want[key] = v
				f.meter(fmt.Sprintf("t%d", i), m, v)
			}
		}
		if _, err := f.biller.Sync(ctx); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
	}
	// Pushes that exhausted their attempts wait in the DLQ; replay them.
	if _, _, err := f.biller.SendOpen(ctx, true); err != nil {
		t.Fatal(err)
	}
	for key, v := range want {
		tenant, metric, _ := strings.Cut(key, "/")
		if got := f.stripeTotal(tenant, metric); got != v {
			t.Errorf("%s: Stripe %d, Postgres %d", key, got, v)
		}
	}
	faults := f.fake.Faults()
	for _, kind := range stripefake.AllFaults {
		if faults[kind] == 0 {
			t.Errorf("no %s fault was injected: %v", kind, faults)
		}
	}
	t.Logf("faults injected: %v", faults)
}
