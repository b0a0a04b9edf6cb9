package rollup_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// every granularity's window of acme/api_calls at now - 1h (18:00).
var apiCallWindows = map[string]string{
	"minute": "acme/api_calls/2026-11-21T18:00",
	"hour":   "acme/api_calls/2026-11-21T18:00",
	"day":    "acme/api_calls/2026-11-21T00:00",
	"month":  "acme/api_calls/2026-11-01T00:00",
}

func expectWindows(t *testing.T, db *pgtest.DB, keys map[string]string, want window) {
	t.Helper()
	for g, k := range keys {
		if got := windowsOf(t, db, g)[k]; got != want {
			t.Errorf("%s window %s = %+v, want %+v", g, k, got, want)
		}
	}
}

// TestZeroValueFirstCannotEraseUsage is the probe "a customer can erase
// its own billable usage": its key sends {"id":"order-77",...,"value":0}
// first; the real event with that id, later or in the same batch, must
// still count in full, in every window.
func TestZeroValueFirstCannotEraseUsage(t *testing.T) {
	t.Parallel()
	at := now.Add(-time.Hour)
	zero := ev("order-77", "acme", "api_calls", 0, at)
	real := ev("order-77", "acme", "api_calls", 1200, at)
	for _, tc := range []struct {
		name    string
		batches [][]any
	}{
		{"across batches", [][]any{{zero}, {real}}},
		{"in one batch", [][]any{{zero, real}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a, db := newAgg(t)
			ctx := context.Background()
			from := int64(-1)
			for _, items := range tc.batches {
				res, err := a.Apply(ctx, 0, from, batch(max(from, 0), items...))
				if err != nil {
					t.Fatal(err)
				}
				from = res.NextOffset
			}
			expectWindows(t, db, apiCallWindows, window{"1200", 1})
			if n := count(t, db, `SELECT count(*) FROM ledger_events WHERE event_id = 'order-77' AND value = 1200`); n != 1 {
				t.Errorf("the ledger does not hold the raised value")
			}
			if n := count(t, db, `SELECT count(*) FROM ledger_conflicts WHERE event_id = 'order-77' AND resolution = 'raised' AND counted_value = 0 AND value = 1200`); n != 1 {
				t.Errorf("%d raised conflicts recorded, want 1", n)
			}
		})
	}
}

// TestRaisesAreExactlyOnceWhateverTheBatches sends the same stream of
// conflicting resends cut into batches in every way, and again at new
// offsets (a producer's retry), and requires the same totals: the
// maximum of each id's values at its first metric and time.
func TestRaisesAreExactlyOnceWhateverTheBatches(t *testing.T) {
	t.Parallel()
	at := now.Add(-time.Hour)
	stream := []any{
		ev("a", "acme", "api_calls", 3, at),
		ev("a", "acme", "api_calls", 10, at),
		ev("b", "acme", "api_calls", 7, at),
		ev("a", "acme", "api_calls", 4, at),
		ev("a", "acme", "api_calls", 12, at),
		ev("b", "acme", "api_calls", 7, at.Add(time.Minute)), // held
		ev("b", "acme", "api_calls", 9, at),
		ev("a", "acme", "tokens", 99, at), // held
	}
	want := window{"21", 2} // a: 12, b: 9
	for _, size := range []int{1, 2, 3, len(stream)} {
		t.Run(fmt.Sprint("batches of ", size), func(t *testing.T) {
			t.Parallel()
			a, db := newAgg(t)
			ctx := context.Background()
			from := int64(-1)
			for round := range 2 { // the second round resends everything
				for i := 0; i < len(stream); i += size {
					off := int64(round*len(stream) + i)
					res, err := a.Apply(ctx, 0, from, batch(off, stream[i:min(i+size, len(stream))]...))
					if err != nil {
						t.Fatal(err)
					}
					from = res.NextOffset
				}
			}
			expectWindows(t, db, apiCallWindows, want)
			if n := count(t, db, `SELECT count(*) FROM usage_windows WHERE meter = 'tokens'`); n != 0 {
				t.Errorf("a held conflict was counted")
			}
			if n := count(t, db, `SELECT count(*) FROM ledger_conflicts WHERE resolution = 'held'`); n != 4 {
				t.Errorf("%d held conflicts, want 4 (2 per round)", n)
			}
		})
	}
}

