package rollup_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/recordsign"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

var now = time.Date(2026, 11, 21, 19, 0, 0, 0, time.UTC)

func newAgg(t testing.TB) (*rollup.Aggregator, *pgtest.DB) {
	t.Helper()
	db := pgtest.New(t)
	return rollup.New(db.Pool, rollup.Config{
		Group: "test", Topic: "usage.events", Now: func() time.Time { return now }, Logger: slog.New(slog.DiscardHandler),
		AdjustmentSignatures: recordsign.Policy{Keys: testKeys},
	}), db
}

func ev(id, tenant, metric string, value int64, at time.Time) events.Event {
	return events.Event{ID: id, Tenant: tenant, Metric: metric, Value: value, Time: at}
}

// batch turns events (or raw values) into records of partition 0 from offset.
func batch(from int64, items ...any) []rollup.Record {
	recs := make([]rollup.Record, len(items))
	for i, it := range items {
		var key, val []byte
		switch x := it.(type) {
		case events.Event:
			key, val = []byte(x.Tenant), x.AppendJSON(nil)
		case string:
			key, val = []byte("acme"), []byte(x)
		}
		recs[i] = rollup.Record{Partition: 0, Offset: from + int64(i), Key: key, Value: val, Time: now}
	}
	return recs
}

type window struct {
	value  string
	events int64
}

func windowsOf(t *testing.T, db *pgtest.DB, granularity string) map[string]window {
	t.Helper()
	rows, err := db.Pool.Query(context.Background(), `SELECT tenant || '/' || meter || '/' || to_char(window_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI'), value::text, events
		FROM usage_windows WHERE granularity = $1`, granularity)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]window{}
	for rows.Next() {
		var k string
		var w window
		if err := rows.Scan(&k, &w.value, &w.events); err != nil {
			t.Fatal(err)
		}
		out[k] = w
	}
	return out
}

