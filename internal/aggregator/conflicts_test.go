package aggregator_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/aggregator"
	"github.com/usagemeter/metering/internal/cli"
	"github.com/usagemeter/metering/internal/config"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/topics"
)

func record(offset int64, e events.Event, stamped time.Time) rollup.Record {
	return rollup.Record{Offset: offset, Key: []byte(e.Tenant), Value: e.AppendJSON(nil), Time: stamped}
}

func windowValue(t *testing.T, db *pgtest.DB, metric, granularity string, start time.Time) string {
	t.Helper()
	var v string
	if err := db.Pool.QueryRow(context.Background(), `SELECT coalesce((SELECT value::text FROM usage_windows
		WHERE tenant = 'acme' AND meter = $1 AND granularity = $2 AND window_start = $3), 'none')`, metric, granularity, start).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestRetentionNeverMakesAnOldIDCountableAgain is the probe "an event 400
// days old was counted again after retention forgot its id": count an
// event, move the clock past retention, run retention, and resend the
// event with a forged record timestamp of its own time: not counted again.
// Just before the cutoff, retention keeps the id, and a resend whose
// timestamp is as late as the clock still trusts is a duplicate.
func TestRetentionNeverMakesAnOldIDCountableAgain(t *testing.T) {
	t.Parallel()
	horizon, lag := events.DefaultHorizon, rollup.DefaultMaxLag
	for _, tc := range []struct {
		name     string
		after    time.Duration // clock moved after counting
		stamp    func(clock, event time.Time) time.Time
		deletes  int64
		outcome  string
		retained bool
	}{
		{"past retention, forged old timestamp", horizon + lag + 3*24*time.Hour,
			func(_, event time.Time) time.Time { return event }, 1, "dead letter", false},
		{"past retention, timestamp now", horizon + lag + 3*24*time.Hour,
			func(clock, _ time.Time) time.Time { return clock }, 1, "dead letter", false},
		{"just before the cutoff, timestamp as old as trusted", horizon + lag - 2*time.Hour,
			func(clock, _ time.Time) time.Time { return clock.Add(-lag + time.Minute) }, 0, "duplicate", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			db := pgtest.New(t)
			ctx := context.Background()
			clock := time.Now().UTC()
			a := rollup.New(db.Pool, rollup.Config{Group: "test", Topic: topics.UsageEvents, Horizon: horizon, MaxLag: lag,
				Now: func() time.Time { return clock }, Logger: slog.New(slog.DiscardHandler)})
			e := events.Event{ID: "order-400", Tenant: "acme", Metric: "api_calls", Value: 7, Time: clock.Add(-time.Hour)}
			if res, err := a.Apply(ctx, 0, -1, []rollup.Record{record(0, e, clock)}); err != nil || res.Counted != 1 {
				t.Fatalf("first send: %+v, %v", res, err)
			}
			clock = clock.Add(tc.after)
			n, err := usagedata.DeleteExpired(ctx, db.Pool, rollup.LedgerCutoff(clock, horizon, lag))
			if err != nil || n != tc.deletes {
				t.Fatalf("retention deleted %d (%v), want %d", n, err, tc.deletes)
			}
			res, err := a.Apply(ctx, 0, 1, []rollup.Record{record(1, e, tc.stamp(clock, e.Time))})
			if err != nil {
				t.Fatal(err)
			}
			got := map[bool]string{true: "dead letter", false: "duplicate"}[res.DeadLettered == 1]
			if res.Counted != 0 || got != tc.outcome || (res.Duplicates == 1) != (tc.outcome == "duplicate") {
				t.Fatalf("resend after retention: %+v, want a %s", res, tc.outcome)
			}
			month := time.Date(e.Time.Year(), e.Time.Month(), 1, 0, 0, 0, 0, time.UTC)
			if v := windowValue(t, db, "api_calls", "month", month); v != "7" {
				t.Fatalf("month = %s, want 7: counted again", v)
			}
		})
	}
}