// TestConcurrentRaisesOfOneEvent raises one counted event from two
// partitions at once (records that bypass ingest need not be keyed by
// tenant): the ledger row lock makes the total the maximum, not the sum
// of both raises.
func TestConcurrentRaisesOfOneEvent(t *testing.T) {
	t.Parallel()
	a, db := newAgg(t)
	ctx := context.Background()
	at := now.Add(-time.Hour)
	if _, err := a.Apply(ctx, 0, -1, batch(0, ev("x", "acme", "api_calls", 1, at))); err != nil {
		t.Fatal(err)
	}
	for round := range 20 {
		var wg sync.WaitGroup
		for p := 1; p <= 2; p++ {
			wg.Go(func() {
				e := ev("x", "acme", "api_calls", int64(10*round+p+1), at)
				rec := rollup.Record{Partition: p, Offset: int64(round), Key: []byte("acme"), Value: e.AppendJSON(nil), Time: now}
				from := int64(round)
				if round == 0 {
					from = -1
				}
				if _, err := a.Apply(ctx, p, from, []rollup.Record{rec}); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
	}
	expectWindows(t, db, apiCallWindows, window{"193", 1}) // 10*19 + 2 + 1
}

// TestHeldConflictsWaitForAnOperator: a resend with another metric or
// time counts nothing until an operator counts it, once, in its own
// metric and windows; or dismisses it. Both are audited.
func TestHeldConflictsWaitForAnOperator(t *testing.T) {
	t.Parallel()
	a, db := newAgg(t)
	ctx := context.Background()
	at := now.Add(-time.Hour)
	orig := ev("order-9", "acme", "api_calls", 5, at)
	otherMetric := ev("order-9", "acme", "tokens", 40, at)
	otherTime := ev("order-9", "acme", "api_calls", 5, now.Add(-30*24*time.Hour)) // last month
	res, err := a.Apply(ctx, 0, -1, batch(0, orig, otherMetric, otherTime, otherMetric))
	if err != nil {
		t.Fatal(err)
	}
	if res.Counted != 1 || res.Held != 3 {
		t.Fatalf("result %+v, want 1 counted, 3 held", res)
	}
	if n := count(t, db, `SELECT count(*) FROM usage_windows WHERE meter = 'tokens' OR window_start < '2026-11-01Z'`); n != 0 {
		t.Fatalf("held conflicts were counted")
	}
	r := usagedata.NewConflictReader(db.Pool)
	held, err := r.List(ctx, usagedata.ConflictFilter{Tenant: "acme", Status: "held"})
	if err != nil || len(held) != 3 {
		t.Fatalf("held = %+v, %v", held, err)
	}
	ids := map[string][]int64{}
	for _, c := range held {
		ids[c.Metric+"/"+c.Time.Format(time.DateOnly)] = append(ids[c.Metric+"/"+c.Time.Format(time.DateOnly)], c.ID)
	}
	tokens, lastMonth := ids["tokens/2026-11-21"], ids["api_calls/2026-10-22"]
	if len(tokens) != 2 || len(lastMonth) != 1 {
		t.Fatalf("held by metric/day: %v", ids)
	}

	c, err := a.ResolveConflict(ctx, tokens[0], usagedata.ResolutionCounted, "oncall", "customer confirmed")
	if err != nil || c.Resolution != "counted" {
		t.Fatalf("count: %+v, %v", c, err)
	}
	if w := windowsOf(t, db, "month")["acme/tokens/2026-11-01T00:00"]; w != (window{"40", 1}) {
		t.Fatalf("counted conflict's month window = %+v, want 40", w)
	}
	if _, err := a.ResolveConflict(ctx, tokens[0], usagedata.ResolutionCounted, "oncall", "again"); !errors.Is(err, rollup.ErrConflictNotHeld) {
		t.Fatalf("counting twice: %v", err)
	}
	if _, err := a.ResolveConflict(ctx, tokens[1], usagedata.ResolutionCounted, "oncall", "the copy"); err == nil {
		t.Fatal("counting a second copy of the same event succeeded")
	}
	if w := windowsOf(t, db, "month")["acme/tokens/2026-11-01T00:00"]; w != (window{"40", 1}) {
		t.Fatalf("month window after refused counts = %+v, want 40", w)
	}
	// Counted into a closed month: a correction for the biller.
	if _, err := a.ResolveConflict(ctx, lastMonth[0], usagedata.ResolutionCounted, "oncall", "late order"); err != nil {
		t.Fatal(err)
	}
	if n := count(t, db, `SELECT count(*) FROM usage_corrections WHERE metric = 'api_calls' AND period_start = '2026-10-01Z' AND value = 5 AND events = 1`); n != 1 {
		t.Errorf("no correction for a conflict counted into a closed month")
	}
	if _, err := a.ResolveConflict(ctx, tokens[1], usagedata.ResolutionDismissed, "oncall", "duplicate of the counted one"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.ResolveConflict(ctx, 999999, usagedata.ResolutionDismissed, "oncall", "x"); !errors.Is(err, rollup.ErrConflictNotFound) {
		t.Fatalf("unknown id: %v", err)
	}
	if n := count(t, db, `SELECT count(*) FROM ledger_conflicts WHERE resolution IN ('counted', 'dismissed') AND resolved_by = 'oncall' AND resolved_at = $1 AND note <> ''`, now); n != 3 {
		t.Errorf("%d resolutions audited, want 3", n)
	}
	if left, _ := r.Held(ctx); left != 0 {
		t.Errorf("%d held left", left)
	}
	resolved, err := r.List(ctx, usagedata.ConflictFilter{Tenant: "acme", Status: "resolved"})
	if err != nil || len(resolved) != 3 {
		t.Fatalf("resolved = %d, %v", len(resolved), err)
	}
}

// TestRaisesReachQuotasAndCorrections: a raise is usage like any other:
// quota thresholds see it, and a raise into a closed month is a
// correction for the biller.
func TestRaisesReachQuotasAndCorrections(t *testing.T) {
	t.Parallel()
	a, db := newAgg(t)
	setupPlans(t, db) // api_calls: 100 a month, hard, burst 20 %
	ctx := context.Background()
	lastMonth := time.Date(2026, 10, 31, 12, 0, 0, 0, time.UTC)
	res, err := a.Apply(ctx, 0, -1, batch(0, ev("q", "acme", "api_calls", 0, now), ev("late", "acme", "api_calls", 1, lastMonth)))
	if err != nil || len(res.Breaches) != 0 {
		t.Fatalf("%+v, %v", res, err)
	}
	res, err = a.Apply(ctx, 0, 2, batch(2, ev("q", "acme", "api_calls", 150, now), ev("late", "acme", "api_calls", 31, lastMonth)))
	if err != nil {
		t.Fatal(err)
	}
	if res.Raised != 2 || len(res.Breaches) != 3 {
		t.Fatalf("raises: %+v, want 2 raised and warning, exceeded, blocked", res)
	}
	var value string
	var events int64
	if err := db.Pool.QueryRow(ctx, `SELECT sum(value)::text, sum(events) FROM usage_corrections WHERE period_start = '2026-10-01Z'`).Scan(&value, &events); err != nil || value != "31" || events != 1 {
		t.Fatalf("corrections of October = %s over %d events (%v), want 1 + 30 over 1 event", value, events, err)
	}
}

// TestConflictAlertOncePerTenantAndDay: beyond the threshold of held and
// raised conflicts in a UTC day, one alert per tenant and day.
func TestConflictAlertOncePerTenantAndDay(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	clock := now
	reg := prometheus.NewRegistry()
	a := rollup.New(db.Pool, rollup.Config{Group: "test", Topic: "usage.events", ConflictAlertThreshold: 2,
		Now: func() time.Time { return clock }, Logger: slog.New(slog.DiscardHandler), Metrics: rollup.NewMetrics(reg)})
	ctx := context.Background()
	r := usagedata.NewConflictReader(db.Pool)
	from := int64(-1)
	send := func(items ...any) rollup.Result {
		t.Helper()
		recs := batch(max(from, 0), items...)
		for i := range recs {
			recs[i].Time = clock
		}
		res, err := a.Apply(ctx, 0, from, recs)
		if err != nil {
			t.Fatal(err)
		}
		from = res.NextOffset
		return res
	}
	at := now.Add(-time.Hour)
	send(ev("a", "acme", "api_calls", 1, at), ev("b", "acme", "api_calls", 1, at), ev("c", "acme", "api_calls", 1, at))
	// Two raises and a kept: at the threshold, not beyond.
	if res := send(ev("a", "acme", "api_calls", 2, at), ev("b", "acme", "api_calls", 2, at), ev("c", "acme", "api_calls", 0, at)); len(res.Alerts) != 0 {
		t.Fatalf("alert at the threshold: %+v", res.Alerts)
	}
	if on, err := r.Alerting(ctx, "acme", clock); err != nil || on {
		t.Fatalf("alerting = %v, %v before the threshold", on, err)
	}
	if res := send(ev("c", "acme", "tokens", 1, at)); len(res.Alerts) != 1 || res.Alerts[0].Tenant != "acme" || res.Alerts[0].Conflicts != 3 {
		t.Fatalf("alerts beyond the threshold: %+v", res.Alerts)
	}
	if res := send(ev("c", "acme", "bytes", 1, at)); len(res.Alerts) != 0 {
		t.Fatalf("second alert the same day: %+v", res.Alerts)
	}
	if on, err := r.Alerting(ctx, "acme", clock); err != nil || !on {
		t.Fatalf("alerting = %v, %v beyond the threshold", on, err)
	}
	if on, _ := r.Alerting(ctx, "globex", clock); on {
		t.Fatal("another tenant is alerting")
	}
	clock = clock.Add(24 * time.Hour) // a new UTC day starts with no alert
	if on, _ := r.Alerting(ctx, "acme", clock); on {
		t.Fatal("alerting the next day")
	}
	if got := gathered(t, reg, "metering_aggregator_conflict_alerts_total", ""); got != 1 {
		t.Errorf("conflict_alerts_total = %v, want 1", got)
	}
	for resolution, want := range map[string]float64{"raised": 2, "kept": 1, "held": 2} {
		if got := gathered(t, reg, "metering_aggregator_conflicts_total", resolution); got != want {
			t.Errorf("conflicts_total{resolution=%q} = %v, want %v", resolution, got, want)
		}
	}
}

// TestEventTimeJudgedByATrustedClock is the probe "event-time limits
// trust the producer's record timestamp": a record whose timestamp the
// producer set says nothing the aggregator's clock does not allow.
func TestEventTimeJudgedByATrustedClock(t *testing.T) {
	t.Parallel()
	const day = 24 * time.Hour
	for _, tc := range []struct {
		name            string
		event, recorded time.Time
		class           string // "" counted
	}{
		{"400 days ahead, record stamped then", now.Add(400 * day), now.Add(400 * day), rollup.ClassInvalid},
		{"400 days old, record stamped then", now.Add(-400 * day), now.Add(-400 * day), rollup.ClassTooOld},
		{"1 hour ahead, record stamped then", now.Add(time.Hour), now.Add(time.Hour), rollup.ClassInvalid},
		{"40 days old, record stamped 10 days ago (beyond the lag)", now.Add(-40 * day), now.Add(-10 * day), rollup.ClassTooOld},
		{"36 days old, record stamped 2 days ago (a lagging consumer)", now.Add(-36 * day), now.Add(-2 * day), ""},
		{"now, record stamped an hour ago", now, now.Add(-time.Hour), rollup.ClassInvalid},
		{"4 minutes ahead, record stamped now", now.Add(4 * time.Minute), now, ""},
		{"no record timestamp", now.Add(-time.Minute), time.Time{}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a, db := newAgg(t)
			e := ev("t-1", "acme", "api_calls", 1, tc.event)
			rec := rollup.Record{Partition: 0, Offset: 0, Key: []byte("acme"), Value: e.AppendJSON(nil), Time: tc.recorded}
			res, err := a.Apply(context.Background(), 0, -1, []rollup.Record{rec})
			if err != nil {
				t.Fatal(err)
			}
			if tc.class == "" {
				if res.Counted != 1 {
					t.Fatalf("not counted: %+v", res)
				}
				return
			}
			if res.Counted != 0 || res.DeadLettered != 1 {
				t.Fatalf("counted: %+v", res)
			}
			if n := count(t, db, `SELECT count(*) FROM usage_dlq WHERE error_class = $1`, tc.class); n != 1 {
				t.Fatalf("no dead letter of class %s", tc.class)
			}
			if n := count(t, db, `SELECT count(*) FROM usage_windows`); n != 0 {
				t.Fatal("windows written")
			}
		})
	}
}

// TestLedgerCutoffIsBeforeEveryAcceptableEvent: an id the ledger may
// forget belongs to an event no clock the aggregator trusts can accept.
func TestLedgerCutoffIsBeforeEveryAcceptableEvent(t *testing.T) {
	t.Parallel()
	horizon, lag := events.DefaultHorizon, rollup.DefaultMaxLag
	cut := rollup.LedgerCutoff(now, horizon, lag)
	oldest := rollup.OldestAcceptable(now, horizon, lag)
	// Retention deletes rows of event days before cut's day.
	cutDay := cut.Truncate(24 * time.Hour)
	if !cutDay.Before(oldest) || oldest.Sub(cutDay) < 24*time.Hour {
		t.Fatalf("cutoff day %s is not a day before the oldest acceptable %s", cutDay, oldest)
	}
	a, _ := newAgg(t)
	justForgotten := ev("f", "acme", "api_calls", 1, cutDay.Add(-time.Nanosecond))
	rec := rollup.Record{Key: []byte("acme"), Value: justForgotten.AppendJSON(nil), Time: justForgotten.Time}
	res, err := a.Apply(context.Background(), 0, -1, []rollup.Record{rec})
	if err != nil || res.DeadLettered != 1 {
		t.Fatalf("an event the ledger may have forgotten: %+v, %v", res, err)
	}
}

// TestConcurrentCountsOfOneHeldConflict: two operators counting the same
// held conflict at once count it once; the conflict row is the gate.
func TestConcurrentCountsOfOneHeldConflict(t *testing.T) {
	t.Parallel()
	a, db := newAgg(t)
	ctx := context.Background()
	at := now.Add(-time.Hour)
	if _, err := a.Apply(ctx, 0, -1, batch(0, ev("o", "acme", "api_calls", 1, at), ev("o", "acme", "tokens", 7, at))); err != nil {
		t.Fatal(err)
	}
	var id int64
	if err := db.Pool.QueryRow(ctx, `SELECT id FROM ledger_conflicts WHERE resolution = 'held'`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			_, err := a.ResolveConflict(ctx, id, usagedata.ResolutionCounted, "oncall", "at once")
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	ok := 0
	for err := range errs {
		if err == nil {
			ok++
		} else if !errors.Is(err, rollup.ErrConflictNotHeld) {
			t.Errorf("count: %v", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d counts succeeded, want 1", ok)
	}
	if w := windowsOf(t, db, "month")["acme/tokens/2026-11-01T00:00"]; w != (window{"7", 1}) {
		t.Fatalf("month window = %+v, want 7 once", w)
	}
}

// TestConflictsRecordedBeforeResolutionsAreHeld: rows recorded under the
// first-seen rule (no metric, value or time columns) are held, shown with
// the event read from their bytes, and can be counted.
func TestConflictsRecordedBeforeResolutionsAreHeld(t *testing.T) {
	t.Parallel()
	a, db := newAgg(t)
	ctx := context.Background()
	old := ev("order-3", "acme", "api_calls", 250, now.Add(-time.Hour))
	db.Exec(t, `INSERT INTO ledger_conflicts (tenant, event_id, counted_hash, rejected_hash, rejected_event, src_partition, src_offset)
		VALUES ('acme', 'order-3', '\x00', '\x01', $1, 0, 99)`, old.AppendJSON(nil))
	cs, err := usagedata.NewConflictReader(db.Pool).List(ctx, usagedata.ConflictFilter{Status: "held"})
	if err != nil || len(cs) != 1 || cs[0].Metric != "api_calls" || *cs[0].Value != 250 || !cs[0].Time.Equal(old.Time) {
		t.Fatalf("legacy conflict = %+v, %v", cs, err)
	}
	if _, err := a.ResolveConflict(ctx, cs[0].ID, usagedata.ResolutionCounted, "oncall", "first-seen had dropped it"); err != nil {
		t.Fatal(err)
	}
	expectWindows(t, db, apiCallWindows, window{"250", 1})
}

// gathered returns the value of the counter name{resolution=label} in
// reg ("" for a counter without labels), or -1.
func gathered(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label == "" {
				return m.GetCounter().GetValue()
			}
			for _, lp := range m.GetLabel() {
				if lp.GetValue() == label {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return -1
}

// TestRaiseReplayedAfterACrash: a batch that raises counted events dies
// after its ledger updates (the database refuses its window upsert, as a
// crash would end the transaction); the consumer applies it again from
// the stored offset, and the raise counts once.
func TestRaiseReplayedAfterACrash(t *testing.T) {
	t.Parallel()
	a, db := newAgg(t)
	ctx := context.Background()
	at := now.Add(-time.Hour)
	if _, err := a.Apply(ctx, 0, -1, batch(0, ev("a", "acme", "api_calls", 1, at))); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `CREATE TABLE crash (armed boolean)`)
	db.Exec(t, `INSERT INTO crash VALUES (true)`)
	db.Exec(t, `CREATE FUNCTION crash_now() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN IF (SELECT armed FROM crash) THEN RAISE EXCEPTION 'crash'; END IF; RETURN NEW; END $$`)
	db.Exec(t, `CREATE TRIGGER crash BEFORE INSERT ON usage_windows FOR EACH ROW EXECUTE FUNCTION crash_now()`)
	recs := batch(1, ev("a", "acme", "api_calls", 5, at), ev("a", "acme", "api_calls", 9, at), ev("a", "acme", "tokens", 2, at))
	if _, err := a.Apply(ctx, 0, 1, recs); err == nil {
		t.Fatal("the crashing batch committed")
	}
	expectWindows(t, db, apiCallWindows, window{"1", 1})
	db.Exec(t, `UPDATE crash SET armed = false`)
	res, err := a.Apply(ctx, 0, 1, recs)
	if err != nil || res.Raised != 2 || res.Held != 1 {
		t.Fatalf("replay: %+v, %v", res, err)
	}
	expectWindows(t, db, apiCallWindows, window{"9", 1})
	if _, err := a.Apply(ctx, 0, 1, recs); !errors.Is(err, rollup.ErrFenced) {
		t.Fatalf("a second replay of the committed batch: %v, want ErrFenced", err)
	}
	if n := count(t, db, `SELECT count(*) FROM ledger_conflicts`); n != 3 {
		t.Fatalf("%d conflicts recorded, want 3", n)
	}
}
