package usagedata_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/windows"
)

// packFixture defines the meters of the pack tests and writes hour
// windows of two tenants over the 20 days that ended 10 days ago, random
// groups missing in random hours.
func packFixture(t *testing.T) (*pgtest.DB, time.Time) {
	t.Helper()
	db := pgtest.New(t)
	ctx := context.Background()
	for _, m := range []accounts.Meter{
		{Name: "tokens_by_model", Metric: "tokens", Aggregation: "sum", GroupBy: []string{"model", "region"}},
		{Name: "peak_by_model", Metric: "tokens", Aggregation: "max", GroupBy: []string{"model"}},
		{Name: "last_by_model", Metric: "tokens", Aggregation: "latest", GroupBy: []string{"model"}},
	} {
		if _, _, err := accounts.PutMeter(ctx, db.Pool, m); err != nil {
			t.Fatal(err)
		}
	}
	today := time.Now().UTC().Truncate(24 * time.Hour)
	first := today.AddDate(0, 0, -30)
	r := rand.New(rand.NewPCG(3, 5))
	var a usagedata.MeterAdds
	for _, tenant := range []string{"acme", "bolt"} {
		for h := range 20 * 24 {
			at := first.Add(time.Duration(h) * time.Hour)
			for _, model := range []string{"a", "b", "c"} {
				for _, region := range []string{"eu", "us"} {
					if r.IntN(4) == 0 {
						continue
					}
					key := packKey(model, region)
					v := r.Int64N(1000)
					a.Append(tenant, "tokens_by_model", key, string(windows.Hour), at, meter.Contribution{Aggregation: meter.Sum, Value: v}, 1+r.Int64N(3))
					a.Append(tenant, "peak_by_model", packKey(model), string(windows.Hour), at, meter.Contribution{Aggregation: meter.Max, Value: v}, 1)
					a.Append(tenant, "last_by_model", packKey(model), string(windows.Hour), at,
						meter.Contribution{Aggregation: meter.Latest, Value: v, Time: at.Add(time.Duration(r.IntN(3600)) * time.Second), ID: fmt.Sprint(h, model, region)}, 1)
				}
			}
		}
	}
	if err := usagedata.AddMeterWindows(ctx, db.Pool, a); err != nil {
		t.Fatal(err)
	}
	return db, first
}

// packKey is the stored group key of these values.
func packKey(values ...string) string {
	b, _ := json.Marshal(values)
	return string(b)
}

// scanOne runs a one-row query and returns a function that scans it.
func scanOne(t *testing.T, db *pgtest.DB, sql string, args ...any) func(dst ...any) {
	t.Helper()
	return func(dst ...any) {
		t.Helper()
		if err := db.Pool.QueryRow(context.Background(), sql, args...).Scan(dst...); err != nil {
			t.Fatal(err)
		}
	}
}

