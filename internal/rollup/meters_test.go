package rollup_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/testkit/metertruth"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/windows"
)

// testMeters is one meter of each aggregation, with groups and filters.
var testMeters = []meter.Definition{
	{Name: "tokens_by_model", Metric: "tokens", Aggregation: meter.Sum, GroupBy: []string{"model"}},
	{Name: "eu_calls", Metric: "tokens", Aggregation: meter.Count, GroupBy: []string{"model", "region"}, Filter: map[string]string{"region": "eu"}},
	{Name: "peak_by_region", Metric: "tokens", Aggregation: meter.Max, GroupBy: []string{"region"}},
	{Name: "last_tokens", Metric: "tokens", Aggregation: meter.Latest},
	{Name: "users_by_model", Metric: "tokens", Aggregation: meter.UniqueCount, GroupBy: []string{"model"}, Property: "user"},
	{Name: "bytes_max", Metric: "bytes", Aggregation: meter.Max},
}

func putMeters(t *testing.T, db *pgtest.DB, defs ...meter.Definition) {
	t.Helper()
	for _, d := range defs {
		if errs := d.Validate(); errs != nil {
			t.Fatalf("meter %s: %v", d.Name, errs)
		}
		if _, _, err := accounts.PutMeter(context.Background(), db.Pool, accounts.Meter{
			Name: d.Name, Metric: d.Metric, Aggregation: string(d.Aggregation), GroupBy: d.GroupBy, Filter: d.Filter, Property: d.Property,
		}); err != nil {
			t.Fatal(err)
		}
	}
}

// stream makes n events with random properties, and resends of 30 % of
// them at later positions: a third identical, a third raised (same
// payload, a greater value), a third with other properties (held, never
// counted). It returns the stream and the counted events with their final
// values.
func stream(rng *rand.Rand, n int) (items []events.Event, counted []events.Event) {
	models := []string{"gpt-4", "gpt-4o", "claude", ""}
	base := now.Add(-3 * time.Hour)
	for i := range n {
		props := map[string]string{"region": []string{"eu", "us"}[rng.IntN(2)]}
		if m := models[rng.IntN(len(models))]; m != "" {
			props["model"] = m
		}
		if rng.IntN(5) > 0 {
			props["user"] = fmt.Sprintf("u%d", rng.IntN(12))
		}
		metric := "tokens"
		if rng.IntN(6) == 0 {
			metric = "bytes"
		}
		e := events.Event{ID: fmt.Sprintf("e%04d", i), Tenant: []string{"acme", "globex"}[rng.IntN(2)], Metric: metric,
			Value: int64(rng.IntN(1000)), Time: base.Add(time.Duration(rng.IntN(3*3600)) * time.Second).Add(time.Duration(rng.IntN(1000)) * time.Microsecond),
			Properties: props}
		items = append(items, e)
		counted = append(counted, e)
	}
	for i := range n {
		if rng.IntN(10) >= 3 {
			continue
		}
		r := counted[i]
		r.Properties = map[string]string{}
		for k, v := range counted[i].Properties {
			r.Properties[k] = v
		}
		switch rng.IntN(3) {
		case 1:
			r.Value += int64(1 + rng.IntN(500))
			counted[i].Value = r.Value
		case 2:
			r.Properties["region"] = "ap"
		}
		// After the original, wherever earlier resends moved it.
		orig := slices.IndexFunc(items, func(e events.Event) bool { return e.ID == r.ID && e.Tenant == r.Tenant })
		at := orig + 1 + rng.IntN(len(items)-orig)
		items = append(items[:at], append([]events.Event{r}, items[at:]...)...)
	}
	return items, counted
}

