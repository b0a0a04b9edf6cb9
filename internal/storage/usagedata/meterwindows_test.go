package usagedata_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/big"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/windows"
)

// meterRow is one event's contribution to one window of a meter.
type meterRow struct {
	tenant, meter, group string
	g                    windows.Granularity
	start                time.Time
	c                    meter.Contribution
	events               int64
}

// windowKey names a window in the tests.
type windowKey struct {
	tenant, meter, group, g string
	start                   time.Time
}

// windowState is what a window holds: value and events, and for latest
// the (time, id) of the value.
type windowState struct {
	value  string
	events int64
	at     time.Time
	id     string
}

func (r meterRow) key() windowKey {
	return windowKey{r.tenant, r.meter, r.group, string(r.g), r.start}
}

// randomRows draws n events for a meter of aggregation agg and returns the
// rows they add to their hour and day windows. Times fall on few
// microseconds with random nanoseconds, so latest meets ties broken by id; unique values are few and sometimes missing.
func randomRows(r *rand.Rand, tenant, meterName string, agg meter.Aggregation, n int) []meterRow {
	base := time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)
	var rows []meterRow
	for i := range n {
		c := meter.Contribution{
			Aggregation: agg,
			Time:        base.Add(time.Duration(r.IntN(3))*time.Hour + time.Duration(r.IntN(4))*time.Microsecond + time.Duration(r.IntN(1000))),
			// Unique, as the ledger makes an event's id, and led by few
			// letters so that order by id is not order of drawing.
			ID: fmt.Sprintf("%c-%s-%03d", 'a'+r.IntN(4), meterName, i),
		}
		switch agg {
		case meter.Sum:
			// Large enough that a window's sum passes int64.
			c.Value = math.MaxInt64 - r.Int64N(1000)
		case meter.Count:
			c.Value = 1
		case meter.Max, meter.Latest:
			c.Value = r.Int64N(1_000_000)
		case meter.UniqueCount:
			if r.IntN(5) > 0 {
				c.Distinct, c.HasDistinct = fmt.Sprintf("u%d", r.IntN(8)), true
			}
		}
		group := []string{"", "model=a", "model=b"}[r.IntN(3)]
		events := int64(1 + r.IntN(2))
		for _, g := range []windows.Granularity{windows.Hour, windows.Day} {
			rows = append(rows, meterRow{tenant, meterName, group, g, g.Start(c.Time), c, events})
		}
	}
	return rows
}

// truth folds rows in Go, as the windows must hold them.
func truth(rows []meterRow) map[windowKey]windowState {
	sums := map[windowKey]*big.Int{}
	uniques := map[windowKey]map[string]bool{}
	out := map[windowKey]windowState{}
	for _, r := range rows {
		k := r.key()
		w := out[k]
		w.events += r.events
		switch r.c.Aggregation {
		case meter.Sum:
			if sums[k] == nil {
				sums[k] = new(big.Int)
			}
			sums[k].Add(sums[k], big.NewInt(r.c.Value))
			w.value = sums[k].String()
		case meter.Count:
			w.value = fmt.Sprint(w.events)
		case meter.Max:
			if w.value == "" || fmt.Sprint(r.c.Value) != w.value && r.c.Value > mustInt(w.value) {
				w.value = fmt.Sprint(r.c.Value)
			}
		case meter.Latest:
			at := r.c.Time.Truncate(time.Microsecond)
			if w.at.IsZero() || at.After(w.at) || at.Equal(w.at) && r.c.ID > w.id {
				w.value, w.at, w.id = fmt.Sprint(r.c.Value), at, r.c.ID
			}
		case meter.UniqueCount:
			if uniques[k] == nil {
				uniques[k] = map[string]bool{}
			}
			if r.c.HasDistinct {
				uniques[k][r.c.Distinct] = true
			}
			w.value = fmt.Sprint(len(uniques[k]))
		}
		out[k] = w
	}
	return out
}

func mustInt(s string) int64 {
	var n int64
	if _, err := fmt.Sscan(s, &n); err != nil {
		panic(err)
	}
	return n
}

func toAdds(rows []meterRow) usagedata.MeterAdds {
	var a usagedata.MeterAdds
	for _, r := range rows {
		a.Append(r.tenant, r.meter, r.group, string(r.g), r.start, r.c, r.events)
	}
	return a
}