// usageJSON is a read's whole answer as JSON.
func usageJSON(t *testing.T, pool *pgxpool.Pool, q usagedata.MeterQuery) string {
	t.Helper()
	u, err := usagedata.NewReader(pool).MeterUsage(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(u)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// packQueries are reads of the fixture's meters over whole and cut days,
// regrouped and filtered.
func packQueries(t *testing.T, pool *pgxpool.Pool, first time.Time) []usagedata.MeterQuery {
	t.Helper()
	reader := usagedata.NewReader(pool)
	var qs []usagedata.MeterQuery
	for _, name := range []string{"tokens_by_model", "peak_by_model"} {
		d, _, err := reader.Meter(context.Background(), name)
		if err != nil {
			t.Fatal(err)
		}
		for _, span := range [][2]time.Time{
			{first, first.AddDate(0, 0, 20)},
			{first.Add(-5 * time.Hour), first.AddDate(0, 0, 40)},
			{first.Add(13 * time.Hour), first.Add(77*time.Hour + 30*time.Minute)}, // cut days
		} {
			for _, groupBy := range [][]string{nil, {"model"}} {
				qs = append(qs, usagedata.MeterQuery{Tenant: "acme", Meter: d, Granularity: windows.Hour, From: span[0], To: span[1], GroupBy: groupBy})
			}
			qs = append(qs, usagedata.MeterQuery{Tenant: "bolt", Meter: d, Granularity: windows.Hour, From: span[0], To: span[1],
				GroupBy: []string{"model"}, Filter: map[string]string{"model": "b"}})
		}
	}
	return qs
}

// A read answers the same before and after the days are packed, and
// after a write to a packed day, before and after it is packed again.
func TestHourPacksAnswerAsTheWindows(t *testing.T) {
	t.Parallel()
	db, first := packFixture(t)
	ctx := context.Background()
	qs := packQueries(t, db.Pool, first)
	want := make([]string, len(qs))
	for i, q := range qs {
		want[i] = usageJSON(t, db.Pool, q)
	}
	check := func(stage string) {
		t.Helper()
		for i, q := range qs {
			if got := usageJSON(t, db.Pool, q); got != want[i] {
				t.Errorf("%s: %s %v %v %v-%v:\ngot  %.300s\nwant %.300s", stage, q.Meter.Name, q.GroupBy, q.Filter, q.From, q.To, got, want[i])
			}
		}
	}
	// Writing the fixture marked its days (all older than yesterday).
	var marked int
	scanOne(t, db, `SELECT count(*) FROM usage_pack_stale`)(&marked)
	if marked != 2*20*3 {
		t.Fatalf("%d days marked stale, want 120 (2 tenants, 20 days, 3 meters)", marked)
	}
	st, err := usagedata.PackHours(ctx, db.Pool, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if st.Repacked != 80 || st.Cleared != 40 || st.NextDay.After(time.Now()) {
		t.Fatalf("stats %+v", st)
	}
	var packed, latest, stale int
	scanOne(t, db, `SELECT count(*) FILTER (WHERE meter <> 'last_by_model'), count(*) FILTER (WHERE meter = 'last_by_model') FROM usage_packed_days`)(&packed, &latest)
	scanOne(t, db, `SELECT count(*) FROM usage_pack_stale`)(&stale)
	if packed != 2*20*2 || latest != 0 || stale != 0 {
		t.Fatalf("%d days packed, %d of latest, %d stale; want 80, 0, 0", packed, latest, stale)
	}
	check("packed")

	// A late event's window on a packed day: the day is marked in the
	// write's transaction, and reads answer it at once.
	day := first.AddDate(0, 0, 3)
	late := usagedata.MeterAdds{}
	late.Append("acme", "tokens_by_model", packKey("a", "eu"), string(windows.Hour), day.Add(7*time.Hour), meter.Contribution{Aggregation: meter.Sum, Value: 1000000}, 1)
	late.Append("acme", "tokens_by_model", packKey("z", "eu"), string(windows.Hour), day.Add(8*time.Hour), meter.Contribution{Aggregation: meter.Sum, Value: 5}, 1)
	if err := usagedata.AddMeterWindows(ctx, db.Pool, late); err != nil {
		t.Fatal(err)
	}
	scanOne(t, db, `SELECT count(*) FROM usage_pack_stale`)(&stale)
	if stale != 1 {
		t.Fatalf("%d days marked after a late write, want 1", stale)
	}
	for i, q := range qs {
		if q.Meter.Name == "tokens_by_model" && q.Tenant == "acme" && !q.From.After(day.Add(7*time.Hour)) && q.To.After(day.Add(8*time.Hour)) {
			if got := usageJSON(t, db.Pool, q); got == want[i] {
				t.Errorf("a read over the late windows did not change: %s", got)
			}
		}
		want[i] = usageJSON(t, db.Pool, q) // the truth, now
	}
	db.Exec(t, `DELETE FROM usage_packed_days WHERE tenant = 'acme' AND day = $1`, day)
	unpacked := make([]string, len(qs))
	for i, q := range qs {
		unpacked[i] = usageJSON(t, db.Pool, q)
	}
	for i := range qs {
		if unpacked[i] != want[i] {
			t.Fatalf("a marked day's read differs from its windows':\n%s\n%s", want[i], unpacked[i])
		}
	}
	if st, err = usagedata.PackHours(ctx, db.Pool, 1000); err != nil || st.Repacked != 1 {
		t.Fatalf("repacking: %+v, %v", st, err)
	}
	check("repacked")

	// Nothing is marked by writes of the current days.
	now := usagedata.MeterAdds{}
	now.Append("acme", "tokens_by_model", packKey("a", "eu"), string(windows.Hour), time.Now().UTC().Truncate(time.Hour), meter.Contribution{Aggregation: meter.Sum, Value: 1}, 1)
	if err := usagedata.AddMeterWindows(ctx, db.Pool, now); err != nil {
		t.Fatal(err)
	}
	scanOne(t, db, `SELECT count(*) FROM usage_pack_stale`)(&stale)
	if stale != 0 {
		t.Fatalf("%d days marked by a write of the current hour", stale)
	}
}

// New days are packed in order once, from the oldest grouped hour
// window to the last day three days old; a day with a value past int64,
// or a negative event count, stays unpacked and is read from its
// windows.
func TestHourPacksNewDays(t *testing.T) {
	t.Parallel()
	db, first := packFixture(t)
	ctx := context.Background()
	db.Exec(t, `DELETE FROM usage_pack_stale`) // as if written when the days were current
	huge := first.AddDate(0, 0, 5).Add(3 * time.Hour)
	db.Exec(t, `UPDATE usage_windows SET value = 100000000000000000000 WHERE tenant = 'acme' AND meter = 'peak_by_model' AND granularity = 'hour' AND window_start = $1`, huge)
	negative := first.AddDate(0, 0, 6).Add(5 * time.Hour)
	db.Exec(t, `UPDATE usage_windows SET events = -1 WHERE tenant = 'acme' AND meter = 'tokens_by_model' AND granularity = 'hour' AND window_start = $1`, negative)
	db.Exec(t, `DELETE FROM usage_pack_stale`)
	qs := packQueries(t, db.Pool, first)
	want := make([]string, len(qs))
	for i, q := range qs {
		want[i] = usageJSON(t, db.Pool, q)
	}
	st, err := usagedata.PackHours(ctx, db.Pool, 1000)
	if err != nil {
		t.Fatal(err)
	}
	today := time.Now().UTC().Truncate(24 * time.Hour)
	if st.Days != 30-2 || st.Units != 20*2*2-2 || !st.NextDay.Equal(today.AddDate(0, 0, -2)) {
		t.Fatalf("stats %+v; want 28 days, 78 units, next %s", st, today.AddDate(0, 0, -2))
	}
	var packed int
	scanOne(t, db, `SELECT count(*) FROM usage_packed_days WHERE tenant = 'acme' AND (meter = 'peak_by_model' AND day = $1 OR meter = 'tokens_by_model' AND day = $2)`,
		huge.Truncate(24*time.Hour), negative.Truncate(24*time.Hour))(&packed)
	if packed != 0 {
		t.Fatal("a day with a value past int64 or a negative event count was packed")
	}
	for i, q := range qs {
		if got := usageJSON(t, db.Pool, q); got != want[i] {
			t.Errorf("%s %v %v-%v:\ngot  %.300s\nwant %.300s", q.Meter.Name, q.GroupBy, q.From, q.To, got, want[i])
		}
	}
	if st, err = usagedata.PackHours(ctx, db.Pool, 1000); err != nil || st.Days != 0 || st.Units != 0 {
		t.Fatalf("a second call packed again: %+v, %v", st, err)
	}
}

// A writer that marks a packed day while the packer repacks it either
// committed before the copy (which holds its windows) or keeps its mark:
// the packer's removal of the mark waits for the writer.
func TestHourPackWaitsForAWriterOfItsDay(t *testing.T) {
	t.Parallel()
	db, first := packFixture(t)
	ctx := context.Background()
	if _, err := usagedata.PackHours(ctx, db.Pool, 1000); err != nil {
		t.Fatal(err)
	}
	day := first.AddDate(0, 0, 2)
	// Mark the day, as a committed late write would have.
	late := usagedata.MeterAdds{}
	late.Append("acme", "tokens_by_model", packKey("a", "eu"), string(windows.Hour), day.Add(time.Hour), meter.Contribution{Aggregation: meter.Sum, Value: 1}, 1)
	if err := usagedata.AddMeterWindows(ctx, db.Pool, late); err != nil {
		t.Fatal(err)
	}
	// A second writer holds the day's mark, not committed.
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	late = usagedata.MeterAdds{}
	late.Append("acme", "tokens_by_model", packKey("b", "us"), string(windows.Hour), day.Add(2*time.Hour), meter.Contribution{Aggregation: meter.Sum, Value: 70000}, 1)
	if err := usagedata.AddMeterWindows(ctx, tx, late); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := usagedata.PackHours(ctx, db.Pool, 1000)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("the packer did not wait for the writer: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Whatever the packer read, a read answers the windows.
	qs := packQueries(t, db.Pool, first)
	for _, q := range qs {
		got := usageJSON(t, db.Pool, q)
		c, err := db.Pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// The truth: the same read with no pack visible.
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM usage_packed_days`); err != nil {
			t.Fatal(err)
		}
		u, err := usagedata.NewReader(tx).MeterUsage(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		_ = tx.Rollback(ctx)
		c.Release()
		want, _ := json.Marshal(u)
		if got != string(want) {
			t.Errorf("%s %v %v-%v:\ngot  %.300s\nwant %.300s", q.Meter.Name, q.GroupBy, q.From, q.To, got, want)
		}
	}
}

// Days younger than three days are never packed, even when marked; a
// marked day is packed once it is old enough. TRUNCATE forgets every
// pack; an UPDATE marks the day of the row it changes.
func TestHourPacksWaitForOldDays(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	if _, _, err := accounts.PutMeter(ctx, db.Pool, accounts.Meter{Name: "tokens_by_model", Metric: "tokens", Aggregation: "sum", GroupBy: []string{"model"}}); err != nil {
		t.Fatal(err)
	}
	today := time.Now().UTC().Truncate(24 * time.Hour)
	var a usagedata.MeterAdds
	for d := -4; d <= 0; d++ {
		a.Append("acme", "tokens_by_model", packKey("a"), string(windows.Hour), today.AddDate(0, 0, d).Add(time.Hour), meter.Contribution{Aggregation: meter.Sum, Value: 10}, 1)
	}
	if err := usagedata.AddMeterWindows(ctx, db.Pool, a); err != nil {
		t.Fatal(err)
	}
	// Marked: the days before yesterday (the trigger's horizon).
	var marked int
	scanOne(t, db, `SELECT count(*) FROM usage_pack_stale`)(&marked)
	if marked != 3 {
		t.Fatalf("%d days marked, want 3 (today-4 to today-2)", marked)
	}
	db.Exec(t, `INSERT INTO usage_pack_stale (tenant, meter, day) VALUES ('acme', 'tokens_by_model', $1)`, today.AddDate(0, 0, -1))
	st, err := usagedata.PackHours(ctx, db.Pool, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var days []time.Time
	rows, err := db.Pool.Query(ctx, `SELECT day FROM usage_packed_days ORDER BY day`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var d time.Time
		if err := rows.Scan(&d); err != nil {
			t.Fatal(err)
		}
		days = append(days, d.UTC())
	}
	if len(days) != 2 || !days[0].Equal(today.AddDate(0, 0, -4)) || !days[1].Equal(today.AddDate(0, 0, -3)) || !st.NextDay.Equal(today.AddDate(0, 0, -2)) {
		t.Fatalf("packed %v, stats %+v; want the days 4 and 3 days old", days, st)
	}
	scanOne(t, db, `SELECT count(*) FROM usage_pack_stale`)(&marked)
	if marked != 2 {
		t.Fatalf("%d days still marked, want 2 (yesterday and the day before)", marked)
	}
	// An UPDATE of a packed day's window marks it.
	db.Exec(t, `UPDATE usage_windows SET value = value + 1 WHERE granularity = 'hour' AND window_start = $1`, today.AddDate(0, 0, -4).Add(time.Hour))
	scanOne(t, db, `SELECT count(*) FROM usage_pack_stale WHERE day = $1`, today.AddDate(0, 0, -4))(&marked)
	if marked != 1 {
		t.Fatal("an UPDATE of a packed day's window did not mark it")
	}
	db.Exec(t, `TRUNCATE usage_windows`)
	var packs int
	scanOne(t, db, `SELECT (SELECT count(*) FROM usage_packed_days) + (SELECT count(*) FROM usage_hour_packs)`)(&packs)
	if packs != 0 {
		t.Fatalf("%d pack rows after TRUNCATE usage_windows", packs)
	}
}

// A database without grouped hour windows packs nothing, without error.
func TestHourPacksOfNothing(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	st, err := usagedata.PackHours(context.Background(), db.Pool, 1000)
	if err != nil || st != (usagedata.PackStats{}) {
		t.Fatalf("stats %+v, %v; want nothing", st, err)
	}
}
