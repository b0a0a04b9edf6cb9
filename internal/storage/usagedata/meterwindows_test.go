package usagedata_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/big"
	"math/rand/v2"
	"slices"
	"strings"
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
// microseconds with random nanoseconds, so latest meets ties broken by id;
// unique values are few and sometimes missing.
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

// withRaises adds to rows a raise of about one latest row in five, as the
// rollup adds when a resend raises a counted event: the same window and
// (time, id), a greater value, no event of its own.
func withRaises(r *rand.Rand, rows []meterRow) []meterRow {
	out := slices.Clone(rows)
	for _, row := range rows {
		if row.c.Aggregation == meter.Latest && r.IntN(5) == 0 {
			row.c.Value += 1 + r.Int64N(1000)
			row.events = 0
			out = append(out, row)
		}
	}
	return out
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
			// A later (time, id), or the same event raised by a resend.
			if w.at.IsZero() || at.After(w.at) || at.Equal(w.at) && r.c.ID > w.id ||
				at.Equal(w.at) && r.c.ID == w.id && r.c.Value > mustInt(w.value) {
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
// aggregation, latest events raised by resends included: random events split into random batches, applied in random
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
				rows = withRaises(r, rows)
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
		// A counted event raised by a resend adds a row of the same (time,
		// id) and a greater value: the value follows it, never down.
		{"latest raised, across batches", [][]meter.Contribution{{c(meter.Latest, 3, 0, "b")}, {c(meter.Latest, 8, 0, "b")}, {c(meter.Latest, 5, 0, "b")}},
			windowState{value: "8", events: 3, at: at, id: "b"}},
		{"latest raised, in one batch", [][]meter.Contribution{{c(meter.Latest, 3, 0, "b"), c(meter.Latest, 8, 0, "b"), c(meter.Latest, 5, 0, "b")}},
			windowState{value: "8", events: 3, at: at, id: "b"}},
		{"latest raise of an older event ignored", [][]meter.Contribution{{c(meter.Latest, 3, 0, "b"), c(meter.Latest, 4, -time.Second, "a")}, {c(meter.Latest, 9, -time.Second, "a")}},
			windowState{value: "3", events: 3, at: at, id: "b"}},
		{"latest raised after a later event", [][]meter.Contribution{{c(meter.Latest, 3, 0, "b"), c(meter.Latest, 4, time.Second, "a")}, {c(meter.Latest, 9, 0, "b")}},
			windowState{value: "4", events: 3, at: at.Add(time.Second), id: "a"}},
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
		{"group key like a digest", func(a *usagedata.MeterAdds) { a.GroupKeys[1] = "sha256:" + strings.Repeat("0", 64) }},
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

// randomText is n random bytes of a 64-letter alphabet: text that Postgres
// cannot compress into an index entry.
func randomText(r *rand.Rand, n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet[r.IntN(len(alphabet))]
	}
	return string(b)
}

// longGroupKey is the key of a group of five 1 KiB values, as meter's
// Group.Key writes it.
func longGroupKey(r *rand.Rand) string {
	vals := make([]string, 5)
	for i := range vals {
		vals[i] = `"` + randomText(r, 1024) + `"`
	}
	return "[" + strings.Join(vals, ",") + "]"
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Group keys of five 1 KiB values and unique values of 1 and 4 KiB count
// exactly, through their digests (stored as themselves, they do not fit an
// index entry); a short value that looks like a digest and the long value
// of that digest count as two; GroupKeys gives the keys back.
func TestAddMeterWindowsLongKeys(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	r := rand.New(rand.NewPCG(7, 7))
	keyA, keyB := longGroupKey(r), longGroupKey(r)
	h := time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)

	// Without the digest, neither the key nor the 4 KiB value fits.
	if _, err := db.Pool.Exec(ctx, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events)
		VALUES ('raw', 'm', $1, 'hour', $2, 1, 1)`, keyA, h); err == nil {
		t.Error("a 5 KiB group key fitted usage_windows' index: the digest is not needed")
	}
	long4 := randomText(r, 4096)
	if _, err := db.Pool.Exec(ctx, `INSERT INTO meter_uniques (tenant, meter, group_key, granularity, window_start, value)
		VALUES ('raw', 'm', '', 'hour', $1, $2)`, h, long4); err == nil {
		t.Error("a 4 KiB unique value fitted meter_uniques' index: the digest is not needed")
	}

	// Every aggregation, with groups of long keys (and the empty one).
	var rows []meterRow
	for _, agg := range meter.Aggregations {
		for _, row := range randomRows(r, "long", "m_"+string(agg), agg, 60) {
			row.group = map[string]string{"": "", "model=a": keyA, "model=b": keyB}[row.group]
			rows = append(rows, row)
		}
	}
	// Unique values: 1 KiB, 4 KiB, the 4 KiB value's digest as a value of
	// its own, and a short one, each seen more than once.
	long1 := randomText(r, 1024)
	for i, v := range []string{long1, long4, sha256Hex(long4), "x", long4, sha256Hex(long4), long1} {
		c := meter.Contribution{Aggregation: meter.UniqueCount, Time: h, ID: fmt.Sprint("u", i), Distinct: v, HasDistinct: true}
		rows = append(rows, meterRow{"long", "m_unique_digest", keyA, windows.Hour, h, c, 1})
	}
	want := map[windowKey]windowState{}
	for k, w := range truth(rows) {
		k.group = usagedata.StoredGroupKey(k.group)
		want[k] = w
	}
	if w := want[windowKey{"long", "m_unique_digest", sha256Hex(keyA), string(windows.Hour), h}]; w.value != "4" {
		t.Fatalf("ground truth of the digest-like values: %+v, want 4 distinct", w)
	}
	for _, b := range [][]meterRow{rows[:len(rows)/2], rows[len(rows)/2:]} {
		if err := inTx(ctx, db, toAdds(b), false); err != nil {
			t.Fatal(err)
		}
	}
	got := readMeterWindows(t, db, "long")
	diffWindows(t, got, want)

	var stored []string
	for k := range got {
		if len(k.group) > 256 {
			t.Errorf("window %s stores a group key of %d bytes", k.meter, len(k.group))
		}
		if k.meter == "m_sum" {
			stored = append(stored, k.group)
		}
	}
	// Each meter's two long keys are recorded once, whatever the rows and
	// batches that used them; short keys are not recorded.
	var recorded int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM meter_group_keys`).Scan(&recorded); err != nil || recorded != 2*len(meter.Aggregations)+1 {
		t.Errorf("meter_group_keys holds %d keys (%v), want %d", recorded, err, 2*len(meter.Aggregations)+1)
	}
	keys, err := usagedata.GroupKeys(ctx, db.Pool, "m_sum", stored)
	if err != nil {
		t.Fatal(err)
	}
	if wantKeys := map[string]string{sha256Hex(keyA): keyA, sha256Hex(keyB): keyB}; !maps.Equal(keys, wantKeys) {
		t.Errorf("GroupKeys gave %d keys back, want the two long keys by their digests", len(keys))
	}
	// A digest is recorded per meter: another meter's is unknown.
	if _, err := usagedata.GroupKeys(ctx, db.Pool, "m_other", []string{sha256Hex(keyA)}); !errors.Is(err, usagedata.ErrUnknownDigest) {
		t.Errorf("GroupKeys of a digest of another meter: %v, want ErrUnknownDigest", err)
	}
	if keys, err := usagedata.GroupKeys(ctx, db.Pool, "m_sum", []string{"", `["a"]`}); err != nil || len(keys) != 0 {
		t.Errorf("GroupKeys of keys stored as themselves: %v, %v; want none", keys, err)
	}
}

// StoredGroupKey keeps keys of up to 256 bytes and digests longer ones.
func TestStoredGroupKey(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		key, want string
	}{
		{"", ""},
		{`["gpt-4",null]`, `["gpt-4",null]`},
		{strings.Repeat("a", 256), strings.Repeat("a", 256)},
		{strings.Repeat("a", 257), sha256Hex(strings.Repeat("a", 257))},
	} {
		if got := usagedata.StoredGroupKey(tc.key); got != tc.want {
			t.Errorf("StoredGroupKey(%d bytes) = %.20q, want %.20q", len(tc.key), got, tc.want)
		}
	}
}
