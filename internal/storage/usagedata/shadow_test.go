package usagedata_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/windows"
)

// TestRebuiltWindowsCountHeldCopiesOnce: the held conflicts operators
// counted join the rebuilt windows by the rule live counting follows: per
// (tenant, id, metric, event time) their maximum, over the replayed
// counted event when it has that metric and time, never their sum.
func TestRebuiltWindowsCountHeldCopiesOnce(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	const schema = "rebuild_conflicts"
	if err := usagedata.CreateShadow(ctx, db.Pool, schema); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 11, 21, 18, 0, 0, 0, time.UTC)
	// The replay counted order-5, order-3 (raised to 250 by the resend an
	// operator counted live, recorded under the first-seen rule) and
	// order-4 at api_calls; order-6's counted event is older than the replay.
	db.Exec(t, fmt.Sprintf(`INSERT INTO %s.ledger_names (tenant, metric) VALUES ('acme', 'api_calls')`, schema))
	for _, l := range []struct {
		id    string
		value int64
	}{{"order-5", 100}, {"order-3", 250}, {"order-4", 100}} {
		db.Exec(t, fmt.Sprintf(`INSERT INTO %[1]s.ledger (id, id_text, ref, payload_hash, value, event_time, src_partition, src_offset)
			SELECT ledger_key('acme', $1), ledger_id_text($1), n.ref, 0, $2, $3::timestamptz, 0, 0
			FROM %[1]s.ledger_names n WHERE n.tenant = 'acme' AND n.metric = 'api_calls'`, schema), l.id, l.value, at)
	}
	db.Exec(t, fmt.Sprintf(`INSERT INTO %s.usage_windows (tenant, meter, granularity, window_start, value, events)
		VALUES ('acme', 'api_calls', 'month', '2026-11-01Z', 450, 3)`, schema))
	for i, c := range []struct {
		id, metric, resolution string
		value                  int64
	}{
		{"order-5", "tokens", "counted", 700},
		{"order-5", "tokens", "counted", 900},
		{"order-5", "tokens", "dismissed", 5000},
		{"order-3", "api_calls", "counted", 250},
		{"order-4", "api_calls", "counted", 60},
		{"order-6", "tokens", "counted", 40},
	} {
		db.Exec(t, `INSERT INTO ledger_conflicts (tenant, event_id, counted_hash, rejected_hash, rejected_event, src_partition, src_offset,
				metric, value, event_time, resolution, counted_amount, counted_events)
			VALUES ('acme', $1, '\x00', $2, '{}', 0, $3, $4, $5, $6, $7, CASE WHEN $7 = 'counted' THEN 0 END, CASE WHEN $7 = 'counted' THEN 0 END)`,
			c.id, []byte{byte(i)}, i, c.metric, c.value, at, c.resolution)
	}
	// The live windows are empty, so every rebuilt window is a change.
	changes, _, err := usagedata.CompareShadow(ctx, db.Pool, schema, time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, c := range changes {
		if c.Granularity == "month" {
			got[c.Metric] = fmt.Sprintf("%s/%d", c.After, c.EventsAfter)
		}
	}
	// api_calls: the replay's 450 over 3 events, nothing over it (order-3's
	// 250 is the replayed maximum, order-4's 60 below it); tokens: order-5's
	// copies count 900 once, order-6's 40 is its own event.
	want := map[string]string{"api_calls": "450/3", "tokens": "940/2"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("rebuilt month windows %v, want %v", got, want)
	}
}

