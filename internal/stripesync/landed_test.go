package stripesync_test

import (
	"context"
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

// newClockFixture is newFixture with one settable clock for the biller and
// the Stripe test server, starting on the 3rd of the current month.
func newClockFixture(t *testing.T, tenants int, fake stripefake.Config) (*fixture, *stripefake.Clock) {
	t.Helper()
	clk := stripefake.NewClock(windows.Month.Start(time.Now()).Add(2*24*time.Hour + 12*time.Hour))
	fake.Now = clk.Now
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
	f := &fixture{t: t, db: db, fake: srv, now: clk.Now(), url: hs.URL}
	f.biller = stripesync.New(db.Pool, stripeapi.NewClient("sk_test_123", hs.URL, 500*time.Millisecond), stripesync.Config{
		RatePerSecond: 1000, BackoffMin: time.Millisecond, BackoffMax: 5 * time.Millisecond, MaxAttempts: 3,
		Now: clk.Now, Logger: slog.New(slog.DiscardHandler),
	})
	return f, clk
}

// leaveOpen leaves an open intent that Stripe has, as a biller killed
// after its call reached Stripe and before it recorded the outcome: the
// sync's push is refused, then sent straight to Stripe under its
// identifier, and put back to 'intent'.
func leaveOpen(t *testing.T, f *fixture) {
	t.Helper()
	ctx := context.Background()
	f.fake.SetReject(func(string, string) bool { return true })
	if res, err := f.biller.Sync(ctx); err != nil || res.Dead != 1 {
		t.Fatalf("sync: %+v %v", res, err)
	}
	f.fake.SetReject(nil)
	var name, id, customer, value string
	var ts time.Time
	if err := f.db.Pool.QueryRow(ctx, `UPDATE billing_pushes SET status = 'intent' WHERE status = 'dead'
		RETURNING event_name, identifier, stripe_customer_id, delta::text, event_timestamp`).Scan(&name, &id, &customer, &value, &ts); err != nil {
		t.Fatal(err)
	}
	if err := stripeapi.NewClient("sk_test_123", f.url, time.Second).SendMeterEvent(ctx, name, id, customer, value, ts); err != nil {
		t.Fatalf("sending the push to Stripe: %v", err)
	}
}

// Old open pushes: a dead letter replayed days later, or an intent left
// open through a long outage, possibly reached Stripe on an attempt whose
// answer was lost. Once Stripe has forgotten their identifiers, re-sending
// them as they are counts them twice; the biller checks Stripe's summary
// first and sends only what is missing.
func TestOldOpenPushesAreCheckedAgainstStripe(t *testing.T) {
	timeouts := stripefake.Config{FaultRate: 1, Faults: []string{stripefake.FaultTimeout}}
	tests := []struct {
		name string
		fake stripefake.Config
		// setup leaves open pushes for t1/tokens, metered at want, and
		// says whether they are dead letters (replayed) or intents (synced).
		setup   func(t *testing.T, f *fixture) (want int64, dead bool)
		skip    bool // send them as they are, as before the check
		after   time.Duration
		stripe  int64 // Stripe's total at the end
		result  stripesync.SendResult
		replays int // events accepted again under an identifier Stripe had before
	}{
		{
			name: "dead letter that had landed, replayed 3 days later, without the check",
			fake: timeouts, skip: true, after: 72 * time.Hour,
			setup: func(t *testing.T, f *fixture) (int64, bool) {
				f.meter("t1", "tokens", 77)
				_, _ = f.biller.Sync(context.Background())
				return 77, true
			},
			stripe: 154, result: stripesync.SendResult{Sent: 1}, replays: 1,
		},
		{
			name: "dead letter that had landed, replayed 3 days later",
			fake: timeouts, after: 72 * time.Hour,
			setup: func(t *testing.T, f *fixture) (int64, bool) {
				f.meter("t1", "tokens", 77)
				_, _ = f.biller.Sync(context.Background())
				return 77, true
			},
			stripe: 77, result: stripesync.SendResult{Landed: 1},
		},
		{
			name: "dead letter that never landed, replayed 3 days later",
			fake: stripefake.Config{Reject: func(string, string) bool { return true }}, after: 72 * time.Hour,
			setup: func(t *testing.T, f *fixture) (int64, bool) {
				f.meter("t1", "tokens", 40)
				_, _ = f.biller.Sync(context.Background())
				f.fake.SetReject(nil)
				return 40, true
			},
			stripe: 40, result: stripesync.SendResult{Replaced: 1, Sent: 1},
		},
		{
			name: "two dead letters, the newer had landed: only the shortfall is sent",
			fake: stripefake.Config{Faults: []string{stripefake.FaultTimeout}, Reject: func(string, string) bool { return true }}, after: 72 * time.Hour,
			setup: func(t *testing.T, f *fixture) (int64, bool) {
				f.meter("t1", "tokens", 30)
				_, _ = f.biller.Sync(context.Background()) // rejected: 30 never lands
				f.fake.SetReject(nil)
				f.fake.SetFaultRate(1) // Stripe records 50, the answer is lost
				f.meter("t1", "tokens", 80)
				_, _ = f.biller.Sync(context.Background())
				f.fake.SetFaultRate(0)
				return 80, true
			},
			// 50 of the 80 arrived: the older push (30) is taken as landed,
			// the newer is split into 20 landed and a new push of 30.
			stripe: 80, result: stripesync.SendResult{Landed: 1, Replaced: 1, Sent: 1},
		},
		{
			name: "intent that had landed, resumed after a 2-day outage, without the check",
			skip: true, after: 48 * time.Hour,
			setup: func(t *testing.T, f *fixture) (int64, bool) {
				f.meter("t1", "tokens", 64)
				leaveOpen(t, f)
				return 64, false
			},
			stripe: 128, result: stripesync.SendResult{Sent: 1}, replays: 1,
		},
		{
			name:  "intent that had landed, resumed after a 2-day outage",
			after: 48 * time.Hour,
			setup: func(t *testing.T, f *fixture) (int64, bool) {
				f.meter("t1", "tokens", 64)
				leaveOpen(t, f)
				return 64, false
			},
			stripe: 64, result: stripesync.SendResult{Landed: 1},
		},
		{
			name:  "intent that had landed, resumed 20 hours later: Stripe still dedups, sent as it is",
			after: 20 * time.Hour,
			setup: func(t *testing.T, f *fixture) (int64, bool) {
				f.meter("t1", "tokens", 64)
				leaveOpen(t, f)
				return 64, false
			},
			stripe: 64, result: stripesync.SendResult{Sent: 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f, clk := newClockFixture(t, 1, tt.fake)
			if tt.skip {
				stripesync.SkipLandedCheck(f.biller)
			}
			want, dead := tt.setup(t, f)
			f.fake.SetFaultRate(0)
			before := len(f.fake.Events())
			clk.Advance(tt.after)
			ctx := context.Background()
			var res stripesync.SendResult
			if dead {
				r, err := f.biller.Replay(ctx, nil, true, "oncall")
				if err != nil {
					t.Fatalf("replay: %v", err)
				}
				res = r
			} else {
				r, err := f.biller.Sync(ctx)
				if err != nil {
					t.Fatalf("sync: %v", err)
				}
				res = stripesync.SendResult{Sent: r.Sent, Dead: r.Dead, Landed: r.Landed, Replaced: r.Replaced, Waiting: r.Waiting}
			}
			if res != tt.result {
				t.Errorf("result %+v, want %+v", res, tt.result)
			}
			start, end := windows.Month.Span(f.now)
			if got := f.fake.Total("tokens", "cus_t1", start, end); got != tt.stripe {
				t.Errorf("Stripe's total %d, want %d (metered %d)", got, tt.stripe, want)
			}
			seen, replays := map[string]bool{}, 0
			for i, e := range f.fake.Events() {
				if seen[e.Identifier] && i >= before {
					replays++
				}
				seen[e.Identifier] = true
			}
			if replays != tt.replays {
				t.Errorf("%d identifiers accepted a second time, want %d", replays, tt.replays)
			}
			if tt.skip {
				return
			}
			// Nothing is left open, the ledger adds up to what was
			// metered, and the reconciliation agrees with Stripe.
			if intents, deadN, err := f.biller.CountOpenPushes(ctx); err != nil || intents+deadN != 0 {
				t.Fatalf("open pushes after: %d intents, %d dead, %v", intents, deadN, err)
			}
			if again, err := f.biller.Sync(ctx); err != nil || again.Intents+again.Sent != 0 {
				t.Fatalf("a later sync still had work: %+v %v", again, err)
			}
			clk.Advance(time.Hour)
			rows, err := f.biller.Reconcile(ctx, f.now)
			if err != nil {
				t.Fatal(err)
			}
			if r := rowsByKey(t, rows)["t1/tokens"]; r.Status != stripesync.StatusOK || r.Reported.Int64() != want || r.Stripe.Int64() != want {
				t.Errorf("reconciliation %+v (%s)", r, r.Note)
			}
			var notes []string
			_ = f.db.Pool.QueryRow(ctx, `SELECT coalesce(array_agg(status || ': ' || last_error ORDER BY id), '{}') FROM billing_pushes
				WHERE last_error LIKE 'landed%' OR last_error LIKE 'replaced%' OR last_error LIKE 'shortfall%'`).Scan(&notes)
			if res.Landed+res.Replaced > 0 && len(notes) == 0 {
				t.Errorf("no push carries a note of the check")
			}
			t.Logf("result %+v; notes:\n%s", res, strings.Join(notes, "\n"))
		})
	}
}

// The summary is not trusted while a push of its group may still be in
// flight or not yet aggregated: an old dead letter replayed right after a
// fresh push of the same customer, meter and month waits, new pushes of
// the group are held back meanwhile, and once the group is quiet both are
// settled exactly.
func TestOldPushWaitsForAQuietGroup(t *testing.T) {
	t.Parallel()
	f, clk := newClockFixture(t, 1, stripefake.Config{FaultRate: 1, Faults: []string{stripefake.FaultTimeout}})
	ctx := context.Background()
	f.meter("t1", "bytes", 10)
	_, _ = f.biller.Sync(ctx) // landed, dead-lettered
	f.fake.SetFaultRate(0)
	clk.Advance(72 * time.Hour)
	f.meter("t1", "bytes", 25)
	if res, err := f.biller.Sync(ctx); err != nil || res.Intents != 1 || res.Sent != 1 {
		t.Fatalf("sync of new usage: %+v %v", res, err)
	}
	res, err := f.biller.Replay(ctx, nil, true, "oncall")
	if err != nil || res != (stripesync.SendResult{Waiting: 1}) {
		t.Fatalf("replay right after a push of the group: %+v %v, want it to wait", res, err)
	}
	// Usage keeps flowing: its push is held back, or the group would
	// never be quiet.
	clk.Advance(time.Minute)
	f.meter("t1", "bytes", 40)
	if res, err := f.biller.Sync(ctx); err != nil || res.Intents != 1 || res.Sent != 0 || res.Waiting != 1 {
		t.Fatalf("sync of more usage while the group waits: %+v %v, want the new push held back", res, err)
	}
	if got := f.stripeTotal("t1", "bytes"); got != 25 {
		t.Fatalf("Stripe %d while the group waits, want 25", got)
	}
	// Quiet: the old push had landed (10 of the 10 + 15 open arrived); the
	// held-back one is replaced by a new push for its 15.
	clk.Advance(10 * time.Minute)
	sres, err := f.biller.Sync(ctx)
	if err != nil || sres.Landed != 1 || sres.Replaced != 1 || sres.Sent != 1 || sres.Waiting != 0 {
		t.Fatalf("sync once the group is quiet: %+v %v", sres, err)
	}
	if got := f.stripeTotal("t1", "bytes"); got != 40 {
		t.Fatalf("Stripe %d, want 40", got)
	}
	if intents, dead, _ := f.biller.CountOpenPushes(ctx); intents+dead != 0 {
		t.Fatalf("%d intents and %d dead letters left", intents, dead)
	}
}