// TestMetersMatchGroundTruth applies a stream with 30 % resends in random
// batches, a random batch failing once before it is retried, and checks
// every defined meter's windows against a ground truth.
func TestMetersMatchGroundTruth(t *testing.T) {
	t.Parallel()
	for seed := range uint64(3) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			t.Parallel()
			agg, db := newAgg(t)
			putMeters(t, db, testMeters...)
			rng := rand.New(rand.NewPCG(seed, 13))
			items, counted := stream(rng, 400)
			var off int64
			for len(items) > 0 {
				n := min(len(items), 1+rng.IntN(60))
				recs := batch(off, anySlice(items[:n])...)
				if rng.IntN(5) == 0 {
					// A batch whose transaction dies (a cancelled context,
					// as a killed process) leaves nothing behind.
					ctx, cancel := context.WithCancel(context.Background())
					cancel()
					if _, err := agg.Apply(ctx, 0, off, recs); err == nil {
						t.Fatal("a cancelled batch committed")
					}
				}
				res, err := agg.Apply(context.Background(), 0, off, recs)
				if err != nil {
					t.Fatal(err)
				}
				off, items = res.NextOffset, items[n:]
			}
			metertruth.Diff(t, metertruth.Fold(testMeters, counted), metertruth.Read(t, db, testMeters))
			// The implicit meters still hold the plain sums.
			implicit := metertruth.Fold([]meter.Definition{meter.Implicit("tokens"), meter.Implicit("bytes")}, counted)
			metertruth.Diff(t, implicit, metertruth.Read(t, db, []meter.Definition{meter.Implicit("tokens"), meter.Implicit("bytes")}))
		})
	}
}

func anySlice(evs []events.Event) []any {
	out := make([]any, len(evs))
	for i, e := range evs {
		out[i] = e
	}
	return out
}

// TestMeterChangesApplyToLaterBatches: a meter defined between two batches
// counts the second batch's events only, with no restart.
func TestMeterChangesApplyToLaterBatches(t *testing.T) {
	t.Parallel()
	agg, db := newAgg(t)
	ctx := context.Background()
	e1 := events.Event{ID: "a", Tenant: "acme", Metric: "tokens", Value: 5, Time: now.Add(-time.Minute), Properties: map[string]string{"model": "x"}}
	e2 := events.Event{ID: "b", Tenant: "acme", Metric: "tokens", Value: 7, Time: now.Add(-time.Minute), Properties: map[string]string{"model": "x"}}
	if _, err := agg.Apply(ctx, 0, 0, batch(0, e1)); err != nil {
		t.Fatal(err)
	}
	def := meter.Definition{Name: "by_model", Metric: "tokens", Aggregation: meter.Sum, GroupBy: []string{"model"}}
	putMeters(t, db, def)
	if _, err := agg.Apply(ctx, 0, 1, batch(1, e2)); err != nil {
		t.Fatal(err)
	}
	metertruth.Diff(t, metertruth.Fold([]meter.Definition{def}, []events.Event{e2}), metertruth.Read(t, db, []meter.Definition{def}))

	// A raise of e1, counted before the meter existed, does not reach it;
	// a raise of e2 does.
	r1, r2 := e1, e2
	r1.Value, r2.Value = 50, 70
	if _, err := agg.Apply(ctx, 0, 2, batch(2, r1, r2)); err != nil {
		t.Fatal(err)
	}
	metertruth.Diff(t, metertruth.Fold([]meter.Definition{def}, []events.Event{r2}), metertruth.Read(t, db, []meter.Definition{def}))
	if got := count(t, db, `SELECT value::int FROM usage_windows WHERE meter = 'tokens' AND granularity = 'month'`); got != 120 {
		t.Fatalf("implicit meter: %d, want 120", got)
	}
}

// TestShadowedMetricIsADeadLetter: events of a metric named like a
// defined meter of another metric wait in the dead-letter queue; a meter
// that is its metric's implicit meter changes nothing.
func TestShadowedMetricIsADeadLetter(t *testing.T) {
	t.Parallel()
	agg, db := newAgg(t)
	putMeters(t, db,
		meter.Definition{Name: "gpu", Metric: "tokens", Aggregation: meter.Max},
		meter.Implicit("calls"))
	res, err := agg.Apply(context.Background(), 0, 0, batch(0,
		ev("a", "acme", "gpu", 3, now.Add(-time.Minute)),
		ev("b", "acme", "calls", 4, now.Add(-time.Minute)),
		ev("c", "acme", "tokens", 5, now.Add(-time.Minute))))
	if err != nil {
		t.Fatal(err)
	}
	if res.DeadLettered != 1 || res.Counted != 2 {
		t.Fatalf("result %+v: want 1 dead letter, 2 counted", res)
	}
	var msg string
	if err := db.Pool.QueryRow(context.Background(), `SELECT error FROM usage_dlq`).Scan(&msg); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(msg, `"gpu" is the name of meter "gpu"`) {
		t.Fatalf("dead letter error %q", msg)
	}
	if got := count(t, db, `SELECT count(*) FROM usage_windows WHERE meter = 'calls' AND value = 4`); got != len(windows.All) {
		t.Fatalf("calls counted in %d windows, want 4 (once per granularity)", got)
	}
}