// TestShadowSwap: the swap replaces the live windows from the given start
// on with the rebuilt ones, keeps older ones, and runs under the stored
// offsets' lock; dropping the shadow removes it, twice is no error.
func TestShadowSwap(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	const schema = "rebuild_swap"
	if err := usagedata.CreateShadow(ctx, db.Pool, schema); err != nil {
		t.Fatal(err)
	}
	if err := usagedata.CreateShadow(ctx, db.Pool, schema); err == nil {
		t.Error("a second CreateShadow of one schema succeeded")
	}
	db.Exec(t, `INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset) VALUES ('g', 'usage.events', 0, 7), ('g', 'usage.events', 1, 9)`)
	db.Exec(t, `INSERT INTO usage_windows (tenant, meter, granularity, window_start, value, events) VALUES
		('acme', 'api_calls', 'month', '2026-10-01Z', 5, 5), ('acme', 'api_calls', 'month', '2026-11-01Z', 8, 8), ('acme', 'tokens', 'month', '2026-11-01Z', 1, 1)`)
	db.Exec(t, `INSERT INTO `+schema+`.usage_windows (tenant, meter, granularity, window_start, value, events) VALUES
		('acme', 'api_calls', 'month', '2026-10-01Z', 50, 50), ('acme', 'api_calls', 'month', '2026-11-01Z', 10, 10)`)
	// A meter's group is a window of its own, compared and swapped as one.
	db.Exec(t, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events) VALUES
		('acme', 'tokens', 'model=a', 'month', '2026-11-01Z', 3, 3)`)
	db.Exec(t, `INSERT INTO `+schema+`.usage_windows (tenant, meter, group_key, granularity, window_start, value, events) VALUES
		('acme', 'tokens', 'model=a', 'month', '2026-11-01Z', 4, 4)`)
	from := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	changes, total, err := usagedata.CompareShadow(ctx, db.Pool, schema, from)
	if err != nil {
		t.Fatal(err)
	}
	if total != 3 || len(changes) != 3 || changes[0].Before != "8" || changes[0].After != "10" || changes[1].Before != "1" || changes[1].After != "" ||
		changes[2].Group != "model=a" || changes[2].Before != "3" || changes[2].After != "4" {
		t.Fatalf("compare: %d windows, changes %+v", total, changes)
	}
	err = pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		offs, err := usagedata.LockOffsets(ctx, tx, "g", "usage.events")
		if err != nil {
			return err
		}
		if want := map[int]int64{0: 7, 1: 9}; !maps.Equal(offs, want) {
			t.Errorf("locked offsets %v, want %v", offs, want)
		}
		rows, err := db.Pool.Query(ctx, `SELECT partition FROM consumer_offsets WHERE consumer_group = 'g' FOR UPDATE SKIP LOCKED`)
		if err != nil {
			return err
		}
		if free, err := pgx.CollectRows(rows, pgx.RowTo[int]); err != nil || len(free) != 0 {
			t.Errorf("partitions %v not locked by LockOffsets' transaction (%v)", free, err)
		}
		return usagedata.SwapShadow(ctx, tx, schema, from)
	})
	if err != nil {
		t.Fatal(err)
	}
	rows, err := db.Pool.Query(ctx, `SELECT meter || ' ' || group_key || ' ' || to_char(window_start AT TIME ZONE 'UTC', 'YYYY-MM') || ' ' || value FROM usage_windows ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	live, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(live, "; "), "api_calls  2026-10 5; api_calls  2026-11 10; tokens model=a 2026-11 4"; got != want {
		t.Errorf("live windows after the swap: %s, want %s", got, want)
	}
	for range 2 {
		if err := usagedata.DropShadow(ctx, db.Pool, schema); err != nil {
			t.Fatal(err)
		}
	}
	var exists bool
	if err := db.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)`, schema).Scan(&exists); err != nil || exists {
		t.Errorf("shadow schema still there after DropShadow (%v)", err)
	}
}

// TestShadowRefusesOddNames: a schema name goes into the statements, so
// only plain identifiers pass.
func TestShadowRefusesOddNames(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, name := range []string{"", "Rebuild", "rebuild; DROP TABLE ledger", "1rebuild", "rebuild-x", strings.Repeat("a", 64)} {
		// No database is reached: the name is refused first.
		if err := usagedata.DropShadow(ctx, nil, name); err == nil {
			t.Errorf("DropShadow(%q) accepted the name", name)
		}
	}
}

// addToShadow applies rows to the shadow's tables, as the replay's
// rollup does: through a connection with the schema first on its
// search_path.
func addToShadow(t *testing.T, db *pgtest.DB, schema string, rows []meterRow) {
	t.Helper()
	ctx := context.Background()
	err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET LOCAL search_path TO "+schema+", public"); err != nil {
			return err
		}
		return usagedata.AddMeterWindows(ctx, tx, toAdds(rows))
	})
	if err != nil {
		t.Fatal(err)
	}
}

// readUniques lists table's unique values of windows before (or, when
// after is set, at or after) start, one "meter group granularity start
// value" line each, sorted.
func readUniques(t *testing.T, db *pgtest.DB, table string, start time.Time, after bool) []string {
	t.Helper()
	rows, err := db.Pool.Query(context.Background(), `SELECT meter || ' ' || group_key || ' ' || granularity || ' ' || window_start::text || ' ' || value
		FROM `+table+` WHERE (window_start >= $1) = $2 ORDER BY 1`, start, after)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// swap runs SwapShadowWith as rebuild does, under LockOffsets.
func swap(t *testing.T, db *pgtest.DB, schema string, from time.Time, opts usagedata.ShadowOptions) {
	t.Helper()
	ctx := context.Background()
	err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		if _, err := usagedata.LockOffsets(ctx, tx, "g", "usage.events"); err != nil {
			return err
		}
		return usagedata.SwapShadowWith(ctx, tx, schema, from, opts)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// storedTruth is truth with group keys as stored.
func storedTruth(rows []meterRow) map[windowKey]windowState {
	out := map[windowKey]windowState{}
	for k, w := range truth(rows) {
		k.group = usagedata.StoredGroupKey(k.group)
		out[k] = w
	}
	return out
}

// TestShadowSwapMeterWindows: a shadow filled by AddMeterWindows with rows
// of every aggregation (long group keys and long unique values included)
// swaps in exactly over stale live windows and unique values, keeping
// those before the start; the comparison then finds nothing to change,
// and counting continues on the live tables exactly: unique values the
// replay saw are not counted again, a latest window keeps its later event
// over an older one, and the replay's long group keys are given back.
func TestShadowSwapMeterWindows(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	const schema = "rebuild_meters"
	if err := usagedata.CreateShadow(ctx, db.Pool, schema); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(3, 5))
	keyA, keyB := longGroupKey(r), longGroupKey(r)
	long4 := randomText(r, 4096)
	from := time.Date(2026, 11, 3, 0, 0, 0, 0, time.UTC)
	draw := func(groups map[string]string) []meterRow {
		var rows []meterRow
		for _, agg := range meter.Aggregations {
			for _, row := range randomRows(r, "acme", "m_"+string(agg), agg, 40) {
				row.group = groups[row.group]
				rows = append(rows, row)
			}
		}
		return rows
	}
	// Stale live state from the start on (other events, keyB unknown),
	// and a window before the start, with a unique value, to be kept.
	stale := draw(map[string]string{"": "", "model=a": keyA, "model=b": "model=b"})
	before := time.Date(2026, 11, 2, 10, 0, 0, 0, time.UTC)
	old := []meterRow{{"acme", "m_unique_count", keyA, windows.Hour, before,
		meter.Contribution{Aggregation: meter.UniqueCount, Time: before, ID: "old", Distinct: long4, HasDistinct: true}, 1}}
	if err := inTx(ctx, db, toAdds(slices.Concat(stale, old)), false); err != nil {
		t.Fatal(err)
	}

	// The replay counts part of the events; the rest come after the swap.
	rows := withRaises(r, draw(map[string]string{"": "", "model=a": keyA, "model=b": keyB}))
	r.Shuffle(len(rows), func(i, j int) { rows[i], rows[j] = rows[j], rows[i] })
	replayed, later := rows[:len(rows)*2/3], rows[len(rows)*2/3:]
	// Explicitly: a long unique value and an older latest event after the swap.
	at := time.Date(2026, 11, 3, 12, 30, 0, 0, time.UTC)
	u := func(id, v string) meterRow {
		return meterRow{"acme", "m_uniques_long", keyB, windows.Hour, windows.Hour.Start(at),
			meter.Contribution{Aggregation: meter.UniqueCount, Time: at, ID: id, Distinct: v, HasDistinct: true}, 1}
	}
	l := func(id string, v int64, when time.Duration) meterRow {
		return meterRow{"acme", "m_latest_one", keyB, windows.Hour, windows.Hour.Start(at),
			meter.Contribution{Aggregation: meter.Latest, Time: at.Add(when), ID: id, Value: v}, 1}
	}
	replayed = append(replayed, u("u1", long4), u("u2", "x"), l("l1", 5, 0))
	later = append(later, u("u3", long4), u("u4", "x"), u("u5", "y"), l("l2", 9, -time.Minute))
	addToShadow(t, db, schema, replayed)

	changes, total, err := usagedata.CompareShadow(ctx, db.Pool, schema, from)
	if err != nil {
		t.Fatal(err)
	}
	if len(changes) == 0 || total < len(storedTruth(replayed)) {
		t.Fatalf("compare: %d changes of %d windows, want changes over at least the %d rebuilt windows", len(changes), total, len(storedTruth(replayed)))
	}
	swap(t, db, schema, from, usagedata.ShadowOptions{})
	diffWindows(t, readMeterWindows(t, db, "acme"), storedTruth(slices.Concat(replayed, old)))
	if got, want := readUniques(t, db, "meter_uniques", from, true), readUniques(t, db, schema+".meter_uniques", from, true); len(want) == 0 || !slices.Equal(got, want) {
		t.Errorf("live unique values after the swap: %d, want the shadow's %d", len(got), len(want))
	}
	if got := readUniques(t, db, "meter_uniques", from, false); len(got) != 1 || !strings.HasPrefix(got[0], "m_unique_count "+usagedata.StoredGroupKey(keyA)) {
		t.Errorf("live unique values before the start after the swap: %q, want the older window's one", got)
	}
	if changes, _, err := usagedata.CompareShadow(ctx, db.Pool, schema, from); err != nil || len(changes) != 0 {
		t.Errorf("compare after the swap: %d changes (%v), want none", len(changes), err)
	}
	keys, err := usagedata.GroupKeys(ctx, db.Pool, "m_sum", []string{usagedata.StoredGroupKey(keyB)})
	if err != nil || keys[usagedata.StoredGroupKey(keyB)] != keyB {
		t.Errorf("the replay's long group key is not given back after the swap: %v", err)
	}

	if err := inTx(ctx, db, toAdds(later), false); err != nil {
		t.Fatal(err)
	}
	want := storedTruth(slices.Concat(replayed, later, old))
	if w := want[windowKey{"acme", "m_uniques_long", usagedata.StoredGroupKey(keyB), string(windows.Hour), windows.Hour.Start(at)}]; w.value != "3" {
		t.Fatalf("ground truth: %+v, want 3 unique values", w)
	}
	if w := want[windowKey{"acme", "m_latest_one", usagedata.StoredGroupKey(keyB), string(windows.Hour), windows.Hour.Start(at)}]; w.value != "5" {
		t.Fatalf("ground truth: %+v, want the later event's 5", w)
	}
	diffWindows(t, readMeterWindows(t, db, "acme"), want)
}

// TestShadowSwapOneMeter: narrowed to named meters, the comparison and
// the swap see and replace only their windows, unique values and long
// group keys, and leave every other meter's live rows as they are;
// counted conflicts stay in their metric's implicit meter, rebuilt with
// it.
func TestShadowSwapOneMeter(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	const schema = "rebuild_one"
	if err := usagedata.CreateShadow(ctx, db.Pool, schema); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(11, 13))
	keyA, keyB, keyC := longGroupKey(r), longGroupKey(r), longGroupKey(r)
	h := time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)
	from := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	uniq := func(meterName, key, id, v string) meterRow {
		return meterRow{"acme", meterName, key, windows.Hour, h,
			meter.Contribution{Aggregation: meter.UniqueCount, Time: h, ID: id, Distinct: v, HasDistinct: true}, 1}
	}
	sum := func(id string, v int64) meterRow {
		return meterRow{"acme", "api_calls", "", windows.Hour, h, meter.Contribution{Aggregation: meter.Sum, Time: h, ID: id, Value: v}, 1}
	}
	live := []meterRow{uniq("m1", keyA, "1", "a"), uniq("m1", keyA, "2", "b"), uniq("m2", keyA, "3", "a"), sum("4", 7)}
	if err := inTx(ctx, db, toAdds(live), false); err != nil {
		t.Fatal(err)
	}
	addToShadow(t, db, schema, []meterRow{uniq("m1", keyC, "5", "c"), uniq("m2", keyB, "6", "b"), uniq("m2", keyB, "7", "c"), sum("8", 100)})
	// A held copy an operator counted: it joins api_calls' rebuilt windows.
	db.Exec(t, `INSERT INTO ledger_conflicts (tenant, event_id, counted_hash, rejected_hash, rejected_event, src_partition, src_offset,
			metric, value, event_time, resolution, counted_amount, counted_events)
		VALUES ('acme', 'held', '\x00', '\x01', '{}', 0, 1, 'api_calls', 40, $1, 'counted', 0, 0)`, h)

	only := func(meters ...string) usagedata.ShadowOptions { return usagedata.ShadowOptions{Meters: meters} }
	changes, total, err := usagedata.CompareShadowWith(ctx, db.Pool, schema, from, only("m2"))
	if err != nil {
		t.Fatal(err)
	}
	// m2's live window (keyA) goes, its rebuilt one (keyB) comes.
	if total != 2 || len(changes) != 2 || changes[0].Metric != "m2" || changes[1].Metric != "m2" {
		t.Fatalf("compare of m2: %d windows, changes %+v", total, changes)
	}
	swap(t, db, schema, from, only("m2"))
	window := func(meterName, key string) string {
		w, ok := readMeterWindows(t, db, "acme")[windowKey{"acme", meterName, usagedata.StoredGroupKey(key), string(windows.Hour), h}]
		if !ok {
			return "absent"
		}
		return fmt.Sprintf("%s/%d", w.value, w.events)
	}
	for _, c := range []struct{ meter, key, want string }{
		{"m1", keyA, "2/2"}, {"m2", keyA, "absent"}, {"m2", keyB, "2/2"}, {"api_calls", "", "7/1"},
	} {
		if got := window(c.meter, c.key); got != c.want {
			t.Errorf("after swapping m2: %s window %.10q = %s, want %s", c.meter, c.key, got, c.want)
		}
	}
	if got, want := len(readUniques(t, db, "meter_uniques", from, true)), 4; got != want { // m1: a, b; m2: b, c
		t.Errorf("after swapping m2: %d live unique values, want %d", got, want)
	}
	if _, err := usagedata.GroupKeys(ctx, db.Pool, "m2", []string{usagedata.StoredGroupKey(keyB)}); err != nil {
		t.Errorf("m2's rebuilt group key: %v", err)
	}
	if _, err := usagedata.GroupKeys(ctx, db.Pool, "m1", []string{usagedata.StoredGroupKey(keyC)}); !errors.Is(err, usagedata.ErrUnknownDigest) {
		t.Errorf("m1's shadow group key after swapping m2 only: %v, want ErrUnknownDigest", err)
	}
	// m1 still counts on its live unique values.
	if err := inTx(ctx, db, toAdds([]meterRow{uniq("m1", keyA, "9", "a"), uniq("m1", keyA, "10", "c")}), false); err != nil {
		t.Fatal(err)
	}
	if got := window("m1", keyA); got != "3/4" {
		t.Errorf("m1 after more events: %s, want 3/4", got)
	}

	swap(t, db, schema, from, only("api_calls"))
	if got := window("api_calls", ""); got != "140/2" {
		t.Errorf("api_calls rebuilt with the counted conflict: %s, want 140/2", got)
	}
	if changes, total, err := usagedata.CompareShadowWith(ctx, db.Pool, schema, from, only("api_calls", "m2")); err != nil || len(changes) != 0 || total != 5 {
		t.Errorf("compare after the swaps: %d changes of %d windows (%v), want none of 5", len(changes), total, err)
	}
}
