package rollup_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// every granularity's window of acme/tokens at now - 1h (18:00).
var tokenWindows = map[string]string{
	"minute": "acme/tokens/2026-11-21T18:00",
	"hour":   "acme/tokens/2026-11-21T18:00",
	"day":    "acme/tokens/2026-11-21T00:00",
	"month":  "acme/tokens/2026-11-01T00:00",
}

// heldIDs returns the held conflicts of tenant acme and event id by value.
func heldIDs(t *testing.T, db *pgtest.DB, eventID string) map[int64]int64 {
	t.Helper()
	cs, err := usagedata.NewConflictReader(db.Pool).List(context.Background(), usagedata.ConflictFilter{Tenant: "acme", Status: "held"})
	if err != nil {
		t.Fatal(err)
	}
	out := map[int64]int64{}
	for _, c := range cs {
		if c.EventID == eventID {
			out[*c.Value] = c.ID
		}
	}
	return out
}

// recordedAmounts returns what each counted conflict of id recorded as
// added to its windows, "value/events" by conflict value.
func recordedAmounts(t *testing.T, db *pgtest.DB, eventID string) map[int64]string {
	t.Helper()
	rows, err := db.Pool.Query(context.Background(), `SELECT value, counted_amount, counted_events FROM ledger_conflicts
		WHERE event_id = $1 AND resolution = 'counted'`, eventID)
	if err != nil {
		t.Fatalf("reading counted amounts: %v", err)
	}
	defer rows.Close()
	out := map[int64]string{}
	for rows.Next() {
		var v, amount, evs int64
		if err := rows.Scan(&v, &amount, &evs); err != nil {
			t.Fatal(err)
		}
		out[v] = fmt.Sprintf("%d/%d", amount, evs)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestCountedHeldCopiesCountTheirMaximum is the reviewer's case: held
// resends of one id with the same metric and time as each other (another
// metric than the counted event) are copies of one event; counting them
// one after the other counts their maximum once, never their sum.
func TestCountedHeldCopiesCountTheirMaximum(t *testing.T) {
	t.Parallel()
	at := now.Add(-time.Hour)
	for _, tc := range []struct {
		name   string
		counts []int64          // values of the held copies, in the order counted
		want   window           // acme/tokens in every granularity
		added  map[int64]string // recorded per copy: amount/events
	}{
		{"700 then 900", []int64{700, 900}, window{"900", 1}, map[int64]string{700: "700/1", 900: "200/0"}},
		{"900 then 700", []int64{900, 700}, window{"900", 1}, map[int64]string{900: "900/1", 700: "0/0"}},
		{"700, 900, then 800", []int64{700, 900, 800}, window{"900", 1}, map[int64]string{700: "700/1", 900: "200/0", 800: "0/0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a, db := newAgg(t)
			ctx := context.Background()
			items := []any{ev("order-5", "acme", "api_calls", 100, at)}
			for _, v := range tc.counts {
				items = append(items, ev("order-5", "acme", "tokens", v, at))
			}
			res, err := a.Apply(ctx, 0, -1, batch(0, items...))
			if err != nil || res.Held != len(tc.counts) {
				t.Fatalf("%+v, %v; want %d held", res, err, len(tc.counts))
			}
			ids := heldIDs(t, db, "order-5")
			for _, v := range tc.counts {
				if _, err := a.ResolveConflict(ctx, ids[v], usagedata.ResolutionCounted, "oncall", fmt.Sprint("copy of ", v)); err != nil {
					t.Fatalf("counting %d: %v", v, err)
				}
			}
			expectWindows(t, db, tokenWindows, tc.want)
			expectWindows(t, db, apiCallWindows, window{"100", 1})
			if got := recordedAmounts(t, db, "order-5"); fmt.Sprint(got) != fmt.Sprint(tc.added) {
				t.Errorf("recorded amounts %v, want %v", got, tc.added)
			}
		})
	}
}

// TestCountingALegacyConflictOfTheCountedWindows: a conflict recorded
// under the first-seen rule may have the counted event's metric and time
// (it would be raised or kept today). Counting it follows the raise rule:
// only what it adds over the counted value, once, and later resends are
// judged against the maximum.
func TestCountingALegacyConflictOfTheCountedWindows(t *testing.T) {
	t.Parallel()
	at := now.Add(-time.Hour)
	for _, tc := range []struct {
		name       string
		legacy     int64
		want       window
		added      string
		resend     int64  // a later resend of the same metric and time
		afterwards window // windows after it
		resolution string // of the resend
	}{
		{"higher", 250, window{"250", 1}, "150/0", 300, window{"300", 1}, usagedata.ResolutionRaised},
		{"higher, then a lower resend", 250, window{"250", 1}, "150/0", 200, window{"250", 1}, usagedata.ResolutionKept},
		{"lower", 60, window{"100", 1}, "0/0", 90, window{"100", 1}, usagedata.ResolutionKept},
		{"equal", 100, window{"100", 1}, "0/0", 120, window{"120", 1}, usagedata.ResolutionRaised},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a, db := newAgg(t)
			ctx := context.Background()
			if _, err := a.Apply(ctx, 0, -1, batch(0, ev("order-3", "acme", "api_calls", 100, at))); err != nil {
				t.Fatal(err)
			}
			old := ev("order-3", "acme", "api_calls", tc.legacy, at)
			sum := sha256.Sum256(old.AppendJSON(nil))
			db.Exec(t, `INSERT INTO ledger_conflicts (tenant, event_id, counted_hash, rejected_hash, rejected_event, src_partition, src_offset)
				VALUES ('acme', 'order-3', '\x00', $1, $2, 0, 99)`, sum[:], old.AppendJSON(nil))
			ids := heldIDs(t, db, "order-3")
			if _, err := a.ResolveConflict(ctx, ids[tc.legacy], usagedata.ResolutionCounted, "oncall", "first-seen had dropped it"); err != nil {
				t.Fatal(err)
			}
			expectWindows(t, db, apiCallWindows, tc.want)
			if got := recordedAmounts(t, db, "order-3"); got[tc.legacy] != tc.added {
				t.Errorf("recorded amount %q, want %q", got[tc.legacy], tc.added)
			}
			res, err := a.Apply(ctx, 0, 1, batch(1, ev("order-3", "acme", "api_calls", tc.resend, at)))
			if err != nil {
				t.Fatal(err)
			}
			if n := count(t, db, `SELECT count(*) FROM ledger_conflicts WHERE src_offset = 1 AND resolution = $1`, tc.resolution); n != 1 {
				t.Errorf("the later resend of %d is not %s: %+v", tc.resend, tc.resolution, res)
			}
			expectWindows(t, db, apiCallWindows, tc.afterwards)
		})
	}
}

