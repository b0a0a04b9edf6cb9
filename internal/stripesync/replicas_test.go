package stripesync_test

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/usagemeter/metering/internal/stripeapi"
	"github.com/usagemeter/metering/internal/stripesync"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/testkit/stripefake"
	"github.com/usagemeter/metering/internal/windows"
)

// meteredTruth is the test's copy of what Postgres has metered, updated
// under the write lock together with the database, so that the Stripe
// test server's OnTotal hook (under the read lock) compares each running
// total with the metered total of that very instant.
type meteredTruth struct {
	mu         sync.RWMutex
	value      map[string]int64 // customer/event name → metered this month
	checked    atomic.Int64
	violations atomic.Int64
	first      atomic.Value // string
}

func (m *meteredTruth) onTotal(r stripefake.RunningTotal) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	m.checked.Add(1)
	if want := m.value[r.Customer+"/"+r.EventName]; r.Total > want {
		if m.violations.Add(1) == 1 {
			m.first.Store(fmt.Sprintf("Stripe's running total of %s/%s reached %d (event %s of %d) while only %d was metered",
				r.Customer, r.EventName, r.Total, r.Identifier, r.Value, want))
		}
	}
}

// TestTwoBillersNeverOverReport runs two billers, each with its own pool,
// syncing the same tenant-metric-months at the same time against one
// database and one Stripe test server that injects faults, while usage
// grows and each biller is "killed" (its context cancelled mid-sync) at
// random. After every meter event Stripe accepts, its running total for
// the customer, meter and month must not exceed the metered total of that
// instant; at the end they must be equal.
func TestTwoBillersNeverOverReport(t *testing.T) {
	tests := []struct {
		name   string
		faults stripefake.Config
	}{
		{"no faults", stripefake.Config{Latency: 2 * time.Millisecond}},
		{"faults and timeouts", stripefake.Config{FaultRate: 0.1, Seed: 7, Latency: 2 * time.Millisecond}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			const tenants, rounds = 8, 60
			db := pgtest.New(t)
			truth := &meteredTruth{value: map[string]int64{}}
			cfg := tt.faults
			cfg.OnTotal = truth.onTotal
			fake := stripefake.New(cfg)
			hs := httptest.NewServer(fake)
			t.Cleanup(func() { fake.Close(); hs.Close() })
			for _, m := range metrics3 {
				fake.EnsureMeter(m)
			}
			db.Exec(t, `INSERT INTO plans (name) VALUES ('pro')`)
			for _, m := range metrics3 {
				db.Exec(t, `INSERT INTO plan_quotas (plan, metric, quota_limit, period, stripe_event_name) VALUES ('pro', $1, NULL, 'month', $1)`, m)
			}
			db.Exec(t, `INSERT INTO tenants (tenant, plan, stripe_customer_id) SELECT 't' || g, 'pro', 'cus_t' || g FROM generate_series(1, $1) g`, tenants)
			month := windows.Month.Start(time.Now())

			newBiller := func() *stripesync.Biller {
				pool, err := pgxpool.New(context.Background(), db.URL)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(pool.Close)
				return stripesync.New(pool, stripeapi.NewClient("sk_test_123", hs.URL, 200*time.Millisecond), stripesync.Config{
					RatePerSecond: 2000, BackoffMin: time.Millisecond, BackoffMax: 10 * time.Millisecond, MaxAttempts: 6,
					Concurrency: 4, Logger: slog.New(slog.DiscardHandler),
				})
			}
			billers := []*stripesync.Biller{newBiller(), newBiller()}

			stop := make(chan struct{})
			var syncs, kills [2]atomic.Int64
			var wg sync.WaitGroup
			for i, b := range billers {
				wg.Go(func() {
					rng := rand.New(rand.NewPCG(uint64(i), 42))
					for {
						select {
						case <-stop:
							return
						default:
						}
						ctx, cancel := context.WithCancel(context.Background())
						if rng.IntN(3) == 0 { // killed somewhere in the middle of this sync
							time.AfterFunc(time.Duration(rng.IntN(30))*time.Millisecond, cancel)
							kills[i].Add(1)
						}
						_, _ = b.Sync(ctx)
						cancel()
						syncs[i].Add(1)
					}
				})
			}
			rng := rand.New(rand.NewPCG(1, 2))
			for range rounds {
				truth.mu.Lock()
				for i := 1; i <= tenants; i++ {
					for _, m := range metrics3 {
						v := int64(1 + rng.IntN(50))
						db.Exec(t, `INSERT INTO usage_windows (tenant, meter, granularity, window_start, value, events) VALUES ($1, $2, 'month', $3, $4, 1)
							ON CONFLICT (tenant, meter, group_key, granularity, window_start) DO UPDATE SET value = usage_windows.value + EXCLUDED.value`,
							fmt.Sprint("t", i), m, month, v)
						truth.value[fmt.Sprintf("cus_t%d/%s", i, m)] += v
					}
				}
				truth.mu.Unlock()
				time.Sleep(time.Duration(rng.IntN(15)) * time.Millisecond)
			}
			close(stop)
			wg.Wait()

			// Both billers finish the work, concurrently, without kills or faults.
			fake.SetFaultRate(0)
			ctx := context.Background()
			for range 5 {
				var done sync.WaitGroup
				for _, b := range billers {
					done.Go(func() {
						if _, _, err := b.SendOpen(ctx, true); err != nil {
							t.Errorf("draining: %v", err)
						}
						if _, err := b.Sync(ctx); err != nil {
							t.Errorf("final sync: %v", err)
						}
					})
				}
				done.Wait()
			}
			if v := truth.violations.Load(); v > 0 {
				t.Fatalf("%d running totals above the metered total; first: %s", v, truth.first.Load())
			}
			_, end := windows.Month.Span(month)
			for key, want := range truth.value {
				customer, metric, _ := strings.Cut(key, "/")
				if got := fake.Total(metric, customer, month, end); got != want {
					t.Errorf("%s: Stripe %d, metered %d", key, got, want)
				}
			}
			ids := map[string]bool{}
			for _, e := range fake.Events() {
				if ids[e.EventName+e.Identifier] {
					t.Fatalf("identifier %s accepted twice", e.Identifier)
				}
				ids[e.EventName+e.Identifier] = true
			}
			t.Logf("%d running totals checked, none above the metered total; %d meter events from %d calls; syncs %d+%d, kills %d+%d; faults %v",
				truth.checked.Load(), len(ids), fake.Calls()["POST /v1/billing/meter_events"], syncs[0].Load(), syncs[1].Load(),
				kills[0].Load(), kills[1].Load(), fake.Faults())
		})
	}
}