// readMeterWindows reads the windows of tenant.
func readMeterWindows(t *testing.T, db *pgtest.DB, tenant string) map[windowKey]windowState {
	t.Helper()
	rows, err := db.Pool.Query(context.Background(), `SELECT meter, group_key, granularity, window_start, value::text, events, latest_time, latest_id
		FROM usage_windows WHERE tenant = $1`, tenant)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[windowKey]windowState{}
	for rows.Next() {
		k := windowKey{tenant: tenant}
		var w windowState
		var at *time.Time
		var id *string
		if err := rows.Scan(&k.meter, &k.group, &k.g, &k.start, &w.value, &w.events, &at, &id); err != nil {
			t.Fatal(err)
		}
		k.start = k.start.UTC()
		if at != nil {
			w.at = at.UTC()
		}
		if id != nil {
			w.id = *id
		}
		out[k] = w
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// inTx applies a in a transaction and commits it, or rolls it back when
// rollback is set.
func inTx(ctx context.Context, db *pgtest.DB, a usagedata.MeterAdds, rollback bool) error {
	return pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		if err := usagedata.AddMeterWindows(ctx, tx, a); err != nil {
			return err
		}
		if rollback {
			return errRollback
		}
		return nil
	})
}

var errRollback = errors.New("rolled back on purpose")

func diffWindows(t *testing.T, got, want map[windowKey]windowState) {
	t.Helper()
	for k, w := range want {
		if g, ok := got[k]; !ok {
			t.Errorf("window %+v missing, want %+v", k, w)
		} else if g != w {
			t.Errorf("window %+v = %+v, want %+v", k, g, w)
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected window %+v = %+v", k, g)
		}
	}
}

// AddMeterWindows holds exactly what the events make, for every
// aggregation: random events split into random batches, applied in random
// order, after one batch was applied twice in a transaction rolled back
// (which leaves no trace), or by two goroutines at once on the same
// windows.
func TestAddMeterWindowsMatchesGroundTruth(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	kinds := [][]meter.Aggregation{
		{meter.Sum}, {meter.Count}, {meter.Max}, {meter.Latest}, {meter.UniqueCount},
		meter.Aggregations, // every kind in the same batches
	}
	for _, concurrent := range []bool{false, true} {
		for ki, aggs := range kinds {
			name := fmt.Sprintf("%v/concurrent=%v", aggs, concurrent)
			tenant := fmt.Sprintf("t%d-%v", ki, concurrent)
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				seed := uint64(ki)*2 + map[bool]uint64{false: 0, true: 1}[concurrent]
				r := rand.New(rand.NewPCG(seed, 42))
				var rows []meterRow
				for _, agg := range aggs {
					rows = append(rows, randomRows(r, tenant, "m_"+string(agg), agg, 60)...)
				}
				want := truth(rows)
				r.Shuffle(len(rows), func(i, j int) { rows[i], rows[j] = rows[j], rows[i] })
				var batches [][]meterRow
				for len(rows) > 0 {
					n := min(len(rows), 1+r.IntN(40))
					batches = append(batches, rows[:n])
					rows = rows[n:]
				}
				// Once twice in one transaction, rolled back: no trace.
				twice := toAdds(slices.Concat(batches[0], batches[0]))
				if err := inTx(ctx, db, twice, true); !errors.Is(err, errRollback) {
					t.Fatalf("rolled-back batch: %v", err)
				}
				if got := readMeterWindows(t, db, tenant); len(got) != 0 {
					t.Fatalf("a rolled-back batch left %d windows", len(got))
				}
				r.Shuffle(len(batches), func(i, j int) { batches[i], batches[j] = batches[j], batches[i] })
				if !concurrent {
					for _, b := range batches {
						if err := inTx(ctx, db, toAdds(b), false); err != nil {
							t.Fatal(err)
						}
					}
				} else {
					var wg sync.WaitGroup
					errs := make([]error, 2)
					for w := range 2 {
						wg.Go(func() {
							for i := w; i < len(batches); i += 2 {
								if err := inTx(ctx, db, toAdds(batches[i]), false); err != nil {
									errs[w] = err
									return
								}
							}
						})
					}
					wg.Wait()
					if err := errors.Join(errs...); err != nil {
						t.Fatal(err)
					}
				}
				diffWindows(t, readMeterWindows(t, db, tenant), want)
			})
		}
	}
}