// TestConcurrentCountsOfHeldCopies: operators counting different held
// copies of one event at once (and a raise of the counted event arriving
// meanwhile) still count the maximum once.
func TestConcurrentCountsOfHeldCopies(t *testing.T) {
	t.Parallel()
	at := now.Add(-time.Hour)
	t.Run("copies in another metric", func(t *testing.T) {
		t.Parallel()
		a, db := newAgg(t)
		ctx := context.Background()
		items := []any{ev("o", "acme", "api_calls", 1, at)}
		for v := range int64(8) {
			items = append(items, ev("o", "acme", "tokens", 10+v, at))
		}
		if _, err := a.Apply(ctx, 0, -1, batch(0, items...)); err != nil {
			t.Fatal(err)
		}
		ids := heldIDs(t, db, "o")
		var wg sync.WaitGroup
		for _, id := range ids {
			wg.Go(func() {
				if _, err := a.ResolveConflict(ctx, id, usagedata.ResolutionCounted, "oncall", "at once"); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		expectWindows(t, db, tokenWindows, window{"17", 1})
		if n := count(t, db, `SELECT sum(counted_amount)::int FROM ledger_conflicts WHERE resolution = 'counted'`); n != 17 {
			t.Errorf("recorded amounts add up to %d, want 17", n)
		}
		if n := count(t, db, `SELECT sum(counted_events)::int FROM ledger_conflicts WHERE resolution = 'counted'`); n != 1 {
			t.Errorf("recorded events add up to %d, want 1", n)
		}
	})
	t.Run("legacy copies of the counted windows and a raise", func(t *testing.T) {
		t.Parallel()
		a, db := newAgg(t)
		ctx := context.Background()
		if _, err := a.Apply(ctx, 0, -1, batch(0, ev("o", "acme", "api_calls", 1, at))); err != nil {
			t.Fatal(err)
		}
		for v := range int64(6) {
			old := ev("o", "acme", "api_calls", 20+v, at)
			sum := sha256.Sum256(old.AppendJSON(nil))
			db.Exec(t, `INSERT INTO ledger_conflicts (tenant, event_id, counted_hash, rejected_hash, rejected_event, src_partition, src_offset)
				VALUES ('acme', 'o', '\x00', $1, $2, 9, $3)`, sum[:], old.AppendJSON(nil), v)
		}
		ids := heldIDs(t, db, "o")
		var wg sync.WaitGroup
		for _, id := range ids {
			wg.Go(func() {
				if _, err := a.ResolveConflict(ctx, id, usagedata.ResolutionCounted, "oncall", "at once"); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Go(func() {
			e := ev("o", "acme", "api_calls", 24, at)
			rec := rollup.Record{Partition: 1, Offset: 0, Key: []byte("acme"), Value: e.AppendJSON(nil), Time: now}
			if _, err := a.Apply(ctx, 1, -1, []rollup.Record{rec}); err != nil {
				t.Error(err)
			}
		})
		wg.Wait()
		expectWindows(t, db, apiCallWindows, window{"25", 1})
		if n := count(t, db, `SELECT count(*) FROM ledger_events WHERE event_id = 'o' AND value = 25`); n != 1 {
			t.Errorf("the ledger does not hold the maximum")
		}
	})
}

// TestCountingAfterADismissedCopy: a dismissed copy counts nothing, so
// counting another copy of the same windows adds its value and an event.
func TestCountingAfterADismissedCopy(t *testing.T) {
	t.Parallel()
	a, db := newAgg(t)
	ctx := context.Background()
	at := now.Add(-time.Hour)
	if _, err := a.Apply(ctx, 0, -1, batch(0, ev("d", "acme", "api_calls", 1, at),
		ev("d", "acme", "tokens", 900, at), ev("d", "acme", "tokens", 700, at))); err != nil {
		t.Fatal(err)
	}
	ids := heldIDs(t, db, "d")
	if _, err := a.ResolveConflict(ctx, ids[900], usagedata.ResolutionDismissed, "oncall", "not ours"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.ResolveConflict(ctx, ids[700], usagedata.ResolutionCounted, "oncall", "the right one"); err != nil {
		t.Fatal(err)
	}
	expectWindows(t, db, tokenWindows, window{"700", 1})
	if _, err := a.ResolveConflict(ctx, ids[900], usagedata.ResolutionCounted, "oncall", "again"); !errors.Is(err, rollup.ErrConflictNotHeld) {
		t.Fatalf("counting a dismissed conflict: %v", err)
	}
}
