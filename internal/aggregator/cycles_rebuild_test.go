package aggregator_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/billingcycle"
	"github.com/usagemeter/metering/internal/rebuild"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/topics"
)

// TestRebuildFollowsBillingCycles: a tenant whose monthly cycle was reset
// an hour ago (recorded before it took effect) and one on a yearly cycle
// have their month windows on their billing periods: usage before the
// change in the period that ends there, usage from it on in the period
// it starts, nothing counted twice. A rebuild from the log places every
// event where live counting did (no change), and puts a damaged period
// window back.
func TestRebuildFollowsBillingCycles(t *testing.T) {
	s := newStack(t)
	cfg := s.config()
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Second)
	change := now.Add(-time.Hour)
	yearFrom := now.Add(-3 * time.Hour)
	store := accounts.New(s.db.Pool)
	cycles := map[string]billingcycle.Change{
		"acme":   {From: change, Cycle: billingcycle.Cycle{Anchor: change, Interval: billingcycle.Month, Count: 1}},
		"yearly": {From: yearFrom, Cycle: billingcycle.Cycle{Anchor: yearFrom.AddDate(-1, 0, 0), Interval: billingcycle.Year, Count: 1}},
	}
	for tenant, ch := range cycles {
		if _, err := store.PutTenant(ctx, accounts.Tenant{Tenant: tenant}); err != nil {
			t.Fatal(err)
		}
		// Recorded well before it took effect, as the margin requires.
		if err := pgx.BeginFunc(ctx, s.db.Pool, func(tx pgx.Tx) error {
			_, err := accounts.SetCycle(ctx, tx, tenant, ch, ch.From.Add(-time.Hour), "admin")
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	stop := s.start(cfg)
	evs := []events.Event{
		{ID: "a1", Tenant: "acme", Metric: "api_calls", Value: 10, Time: change.Add(-30 * time.Minute)},
		{ID: "a2", Tenant: "acme", Metric: "api_calls", Value: 1, Time: change.Add(-time.Microsecond)},
		{ID: "a3", Tenant: "acme", Metric: "api_calls", Value: 2, Time: change},
		{ID: "a4", Tenant: "acme", Metric: "api_calls", Value: 20, Time: change.Add(30 * time.Minute)},
		{ID: "y1", Tenant: "yearly", Metric: "api_calls", Value: 5, Time: yearFrom.Add(-time.Hour)},
		{ID: "y2", Tenant: "yearly", Metric: "api_calls", Value: 7, Time: yearFrom.Add(time.Hour)},
	}
	if err := s.producer.Emit(ctx, evs...); err != nil {
		t.Fatal(err)
	}
	// A resend counts once, whatever period it falls in.
	if err := s.producer.Emit(ctx, evs[3]); err != nil {
		t.Fatal(err)
	}
	s.waitConsumed("metering-aggregator")
	stop()
	want := []struct {
		tenant string
		start  time.Time
		value  string
	}{
		{"acme", windowsMonth(change.Add(-30 * time.Minute)), "11"},
		{"acme", change, "22"},
		{"yearly", windowsMonth(yearFrom.Add(-time.Hour)), "5"},
		{"yearly", yearFrom, "7"},
	}
	if windowsMonth(change.Add(-30*time.Minute)) != windowsMonth(change.Add(-time.Microsecond)) {
		t.Skip("the hour before the change straddles a calendar month")
	}
	check := func(when string) {
		t.Helper()
		for _, w := range want {
			if v := s.value(w.tenant, "api_calls", "month", w.start); v != w.value {
				t.Errorf("%s: %s's month window at %s = %s, want %s", when, w.tenant, w.start.Format(time.RFC3339), v, w.value)
			}
		}
		var n int
		if err := s.db.Pool.QueryRow(ctx, `SELECT count(*) FROM usage_windows WHERE granularity = 'month'`).Scan(&n); err != nil || n != len(want) {
			t.Errorf("%s: %d month windows (%v), want %d", when, n, err, len(want))
		}
	}
	check("live")
	opts := rebuild.Options{
		DatabaseURL: s.db.URL, Brokers: s.kc.Brokers(), Topic: topics.UsageEvents, Group: "metering-aggregator",
		From: now.Add(-24 * time.Hour), Horizon: cfg.DedupHorizon, MaxLag: cfg.MaxLag, Logger: slog.New(slog.DiscardHandler),
	}
	rep, err := rebuild.Run(ctx, s.db.Pool, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Changes) != 0 || !rep.Swapped {
		t.Fatalf("a rebuild after a cycle change differs from live counting: %+v", rep.Changes)
	}
	s.db.Exec(t, `UPDATE usage_windows SET value = 100 WHERE tenant = 'acme' AND granularity = 'month' AND window_start = '`+change.Format(time.RFC3339)+`'`)
	rep, err = rebuild.Run(ctx, s.db.Pool, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Changes) != 1 || !rep.Swapped {
		t.Fatalf("rebuild of a damaged period: %+v", rep.Changes)
	}
	check("rebuilt")
}
