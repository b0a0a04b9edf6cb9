package aggregator_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/rebuild"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/topics"
)

// TestRebuildReproducesAdjustments: adjustments are records of the log,
// so a rebuild replays them through the same code and finds the adjusted
// month windows; a damaged month window is put back to the adjusted value.
func TestRebuildReproducesAdjustments(t *testing.T) {
	s := newStack(t)
	cfg := s.config()
	stop := s.start(cfg)
	ctx := context.Background()
	now := time.Now().UTC()
	month := windowsMonth(now)
	if err := s.producer.Emit(ctx,
		events.Event{ID: "o-1", Tenant: "acme", Metric: "api_calls", Value: 40, Time: now.Add(-time.Minute)},
		events.Event{ID: "o-2", Tenant: "acme", Metric: "api_calls", Value: 60, Time: now.Add(-time.Minute)}); err != nil {
		t.Fatal(err)
	}
	s.waitConsumed("metering-aggregator")
	adj := rollup.Adjustment{ID: "5f0d3c1e-8a4b-4c2d-9e6f-7a8b9c0d1e2f", Tenant: "acme", Meter: "api_calls",
		Group: map[string]string{}, Period: month.Format("2006-01"), Amount: -25, Reason: "refund", Reference: "T-1"}
	rec, err := adj.SignedRecord(cfg.AdjustmentSigning.Keys, now)
	if err != nil {
		t.Fatal(err)
	}
	// Sent twice: counted once.
	s.kc.Write(t, topics.UsageEvents, rec, rec)
	s.waitConsumed("metering-aggregator")
	stop()
	if v := s.value("acme", "api_calls", "month", month); v != "75" {
		t.Fatalf("month window after the adjustment = %s, want 75", v)
	}
	opts := rebuild.Options{
		DatabaseURL: s.db.URL, Brokers: s.kc.Brokers(), Topic: topics.UsageEvents, Group: "metering-aggregator",
		From: month, Horizon: cfg.DedupHorizon, MaxLag: cfg.MaxLag, Logger: slog.New(slog.DiscardHandler),
		AdjustmentSignatures: cfg.AdjustmentSigning.Policy(),
	}
	rep, err := rebuild.Run(ctx, s.db.Pool, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Changes) != 0 || !rep.Swapped {
		t.Fatalf("a rebuild of adjusted windows changed %+v", rep.Changes)
	}
	s.db.Exec(t, `UPDATE usage_windows SET value = 100 WHERE tenant = 'acme' AND meter = 'api_calls' AND granularity = 'month'`)
	rep, err = rebuild.Run(ctx, s.db.Pool, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Changes) != 1 || !rep.Swapped {
		t.Fatalf("rebuild of a damaged month: %+v", rep.Changes)
	}
	if v := s.value("acme", "api_calls", "month", month); v != "75" {
		t.Errorf("month window after the rebuild = %s, want 75", v)
	}
	var n int
	if err := s.db.Pool.QueryRow(ctx, `SELECT count(*) FROM usage_adjustments`).Scan(&n); err != nil || n != 1 {
		t.Errorf("usage_adjustments rows = %d (%v)", n, err)
	}
}
