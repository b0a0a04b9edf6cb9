package aggregator_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/aggregator"
	"github.com/usagemeter/metering/internal/cli"
	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/rebuild"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/metertruth"
	"github.com/usagemeter/metering/internal/topics"
)

// TestRebuildMatchesLiveConsumption consumes events live, damages some
// windows, and checks that a rebuild from the Kafka log finds exactly the
// damage, and after the swap the windows equal the ground truth again.
func TestRebuildMatchesLiveConsumption(t *testing.T) {
	s := newStack(t)
	tr := newTruth()
	cfg := s.config()
	stop := s.start(cfg)
	s.feed(tr, 4000, 0.3, 11)
	s.waitConsumed("metering-aggregator")
	ctx := context.Background()
	opts := rebuild.Options{
		DatabaseURL: s.db.URL, Brokers: s.kc.Brokers(), Topic: topics.UsageEvents, Group: "metering-aggregator",
		From: time.Now().Add(-24 * time.Hour), Horizon: cfg.DedupHorizon, Logger: slog.New(slog.DiscardHandler),
	}

	// Untouched: the rebuild finds nothing to change, with the live consumer running.
	rep, err := rebuild.Run(ctx, s.db.Pool, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Changes) != 0 || !rep.Swapped || rep.Records != 4000 {
		t.Fatalf("clean rebuild: %d changes, swapped %v, %d records: %+v", len(rep.Changes), rep.Swapped, rep.Records, rep.Changes)
	}
	stop()

	// Damage: one window too high, one lost.
	s.db.Exec(t, `UPDATE usage_windows SET value = value + 5 WHERE ctid = (SELECT ctid FROM usage_windows WHERE granularity = 'hour' LIMIT 1)`)
	s.db.Exec(t, `DELETE FROM usage_windows WHERE ctid = (SELECT ctid FROM usage_windows WHERE granularity = 'minute' LIMIT 1)`)

	opts.DryRun = true
	rep, err = rebuild.Run(ctx, s.db.Pool, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Changes) != 2 || rep.Swapped {
		t.Fatalf("dry run: %+v", rep.Changes)
	}
	for _, c := range rep.Changes {
		switch c.Granularity {
		case "hour":
			if c.Before == c.After || c.Before == "" {
				t.Errorf("hour change %+v", c)
			}
		case "minute":
			if c.Before != "" || c.After == "" {
				t.Errorf("minute change %+v", c)
			}
		}
	}
	// The same dry run as on-call types it.
	var out strings.Builder
	from := opts.From.UTC().Format(time.RFC3339)
	if err := aggregator.RebuildCommand(ctx, cfg, slog.New(slog.DiscardHandler), []string{"--from", from, "--dry-run"}, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"replayed 4000 records", "2 changed", "TENANT", "BEFORE", "none (0 events)", "dry run: nothing changed"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("rebuild --dry-run output lacks %q:\n%s", want, out.String())
		}
	}
	var rebuilds int
	_ = s.db.Pool.QueryRow(ctx, `SELECT count(*) FROM audit_log WHERE action = 'windows.rebuild'`).Scan(&rebuilds)
	if rebuilds != 0 {
		t.Errorf("a dry run was audited %d times", rebuilds)
	}
	opts.DryRun = false
	rep, err = rebuild.Run(ctx, s.db.Pool, opts)
	if err != nil || !rep.Swapped || len(rep.Changes) != 2 {
		t.Fatalf("rebuild: %+v, %v", rep, err)
	}
	s.checkTruth(tr)
	var schemas int
	_ = s.db.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'rebuild_%'`).Scan(&schemas)
	if schemas != 0 {
		t.Errorf("%d shadow schemas left behind", schemas)
	}
}

// TestRebuildKeepsCountedConflictsAndRefusesOldWindows: a held conflict
// an operator counted is not in the log's verdicts, yet a rebuild keeps
// it; windows older than the aggregator accepts are refused, not wiped.
func TestRebuildKeepsCountedConflictsAndRefusesOldWindows(t *testing.T) {
	s := newStack(t)
	cfg := s.config()
	stop := s.start(cfg)
	ctx := context.Background()
	now := time.Now().UTC()
	orig := events.Event{ID: "order-1", Tenant: "acme", Metric: "api_calls", Value: 2, Time: now.Add(-time.Minute)}
	other := orig
	other.Metric, other.Value = "tokens", 30
	raise := orig
	raise.Value = 9
	if err := s.producer.Emit(ctx, orig); err != nil {
		t.Fatal(err)
	}
	if err := s.producer.Emit(ctx, other, raise); err != nil {
		t.Fatal(err)
	}
	s.waitConsumed("metering-aggregator")
	stop()
	var id int64
	if err := s.db.Pool.QueryRow(ctx, `SELECT id FROM ledger_conflicts WHERE resolution = 'held'`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	agg := rollup.New(s.db.Pool, rollup.Config{Group: cfg.ConsumerGroup, Topic: topics.UsageEvents})
	if _, err := agg.ResolveConflict(ctx, id, usagedata.ResolutionCounted, "oncall", "tokens of the order"); err != nil {
		t.Fatal(err)
	}
	month := windowsMonth(now)
	opts := rebuild.Options{
		DatabaseURL: s.db.URL, Brokers: s.kc.Brokers(), Topic: topics.UsageEvents, Group: "metering-aggregator",
		From: month, Horizon: cfg.DedupHorizon, MaxLag: cfg.MaxLag, Logger: slog.New(slog.DiscardHandler),
	}
	rep, err := rebuild.Run(ctx, s.db.Pool, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Changes) != 0 || !rep.Swapped {
		t.Fatalf("rebuild changed %+v", rep.Changes)
	}
	if v := s.value("acme", "tokens", "month", month); v != "30" {
		t.Errorf("counted conflict after the rebuild = %s, want 30", v)
	}
	if v := s.value("acme", "api_calls", "month", month); v != "9" {
		t.Errorf("raised event after the rebuild = %s, want 9", v)
	}
	opts.From = now.Add(-cfg.DedupHorizon - cfg.MaxLag - 31*24*time.Hour)
	if _, err := rebuild.Run(ctx, s.db.Pool, opts); !errors.Is(err, rebuild.ErrTooOld) {
		t.Fatalf("rebuild of windows beyond the acceptance window: %v", err)
	}
}

// TestRebuildKeepsTheLiveVerdictOnForgedTimestamps: a record whose
// producer stamped it two days ahead, with an event two days ahead, is a
// dead letter live; a rebuild three days later, when that timestamp has
// passed, must not count it.
func TestRebuildKeepsTheLiveVerdictOnForgedTimestamps(t *testing.T) {
	s := newStack(t)
	cfg := s.config()
	stop := s.start(cfg)
	ctx := context.Background()
	now := time.Now().UTC()
	ahead := now.Add(48 * time.Hour)
	forged := events.Event{ID: "ahead-1", Tenant: "acme", Metric: "api_calls", Value: 500, Time: ahead}
	honest := events.Event{ID: "now-1", Tenant: "acme", Metric: "api_calls", Value: 1, Time: now}
	s.kc.Write(t, topics.UsageEvents, rollup.Record{Key: []byte("acme"), Value: forged.AppendJSON(nil), Time: ahead})
	if err := s.producer.Emit(ctx, honest); err != nil {
		t.Fatal(err)
	}
	s.waitConsumed("metering-aggregator")
	stop()
	var dead int
	_ = s.db.Pool.QueryRow(ctx, `SELECT count(*) FROM usage_dlq WHERE error_class = 'invalid'`).Scan(&dead)
	if dead != 1 {
		t.Fatalf("%d invalid dead letters live, want the forged record", dead)
	}
	later := now.Add(72 * time.Hour)
	rep, err := rebuild.Run(ctx, s.db.Pool, rebuild.Options{
		DatabaseURL: s.db.URL, Brokers: s.kc.Brokers(), Topic: topics.UsageEvents, Group: "metering-aggregator",
		From: windowsMonth(now), Horizon: cfg.DedupHorizon, MaxLag: cfg.MaxLag, Now: func() time.Time { return later },
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Changes) != 0 || !rep.Swapped {
		t.Fatalf("rebuild changed %+v", rep.Changes)
	}
}

// TestRebuildBackfillsANewMeter counts events live before any meter is
// defined, then defines a meter of each aggregation and rebuilds only
// those: their windows become exactly what live counting from the start
// would have made (the ground truth), every implicit meter's window stays
// as it was, and the command reports the windows it created.
func TestRebuildBackfillsANewMeter(t *testing.T) {
	s := newStack(t)
	tr := newTruth()
	cfg := s.config()
	stop := s.start(cfg)
	s.feed(tr, 3000, 0.3, 21)
	s.waitConsumed("metering-aggregator")
	stop()
	ctx := context.Background()
	before := metertruth.Read(t, s.db, []meter.Definition{meter.Implicit("api_calls"), meter.Implicit("tokens")})
	s.defineMeters()

	names := make([]string, len(crashMeters))
	args := []string{"--from", time.Now().Add(-24 * time.Hour).UTC().Format(time.RFC3339)}
	for i, d := range crashMeters {
		names[i] = d.Name
		args = append(args, "--meter", d.Name)
	}
	var out strings.Builder
	if err := aggregator.RebuildCommand(ctx, cfg, slog.New(slog.DiscardHandler), args, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"rebuilt the windows of meter " + strings.Join(names, ", "), "replayed 3000 records", "GROUP", "swapped"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("rebuild --meter output lacks %q:\n%.2000s", want, out.String())
		}
	}
	// The swap is audited once, by the command's actor, with its meters.
	var audited string
	_ = s.db.Pool.QueryRow(ctx, `SELECT string_agg(actor || ' ' || target || ' ' || (after->'meters')::text, E'\n') FROM audit_log WHERE action = 'windows.rebuild'`).Scan(&audited)
	metersJSON, _ := json.Marshal(names)
	if want := (cli.Audit{}).Who() + " windows:" + time.Now().Add(-24*time.Hour).UTC().Format("2006-01") + " " + strings.ReplaceAll(string(metersJSON), ",", ", "); audited != want {
		t.Errorf("rebuild audit rows: %q, want %q", audited, want)
	}
	metertruth.Diff(t, metertruth.Fold(crashMeters, tr.counted), metertruth.Read(t, s.db, crashMeters))
	metertruth.Diff(t, before, metertruth.Read(t, s.db, []meter.Definition{meter.Implicit("api_calls"), meter.Implicit("tokens")}))

	// Counting goes on from the rebuilt state, exactly.
	stop = s.start(cfg)
	s.feed(tr, 1000, 0.3, 22)
	s.waitConsumed("metering-aggregator")
	stop()
	s.checkTruth(tr)

	// A name that is neither a meter nor a counted metric is refused.
	err := aggregator.RebuildCommand(ctx, cfg, slog.New(slog.DiscardHandler), []string{"--from", args[1], "--meter", "nosuch"}, &out)
	if !errors.Is(err, rebuild.ErrUnknownMeter) {
		t.Fatalf("--meter nosuch: %v, want ErrUnknownMeter", err)
	}
}