// TestConflictsCommand reviews held conflicts as on-call does: list,
// count one (its value lands in its own metric), dismiss another, and the
// record of who, when and why.
func TestConflictsCommand(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	now := time.Now().UTC()
	a := rollup.New(db.Pool, rollup.Config{Group: "metering-aggregator", Topic: topics.UsageEvents, Logger: slog.New(slog.DiscardHandler)})
	at := now.Add(-time.Minute)
	orig := events.Event{ID: "order-5", Tenant: "acme", Metric: "api_calls", Value: 3, Time: at}
	otherMetric := orig
	otherMetric.Metric, otherMetric.Value = "tokens", 40
	otherTime := orig
	otherTime.Time = at.Add(-time.Hour)
	if _, err := a.Apply(ctx, 0, -1, []rollup.Record{record(0, orig, now), record(1, otherMetric, now), record(2, otherTime, now)}); err != nil {
		t.Fatal(err)
	}
	cfg, _, err := config.LoadAggregator("aggregator", []string{"-database-url", db.URL}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	run := func(sub string, args ...string) (string, error) {
		var out strings.Builder
		err := aggregator.ConflictsCommand(ctx, cfg, slog.New(slog.DiscardHandler), sub, args, &out)
		return out.String(), err
	}
	out, err := run("list", "--tenant", "acme", "--format", "json")
	if err != nil {
		t.Fatal(err)
	}
	var held []usagedata.Conflict
	if err := json.Unmarshal([]byte(out), &held); err != nil || len(held) != 2 {
		t.Fatalf("held conflicts: %s (%v)", out, err)
	}
	ids := map[string]string{}
	for _, c := range held {
		if c.Resolution != "held" || c.CountedValue == nil || *c.CountedValue != 3 {
			t.Errorf("conflict %+v", c)
		}
		ids[c.Metric] = strconv.FormatInt(c.ID, 10)
	}
	if out, err = run("count", ids["tokens"], "--note", "the order had tokens too", "--actor", "oncall"); err != nil || !strings.Contains(out, "counted 40 tokens") || !strings.Contains(out, "added 40 and 1 event(s)") {
		t.Fatalf("count: %q, %v", out, err)
	}
	if v := windowValue(t, db, "tokens", "hour", at.Truncate(time.Hour)); v != "40" {
		t.Errorf("counted conflict's hour = %s, want 40", v)
	}
	if _, err = run("count", ids["tokens"], "--note", "again"); err == nil || !strings.Contains(err.Error(), "counted") {
		t.Fatalf("counting twice: %v", err)
	}
	if out, err = run("dismiss", ids["api_calls"], "--note", "a test resend"); err != nil || !strings.Contains(out, "dismissed") {
		t.Fatalf("dismiss: %q, %v", out, err)
	}
	if v := windowValue(t, db, "api_calls", "hour", otherTime.Time.Truncate(time.Hour)); v != "none" && otherTime.Time.Truncate(time.Hour) != at.Truncate(time.Hour) {
		t.Errorf("dismissed conflict counted: %s", v)
	}
	out, err = run("list", "--status", "resolved")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"RESOLUTION", "counted", "dismissed", "oncall", "the order had tokens too", "a test resend", "2 conflicts"} {
		if !strings.Contains(out, want) {
			t.Errorf("list --status resolved lacks %q:\n%s", want, out)
		}
	}
	if out, _ = run("list"); !strings.Contains(out, "0 conflicts") {
		t.Errorf("held after review:\n%s", out)
	}
	// One audit row per resolution (none for the refused second count),
	// with the command's actor, the conflict held before and resolved after.
	var audited string
	if err := db.Pool.QueryRow(context.Background(), `SELECT string_agg(concat_ws(' ', action, target, actor, before->>'resolution', after->>'resolution', note), E'\n' ORDER BY id)
		FROM audit_log WHERE action LIKE 'conflict.%'`).Scan(&audited); err != nil {
		t.Fatal(err)
	}
	user := cli.Audit{}.Who()
	if want := "conflict.count conflict:" + ids["tokens"] + " cli:oncall held counted the order had tokens too\n" +
		"conflict.dismiss conflict:" + ids["api_calls"] + " " + user + " held dismissed a test resend"; audited != want {
		t.Errorf("audit rows:\n%s\nwant:\n%s", audited, want)
	}
}
