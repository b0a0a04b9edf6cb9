package usagedata_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/windows"
)

// windowValue reads one window's value and events, "-" when it does not
// exist.
func windowValue(t *testing.T, db *pgtest.DB, tenant string, start time.Time) string {
	t.Helper()
	var v string
	var n int64
	err := db.Pool.QueryRow(context.Background(), `SELECT value::text, events FROM usage_windows
		WHERE tenant = $1 AND meter = 'calls' AND granularity = 'hour' AND window_start = $2`, tenant, start).Scan(&v, &n)
	if err != nil {
		return "-"
	}
	return fmt.Sprintf("%s/%d", v, n)
}

// AddWindows creates windows at zero and only ever adds to them; it
// refuses an amount that would take usage away, and leaves every window
// as it was when it does.
func TestAddWindowsOnlyGrows(t *testing.T) {
	db := pgtest.New(t)
	ctx := context.Background()
	h := time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)
	add := func(tenants []string, vals []string, events []int64) error {
		n := len(tenants)
		starts := make([]time.Time, n)
		for i := range starts {
			starts[i] = h
		}
		return usagedata.AddWindows(ctx, db.Pool, &usagedata.WindowAdds{
			Tenants: tenants, Meters: slices.Repeat([]string{"calls"}, n), Granularities: slices.Repeat([]string{string(windows.Hour)}, n),
			Starts: starts, Values: vals, Events: events,
		})
	}
	if err := add([]string{"b", "a"}, []string{"9223372036854775807", "5"}, []int64{1, 1}); err != nil {
		t.Fatal(err)
	}
	if err := add([]string{"a", "b"}, []string{"7", "9223372036854775807"}, []int64{0, 2}); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"a": "12/1", "b": "18446744073709551614/3"}
	for tenant, w := range want {
		if got := windowValue(t, db, tenant, h); got != w {
			t.Errorf("window of %s = %s, want %s", tenant, got, w)
		}
	}
	for _, bad := range []struct {
		val    string
		events int64
	}{{"-1", 0}, {"", 0}, {"1", -1}} {
		if err := add([]string{"a", "c"}, []string{"1", bad.val}, []int64{0, bad.events}); err == nil {
			t.Errorf("adding %q with %d events: no error", bad.val, bad.events)
		}
	}
	want["c"] = "-"
	for tenant, w := range want {
		if got := windowValue(t, db, tenant, h); got != w {
			t.Errorf("after refused adds, window of %s = %s, want %s", tenant, got, w)
		}
	}
}

// AddWindows sorts its rows by key, in place, so that concurrent callers
// lock windows in one order.
func TestAddWindowsSortsRows(t *testing.T) {
	db := pgtest.New(t)
	h := time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)
	w := &usagedata.WindowAdds{
		Tenants: []string{"b", "a", "a"}, Meters: []string{"calls", "calls", "bytes"},
		Granularities: []string{"hour", "hour", "hour"}, Starts: []time.Time{h, h, h.Add(time.Hour)},
		Values: []string{"1", "2", "3"}, Events: []int64{1, 2, 3},
	}
	if err := usagedata.AddWindows(context.Background(), db.Pool, w); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(w.Tenants, w.Meters, w.Values, w.Events); got != "[a a b] [bytes calls calls] [3 2 1] [3 2 1]" {
		t.Errorf("rows after AddWindows: %s", got)
	}
}