// TestTwoBillersPlanningOnePairAtOnce makes the race deterministic: the
// first biller has read a pair's totals (metered 100, claimed 0) when
// usage grows to 150 and the second biller syncs the same pair. With the
// locks the second waits, re-reads after the first recorded its intent and
// claims only the rest: Stripe gets 150. Without them (the control) both
// claim from 0 and Stripe gets 250 for 150 of usage.
func TestTwoBillersPlanningOnePairAtOnce(t *testing.T) {
	tests := []struct {
		name         string
		locks        bool
		claimed      int64
		secondWaited bool
	}{
		{"with the locks", true, 150, true},
		{"without the locks (control)", false, 250, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, 1, stripefake.Config{})
			ctx := context.Background()
			hs := httptest.NewServer(f.fake)
			t.Cleanup(hs.Close)
			pool, err := pgxpool.New(ctx, f.db.URL)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(pool.Close)
			second := stripesync.New(pool, stripeapi.NewClient("sk_test_123", hs.URL, time.Second), stripesync.Config{
				RatePerSecond: 1000, Logger: slog.New(slog.DiscardHandler)})
			if !tt.locks {
				stripesync.WithoutPlanningLocks(f.biller)
				stripesync.WithoutPlanningLocks(second)
			}
			f.meter("t1", "api_calls", 100)
			secondDone := make(chan error, 1)
			waited := false
			stripesync.AfterPlanningRead(f.biller, func() {
				stripesync.AfterPlanningRead(f.biller, nil)
				f.meter("t1", "api_calls", 150)
				go func() { _, err := second.Sync(ctx); secondDone <- err }()
				select {
				case err := <-secondDone:
					secondDone <- err
				case <-time.After(500 * time.Millisecond):
					waited = true // blocked on the first biller's locks
				}
			})
			if _, err := f.biller.Sync(ctx); err != nil {
				t.Fatalf("first biller: %v", err)
			}
			if err := <-secondDone; err != nil {
				t.Fatalf("second biller: %v", err)
			}
			var claimed int64
			_ = f.db.Pool.QueryRow(ctx, `SELECT sum(delta)::bigint FROM billing_pushes WHERE status <> 'cancelled'`).Scan(&claimed)
			if claimed != tt.claimed || waited != tt.secondWaited {
				t.Fatalf("claimed %d (second biller waited: %v), want %d (%v)", claimed, waited, tt.claimed, tt.secondWaited)
			}
			if got := f.stripeTotal("t1", "api_calls"); got != tt.claimed {
				t.Fatalf("Stripe %d, want %d", got, tt.claimed)
			}
		})
	}
}