// The rows of one batch for one window combine as their events would:
// the greatest of two max, the later of two latest (ties broken by id, at
// microsecond precision), one unique value seen twice counting once, and
// an event without the unique property adding to events only.
func TestAddMeterWindowsCombinesWithinBatch(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	h := time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)
	at := h.Add(5 * time.Minute)
	c := func(agg meter.Aggregation, v int64, when time.Duration, id string) meter.Contribution {
		return meter.Contribution{Aggregation: agg, Value: v, Time: at.Add(when), ID: id}
	}
	u := func(v string) meter.Contribution {
		return meter.Contribution{Aggregation: meter.UniqueCount, Distinct: v, HasDistinct: v != "", Time: at, ID: "x"}
	}
	for _, tc := range []struct {
		name    string
		batches [][]meter.Contribution
		want    windowState
	}{
		{"sum past int64", [][]meter.Contribution{{c(meter.Sum, math.MaxInt64, 0, "a"), c(meter.Sum, math.MaxInt64, 0, "b")}, {c(meter.Sum, 2, 0, "c")}},
			windowState{value: "18446744073709551616", events: 3}},
		{"count", [][]meter.Contribution{{c(meter.Count, 1, 0, "a"), c(meter.Count, 1, 0, "b")}, {c(meter.Count, 1, 0, "c")}},
			windowState{value: "3", events: 3}},
		{"two max in one batch", [][]meter.Contribution{{c(meter.Max, 3, 0, "a"), c(meter.Max, 9, 0, "b"), c(meter.Max, 4, 0, "c")}, {c(meter.Max, 7, 0, "d")}},
			windowState{value: "9", events: 4}},
		{"latest by time", [][]meter.Contribution{{c(meter.Latest, 3, time.Second, "a"), c(meter.Latest, 9, 0, "z")}, {c(meter.Latest, 7, -time.Second, "zz")}},
			windowState{value: "3", events: 3, at: at.Add(time.Second), id: "a"}},
		{"latest tie by id, in one batch", [][]meter.Contribution{{c(meter.Latest, 3, 0, "b"), c(meter.Latest, 9, 0, "a")}},
			windowState{value: "3", events: 2, at: at, id: "b"}},
		{"latest tie by id, across batches", [][]meter.Contribution{{c(meter.Latest, 3, 0, "b")}, {c(meter.Latest, 9, 0, "a")}, {c(meter.Latest, 5, 0, "c")}},
			windowState{value: "5", events: 3, at: at, id: "c"}},
		// 900ns later is the same microsecond: id decides, not the nanoseconds.
		{"latest at microsecond precision", [][]meter.Contribution{{c(meter.Latest, 3, 100, "b")}, {c(meter.Latest, 9, 900, "a")}},
			windowState{value: "3", events: 2, at: at, id: "b"}},
		{"unique twice in one batch", [][]meter.Contribution{{u("x"), u("x"), u("y")}, {u("x"), u(""), u("z")}},
			windowState{value: "3", events: 6}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tenant := tc.name
			for _, b := range tc.batches {
				var a usagedata.MeterAdds
				for _, con := range b {
					a.Append(tenant, "m", "", string(windows.Hour), h, con, 1)
				}
				if err := usagedata.AddMeterWindows(ctx, db.Pool, a); err != nil {
					t.Fatal(err)
				}
			}
			want := map[windowKey]windowState{{tenant, "m", "", string(windows.Hour), h}: tc.want}
			diffWindows(t, readMeterWindows(t, db, tenant), want)
		})
	}
}

// AddMeterWindows refuses ragged columns, an unknown aggregation and a
// negative amount, and writes nothing then.
func TestAddMeterWindowsRefuses(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	h := time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)
	good := meter.Contribution{Aggregation: meter.Sum, Value: 1, Time: h, ID: "a"}
	for _, tc := range []struct {
		name string
		edit func(a *usagedata.MeterAdds)
	}{
		{"negative value", func(a *usagedata.MeterAdds) { a.Values[1] = -1 }},
		{"negative events", func(a *usagedata.MeterAdds) { a.Events[1] = -1 }},
		{"unknown aggregation", func(a *usagedata.MeterAdds) { a.Aggregations[1] = "median" }},
		{"ragged columns", func(a *usagedata.MeterAdds) { a.IDs = a.IDs[:1] }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var a usagedata.MeterAdds
			a.Append("refused", "m", "", string(windows.Hour), h, good, 1)
			a.Append("refused", "m", "k", string(windows.Hour), h, good, 1)
			tc.edit(&a)
			if err := usagedata.AddMeterWindows(ctx, db.Pool, a); err == nil {
				t.Fatal("no error")
			}
			if got := readMeterWindows(t, db, "refused"); len(got) != 0 {
				t.Fatalf("refused rows wrote %d windows", len(got))
			}
		})
	}
}

// BenchmarkAddMeterWindows applies batches of 500 events to a meter of
// each aggregation (hour and day windows: 5,000 rows a batch), one
// transaction per batch.
func BenchmarkAddMeterWindows(b *testing.B) {
	db := pgtest.New(b)
	ctx := context.Background()
	r := rand.New(rand.NewPCG(1, 2))
	var rows []meterRow
	for _, agg := range meter.Aggregations {
		rows = append(rows, randomRows(r, "bench", "m_"+string(agg), agg, 500)...)
	}
	a := toAdds(rows)
	b.ResetTimer()
	for b.Loop() {
		if err := inTx(ctx, db, a, false); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/float64(len(rows)), "µs/row")
}
