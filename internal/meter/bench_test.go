package meter_test

import (
	"testing"

	"github.com/usagemeter/metering/internal/meter"
)

var sinkKey string

// BenchmarkGroupKey is the per-event, per-meter cost on the aggregator's
// path: the event's group and its key. One and two group_by properties
// allocate once (the key); the implicit meter not at all.
func BenchmarkGroupKey(b *testing.B) {
	e := event(map[string]string{"model": "gpt-4o-mini", "region": "eu-west-1", "endpoint": `/v1/chat?q="tab\tbed"`, "tier": "pro", "team": "search"})
	benchmarks := []struct {
		name    string
		groupBy []string
		allocs  float64
	}{
		{"implicit", nil, 0},
		{"1", []string{"model"}, 1},
		{"2", []string{"model", "region"}, 1},
		{"2_one_missing", []string{"model", "user"}, 1},
		{"2_escaped", []string{"endpoint", "model"}, 1},
		{"5", []string{"model", "region", "endpoint", "tier", "team"}, 1},
	}
	for _, bm := range benchmarks {
		d := meter.Definition{Metric: "tokens", Aggregation: meter.Sum, GroupBy: bm.groupBy}
		if got := testing.AllocsPerRun(100, func() { sinkKey = d.Group(e).Key() }); got > bm.allocs {
			b.Fatalf("%s: %v allocations per Group+Key, want at most %v", bm.name, got, bm.allocs)
		}
		b.Run(bm.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				sinkKey = d.Group(e).Key()
			}
		})
	}
}

// BenchmarkMatches is the filter test every event pays for every meter of
// its metric.
func BenchmarkMatches(b *testing.B) {
	e := event(map[string]string{"model": "gpt-4o-mini", "region": "eu-west-1"})
	d := meter.Definition{Metric: "tokens", Filter: map[string]string{"region": "eu-west-1"}}
	b.ReportAllocs()
	for b.Loop() {
		if !d.Matches(e) {
			b.Fatal("no match")
		}
	}
}