func count(t *testing.T, db *pgtest.DB, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := db.Pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestDedupAndWindows(t *testing.T) {
	a, db := newAgg(t)
	ctx := context.Background()
	t1 := now.Add(-90 * time.Minute) // 17:30
	t2 := now.Add(-5 * time.Minute)  // 18:55
	e1 := ev("a", "acme", "api_calls", 5, t1)
	e2 := ev("b", "acme", "api_calls", 7, t2)
	e3 := ev("c", "acme", "tokens", 1<<53, t2)
	e4 := ev("d", "acme", "tokens", 1<<53, t2)
	res, err := a.Apply(ctx, 0, -1, batch(0, e1, e2, e1, e3, e4))
	if err != nil {
		t.Fatal(err)
	}
	if res.Counted != 4 || res.Duplicates != 1 || res.NextOffset != 5 {
		t.Fatalf("first batch: %+v", res)
	}
	// A resend of everything in a later batch counts nothing.
	res, err = a.Apply(ctx, 0, 5, batch(5, e2, e1, e3))
	if err != nil {
		t.Fatal(err)
	}
	if res.Counted != 0 || res.Duplicates != 3 {
		t.Fatalf("resend batch: %+v", res)
	}
	hours := windowsOf(t, db, "hour")
	want := map[string]window{
		"acme/api_calls/2026-11-21T17:00": {"5", 1},
		"acme/api_calls/2026-11-21T18:00": {"7", 1},
		"acme/tokens/2026-11-21T18:00":    {"18014398509481984", 2}, // 2 × 2^53: beyond float64's exact range
	}
	for k, w := range want {
		if hours[k] != w {
			t.Errorf("hour window %s = %+v, want %+v", k, hours[k], w)
		}
	}
	if len(hours) != len(want) {
		t.Errorf("hour windows = %v", hours)
	}
	months := windowsOf(t, db, "month")
	if months["acme/api_calls/2026-11-01T00:00"] != (window{"12", 2}) {
		t.Errorf("month window = %+v", months)
	}
	if n := len(windowsOf(t, db, "minute")); n != 3 {
		t.Errorf("%d minute windows, want 3", n)
	}
	if n := count(t, db, `SELECT count(*) FROM ledger`); n != 4 {
		t.Errorf("%d ledger rows, want 4", n)
	}
}

// TestConflictsNeverLowerUsage: a resend with another value of the same
// metric and time raises the counted event to the larger value, once; a
// lower resend changes nothing; another time is held. Every conflict is
// recorded with its resolution.
func TestConflictsNeverLowerUsage(t *testing.T) {
	a, db := newAgg(t)
	ctx := context.Background()
	orig := ev("order-1", "acme", "api_calls", 5, now.Add(-time.Hour))
	changedValue := orig
	changedValue.Value = 500
	changedDay := orig
	changedDay.Time = now.Add(-49 * time.Hour) // another day: still the same (tenant, id)
	res, err := a.Apply(ctx, 0, -1, batch(0, orig, changedValue))
	if err != nil {
		t.Fatal(err)
	}
	if res.Counted != 1 || res.Conflicts != 1 || res.Raised != 1 {
		t.Fatalf("in-batch conflict: %+v", res)
	}
	res, err = a.Apply(ctx, 0, 2, batch(2, changedDay, orig, changedValue))
	if err != nil {
		t.Fatal(err)
	}
	if res.Counted != 0 || res.Conflicts != 2 || res.Held != 1 || res.Kept != 1 || res.Duplicates != 1 {
		t.Fatalf("cross-batch conflicts: %+v", res)
	}
	if months := windowsOf(t, db, "month"); months["acme/api_calls/2026-11-01T00:00"] != (window{"500", 1}) {
		t.Fatalf("month = %+v, want the larger payload, one event", months)
	}
	got := map[string]int{}
	rows, err := db.Pool.Query(ctx, `SELECT resolution, count(*) FROM ledger_conflicts WHERE tenant = 'acme' AND event_id = 'order-1' GROUP BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var r string
		var n int
		if err := rows.Scan(&r, &n); err != nil {
			t.Fatal(err)
		}
		got[r] = n
	}
	if got["raised"] != 1 || got["held"] != 1 || got["kept"] != 1 || len(got) != 3 {
		t.Fatalf("resolutions = %v, want one raised, one held, one kept", got)
	}
}

func TestOffsetFence(t *testing.T) {
	a, _ := newAgg(t)
	ctx := context.Background()
	e := ev("a", "acme", "api_calls", 1, now)
	if _, err := a.Apply(ctx, 0, -1, batch(0, e)); err != nil {
		t.Fatal(err)
	}
	if next, err := a.NextOffset(ctx, 0); err != nil || next != 1 {
		t.Fatalf("NextOffset = %d, %v", next, err)
	}
	// A consumer that still believes the partition starts at 0 is fenced.
	_, err := a.Apply(ctx, 0, 0, batch(0, ev("z", "acme", "api_calls", 1, now)))
	if !errors.Is(err, rollup.ErrFenced) {
		t.Fatalf("stale Apply = %v, want ErrFenced", err)
	}
	if next, _ := a.NextOffset(ctx, 0); next != 1 {
		t.Fatalf("offset moved to %d by a fenced batch", next)
	}
	if next, _ := a.NextOffset(ctx, 7); next != -1 {
		t.Fatalf("unknown partition NextOffset = %d, want -1", next)
	}
}

func TestDeadLetters(t *testing.T) {
	a, db := newAgg(t)
	ctx := context.Background()
	good := ev("ok", "acme", "api_calls", 1, now)
	tooOld := ev("old", "acme", "api_calls", 1, now.Add(-36*24*time.Hour))
	res, err := a.Apply(ctx, 3, -1, []rollup.Record{
		{Partition: 3, Offset: 10, Key: []byte("acme"), Value: []byte("{not json")},
		{Partition: 3, Offset: 11, Key: []byte("acme"), Value: good.AppendJSON(nil)},
		{Partition: 3, Offset: 12, Key: []byte("acme"), Value: []byte(`{"id":"x","tenant":"acme","metric":"a b","value":-1,"time":"2026-11-21T18:00:00Z"}`)},
		{Partition: 3, Offset: 13, Key: []byte("acme"), Value: tooOld.AppendJSON(nil)},
		{Partition: 3, Offset: 14, Key: []byte("acme"), Value: []byte("\xff\xfe")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Counted != 1 || res.DeadLettered != 4 || res.NextOffset != 15 {
		t.Fatalf("result %+v", res)
	}
	rows, err := db.Pool.Query(ctx, `SELECT source_offset, error_class, error FROM usage_dlq ORDER BY source_offset`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	want := map[int64]string{10: rollup.ClassUndecodable, 12: rollup.ClassInvalid, 13: rollup.ClassTooOld, 14: rollup.ClassUndecodable}
	for rows.Next() {
		var off int64
		var class, msg string
		if err := rows.Scan(&off, &class, &msg); err != nil {
			t.Fatal(err)
		}
		if want[off] != class || msg == "" {
			t.Errorf("offset %d: class %s (%s), want %s", off, class, msg, want[off])
		}
		delete(want, off)
	}
	if len(want) != 0 {
		t.Fatalf("missing dead letters %v", want)
	}
	var headers string
	if err := db.Pool.QueryRow(ctx, `SELECT headers::text FROM outbox WHERE topic = 'usage.events.dlq' ORDER BY id LIMIT 1`).Scan(&headers); err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{`"error"`, `"error-class": "undecodable"`, `"source-topic": "usage.events"`, `"source-partition": "3"`, `"source-offset": "10"`, `"failed-at"`} {
		if !strings.Contains(headers, h) {
			t.Errorf("DLQ headers %s lack %s", headers, h)
		}
	}
}

func TestLateEventsBecomeCorrections(t *testing.T) {
	a, db := newAgg(t)
	ctx := context.Background()
	lastMonth := time.Date(2026, 10, 31, 23, 59, 0, 0, time.UTC)
	res, err := a.Apply(ctx, 0, -1, batch(0,
		ev("l1", "acme", "api_calls", 3, lastMonth), ev("l2", "acme", "api_calls", 4, lastMonth), ev("n1", "acme", "api_calls", 1, now)))
	if err != nil {
		t.Fatal(err)
	}
	if res.Late != 2 || res.Counted != 3 {
		t.Fatalf("result %+v", res)
	}
	if months := windowsOf(t, db, "month"); months["acme/api_calls/2026-10-01T00:00"] != (window{"7", 2}) {
		t.Fatalf("late events not in their own window: %v", months)
	}
	var value string
	var n int64
	if err := db.Pool.QueryRow(ctx, `SELECT value::text, events FROM usage_corrections WHERE period_start = '2026-10-01Z'`).Scan(&value, &n); err != nil || value != "7" || n != 2 {
		t.Fatalf("correction = %s/%d, %v", value, n, err)
	}
}
