// Package metertruth is the ground truth of meter windows for tests: it
// folds the events that were counted (each once, with its final value)
// into every meter's windows in plain Go, reads what Postgres holds, and
// reports the differences.
//
// Invariant: Fold keeps a window for exactly the (tenant, meter, group,
// granularity, start) that at least one counted event matching the meter
// falls into, in the granularities the aggregator keeps for that meter
// (all four for an implicit meter, hour, day and month for a defined one),
// so a missing or an extra window in Postgres is a difference, never
// noise (TestFold).
package metertruth

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/windows"
)

// Windows maps "tenant/meter/group key/granularity/start" to "value/events".
type Windows map[string]string

// Key is the key of a window in Windows.
func Key(tenant, meterName, group string, g windows.Granularity, start time.Time) string {
	return fmt.Sprintf("%s/%s/%s/%s/%s", tenant, meterName, group, g, start.UTC().Format(time.RFC3339))
}

// Granularities are the windows the aggregator keeps of d.
func Granularities(d meter.Definition) []windows.Granularity {
	if d.IsImplicit() {
		return windows.All
	}
	return []windows.Granularity{windows.Hour, windows.Day, windows.Month}
}

type window struct {
	value, events int64
	latest        events.Event
	uniques       map[string]bool
}

// Fold folds counted into the windows of defs.
func Fold(defs []meter.Definition, counted []events.Event) Windows {
	ws := map[string]*window{}
	for _, e := range counted {
		for _, d := range defs {
			if !d.Matches(e) {
				continue
			}
			for _, g := range Granularities(d) {
				k := Key(e.Tenant, d.Name, d.Group(e).Key(), g, g.Start(e.Time))
				w := ws[k]
				if w == nil {
					w = &window{uniques: map[string]bool{}}
					ws[k] = w
				}
				w.events++
				switch d.Aggregation {
				case meter.Sum:
					w.value += e.Value
				case meter.Count:
					w.value++
				case meter.Max:
					w.value = max(w.value, e.Value)
				case meter.Latest:
					t, lt := e.Time.Truncate(time.Microsecond), w.latest.Time.Truncate(time.Microsecond)
					if w.events == 1 || t.After(lt) || t.Equal(lt) && e.ID > w.latest.ID {
						w.latest, w.value = e, e.Value
					}
				case meter.UniqueCount:
					if u, ok := e.Properties[d.Property]; ok {
						w.uniques[u] = true
					}
					w.value = int64(len(w.uniques))
				}
			}
		}
	}
	out := make(Windows, len(ws))
	for k, w := range ws {
		out[k] = fmt.Sprintf("%d/%d", w.value, w.events)
	}
	return out
}

// Read returns the windows Postgres holds of the meters defs name.
func Read(tb testing.TB, db *pgtest.DB, defs []meter.Definition) Windows {
	tb.Helper()
	names := make([]string, len(defs))
	for i, d := range defs {
		names[i] = d.Name
	}
	rows, err := db.Pool.Query(context.Background(), `SELECT tenant, meter, group_key, granularity, window_start, value::text, events
		FROM usage_windows WHERE meter = ANY($1)`, names)
	if err != nil {
		tb.Fatal(err)
	}
	defer rows.Close()
	out := Windows{}
	for rows.Next() {
		var tenant, m, key, g, v string
		var start time.Time
		var n int64
		if err := rows.Scan(&tenant, &m, &key, &g, &start, &v, &n); err != nil {
			tb.Fatal(err)
		}
		out[Key(tenant, m, key, windows.Granularity(g), start)] = fmt.Sprintf("%s/%d", v, n)
	}
	if err := rows.Err(); err != nil {
		tb.Fatal(err)
	}
	return out
}

// Diff fails tb with the first differences between want and got.
func Diff(tb testing.TB, want, got Windows) {
	tb.Helper()
	bad := 0
	report := func(format string, args ...any) {
		bad++
		if bad <= 10 {
			tb.Errorf(format, args...)
		}
	}
	for k, w := range want {
		if got[k] != w {
			report("window %s: got %q, want %q", k, got[k], w)
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			report("window %s: got %q, want none", k, g)
		}
	}
	if bad > 0 {
		tb.Fatalf("%d of %d windows differ from the ground truth", bad, len(want))
	}
}
