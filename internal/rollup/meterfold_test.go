package rollup

import (
	"github.com/usagemeter/metering/internal/billingcycle"
	"math"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/meter"
)

// TestMeterFold checks the batch fold row by row: one row per window of
// each granularity, folded as the aggregation folds; a sum that would
// overflow int64 starts a row of its own that later contributions fold
// into; a unique_count keeps one row per distinct value of a window, the
// window's other events on its first row.
func TestMeterFold(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 5, 3, 10, 15, 0, 0, time.UTC)
	later := at.Add(2 * time.Hour) // another hour, the same day and month
	k := meterGroupKey{"t1", "m", `["a"]`}
	type add struct {
		at time.Time
		c  meter.Contribution
	}
	// row is what the fold wrote, per granularity: value, events, unique.
	type row struct {
		g      string
		start  time.Time
		value  int64
		events int64
		unique string
	}
	day, month := time.Date(2026, 5, 3, 0, 0, 0, 0, time.UTC), time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	h1, h2 := at.Truncate(time.Hour), later.Truncate(time.Hour)
	sum := func(v int64) meter.Contribution { return meter.Contribution{Aggregation: meter.Sum, Value: v} }
	uniq := func(v string) meter.Contribution {
		return meter.Contribution{Aggregation: meter.UniqueCount, Distinct: v, HasDistinct: v != ""}
	}
	for _, tc := range []struct {
		name string
		adds []add
		want []row
	}{
		{"sums fold per window", []add{{at, sum(2)}, {later, sum(3)}, {at, sum(4)}}, []row{
			{"hour", h1, 6, 2, ""}, {"day", day, 9, 3, ""}, {"month", month, 9, 3, ""}, {"hour", h2, 3, 1, ""},
		}},
		{"a sum past int64 starts a row that later ones fold into", []add{{at, sum(math.MaxInt64 - 1)}, {at, sum(5)}, {at, sum(7)}}, []row{
			{"hour", h1, math.MaxInt64 - 1, 1, ""}, {"day", day, math.MaxInt64 - 1, 1, ""}, {"month", month, math.MaxInt64 - 1, 1, ""},
			{"hour", h1, 12, 2, ""}, {"day", day, 12, 2, ""}, {"month", month, 12, 2, ""},
		}},
		{"unique values once per window, events on the first row", []add{{at, uniq("u1")}, {at, uniq("u1")}, {later, uniq("u1")}, {at, uniq("u2")}, {at, uniq("")}}, []row{
			{"hour", h1, 0, 3, "u1"}, {"day", day, 0, 4, "u1"}, {"month", month, 0, 4, "u1"},
			{"hour", h2, 0, 1, "u1"},
			{"hour", h1, 0, 1, "u2"}, {"day", day, 0, 1, "u2"}, {"month", month, 0, 1, "u2"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newMeterFold(len(tc.adds))
			for _, a := range tc.adds {
				f.add(k, billingcycle.Schedule{}, a.at, a.c, 1)
			}
			r := f.rows
			if r.Len() != len(tc.want) {
				t.Fatalf("%d rows, want %d: %+v", r.Len(), len(tc.want), r)
			}
			for i, w := range tc.want {
				got := row{r.Granularities[i], r.Starts[i], r.Values[i], r.Events[i], r.Uniques[i]}
				if got != w {
					t.Errorf("row %d: %+v, want %+v", i, got, w)
				}
				if r.Tenants[i] != k.tenant || r.Meters[i] != k.meter || r.GroupKeys[i] != k.group {
					t.Errorf("row %d: key %s %s %s", i, r.Tenants[i], r.Meters[i], r.GroupKeys[i])
				}
			}
		})
	}
}