// DeleteExpired deletes the ledger rows of event days before the
// cutoff's day, however many statements that takes, and no others.
func TestDeleteExpired(t *testing.T) {
	db := pgtest.New(t)
	ctx := context.Background()
	cutoff := time.Date(2026, 11, 3, 15, 0, 0, 0, time.UTC)
	const old = 10000 + 7 // more than one statement deletes
	days := map[string]time.Time{
		"old":        cutoff.Add(-48 * time.Hour),
		"day before": time.Date(2026, 11, 2, 23, 59, 59, 0, time.UTC),
		"same day":   time.Date(2026, 11, 3, 0, 0, 0, 0, time.UTC),
		"later":      cutoff.Add(time.Hour),
	}
	var b usagedata.LedgerInsert
	row := func(id string, at time.Time) {
		b.Tenants, b.IDs, b.Metrics = append(b.Tenants, "acme"), append(b.IDs, id), append(b.Metrics, "calls")
		b.Hashes, b.Values, b.Times = append(b.Hashes, []byte{1}), append(b.Values, 1), append(b.Times, at)
		b.Partitions, b.Offsets = append(b.Partitions, 0), append(b.Offsets, int64(len(b.Offsets)))
	}
	for i := range old {
		row(fmt.Sprint("old-", i), days["old"])
	}
	for _, name := range []string{"day before", "same day", "later"} {
		row(name, days[name])
	}
	inserted := 0
	if err := usagedata.InsertLedger(ctx, db.Pool, &b, func(string, string) { inserted++ }); err != nil {
		t.Fatal(err)
	}
	if inserted != old+3 {
		t.Fatalf("inserted %d ledger rows, want %d", inserted, old+3)
	}
	n, err := usagedata.DeleteExpired(ctx, db.Pool, cutoff)
	if err != nil {
		t.Fatal(err)
	}
	if n != old+1 {
		t.Errorf("deleted %d rows, want %d", n, old+1)
	}
	var left []string
	err = usagedata.ReadLedger(ctx, db.Pool, slices.Repeat([]string{"acme"}, 3), []string{"day before", "same day", "later"}, false,
		func(_, id string, _ usagedata.LedgerRow) { left = append(left, id) })
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(left)
	if got := fmt.Sprint(left); got != "[later same day]" {
		t.Errorf("ledger rows left: %s, want [later same day]", got)
	}
	if n, err := usagedata.DeleteExpired(ctx, db.Pool, cutoff); err != nil || n != 0 {
		t.Errorf("deleting again: %d rows, %v; want 0", n, err)
	}
}

// AdvanceOffset is a compare-and-set: it moves the stored offset only
// from where the caller says it is.
func TestAdvanceOffsetIsACompareAndSet(t *testing.T) {
	db := pgtest.New(t)
	ctx := context.Background()
	steps := []struct {
		from, next int64
		want       bool
	}{
		{-1, 10, true}, // nothing stored yet: any start
		{5, 20, false}, // not where it is
		{10, 20, true},
		{10, 30, false}, // a stale owner
	}
	for _, s := range steps {
		moved, err := usagedata.AdvanceOffset(ctx, db.Pool, "g", "usage.events", 3, s.from, s.next)
		if err != nil || moved != s.want {
			t.Errorf("AdvanceOffset(%d, %d) = %v, %v; want %v", s.from, s.next, moved, err, s.want)
		}
	}
	if next, err := usagedata.NextOffset(ctx, db.Pool, "g", "usage.events", 3); err != nil || next != 20 {
		t.Errorf("NextOffset = %d, %v; want 20", next, err)
	}
	if next, err := usagedata.NextOffset(ctx, db.Pool, "g", "usage.events", 4); err != nil || next != -1 {
		t.Errorf("NextOffset of a partition never stored = %d, %v; want -1", next, err)
	}
}

// NumericInt reads integer numerics of any size and exponent; NULL is 0.
func TestNumericInt(t *testing.T) {
	db := pgtest.New(t)
	tests := []struct{ sql, want string }{
		{"NULL", "0"}, {"0", "0"}, {"12", "12"}, {"18446744073709551614", "18446744073709551614"},
		{"1e3", "1000"}, {"120.0", "120"}, {"12e20", "1200000000000000000000"},
	}
	for _, tt := range tests {
		var n pgtype.Numeric
		if err := db.Pool.QueryRow(context.Background(), `SELECT (`+tt.sql+`)::numeric`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if got := usagedata.NumericInt(n).String(); got != tt.want {
			t.Errorf("NumericInt(%s) = %s, want %s", tt.sql, got, tt.want)
		}
	}
}
