package anomaly

import (
	"fmt"
	"math"
	"math/big"
	"math/rand/v2"
	"testing"
	"time"
)

// The labelled synthetic set: hourly series of several tenants over
// syntheticWeeks weeks, with a daily curve, quieter weekends, a per-tenant
// time zone, multiplicative and counting noise, and injected episodes
// (spikes of x5 to x20 for 1-4 hours, drops to under 20 % for 1-6 hours)
// after the first DefaultWeeks weeks, at least a day apart. Seeded: the
// set, and so the figures, are the same on every run.
const (
	syntheticWeeks = 10
	syntheticSeed  = 20261202
)

// syntheticStart is a Monday, 00:00 UTC.
var syntheticStart = time.Date(2026, 1, 5, 0, 0, 0, 0, time.UTC)

// label is one injected episode: hours [start, end) of series.
type label struct {
	series     Series
	dir        Direction
	start, end int
}

// syntheticSeries is one series' hourly totals and its labels.
type syntheticSeries struct {
	series Series
	values []int64
	labels []label
}

// syntheticSet makes the set: one series per level, plus a low-volume
// series (a few calls an hour, never injected) where every flag is a
// false positive.
func syntheticSet(seed uint64) []syntheticSeries {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	levels := []float64{80, 150, 400, 1000, 3000, 10000, 50000, 250000, 1e6, 2}
	hours := syntheticWeeks * HoursPerWeek
	var out []syntheticSeries
	for i, level := range levels {
		s := syntheticSeries{series: Series{Tenant: fmt.Sprintf("tenant-%02d", i), Meter: "api_calls"}}
		offset := rng.IntN(24)
		expected := make([]float64, hours)
		for h := range hours {
			local := (h + offset) % HoursPerWeek
			hod, dow := local%24, local/24
			daily := 0.25
			if hod >= 6 && hod <= 22 {
				daily += 0.75 * math.Sin(math.Pi*float64(hod-6)/16)
			}
			if dow >= 5 {
				daily *= 0.45
			}
			expected[h] = level * daily
		}
		s.values = make([]int64, hours)
		for h := range hours {
			m := expected[h] * (1 + 0.08*rng.NormFloat64())
			v := math.Round(m + math.Sqrt(math.Max(m, 0))*rng.NormFloat64())
			s.values[h] = int64(math.Max(v, 0))
		}
		if level >= 50 {
			s.labels = inject(rng, s.series, s.values, expected)
		}
		out = append(out, s)
	}
	return out
}

// inject writes episodes into values and returns their labels: a spike
// where the expected total is at least 5 (so x5 differs by at least 20),
// a drop where it is at least 50 in every hour of the episode.
func inject(rng *rand.Rand, s Series, values []int64, expected []float64) []label {
	var labels []label
	h := DefaultWeeks*HoursPerWeek + rng.IntN(48)
	for h < len(values)-8 {
		dir, n := Spike, 1+rng.IntN(4)
		if rng.IntN(5) < 2 {
			dir, n = Drop, 1+rng.IntN(6)
		}
		ok := true
		for k := h; k < h+n; k++ {
			if dir == Drop && expected[k] < 50 || dir == Spike && expected[k] < 5 {
				ok = false
			}
		}
		if !ok {
			h += 1 + rng.IntN(6)
			continue
		}
		for k := h; k < h+n; k++ {
			if dir == Spike {
				values[k] = int64(math.Round(float64(values[k]) * (5 + 15*rng.Float64())))
			} else {
				values[k] = int64(math.Round(float64(values[k]) * 0.2 * rng.Float64()))
			}
		}
		labels = append(labels, label{series: s, dir: dir, start: h, end: h + n})
		h += n + 24 + rng.IntN(72)
	}
	return labels
}

// detection is one flagged episode, by hour index.
type detection struct {
	series Series
	dir    Direction
	start  int
}

// runSynthetic runs c's detector over the set hour by hour, after the
// first Weeks weeks, as the loop does: open episodes carried from hour to
// hour.
func runSynthetic(t testing.TB, c Config, set []syntheticSeries) []detection {
	open := map[Series]Episode{}
	var found []detection
	first := c.Weeks*HoursPerWeek + c.Neighbours
	hours := len(set[0].values)
	for h := first; h < hours; h++ {
		start := syntheticStart.Add(time.Duration(h) * time.Hour)
		totals := map[Series]map[int64]*big.Int{}
		for _, s := range set {
			ts := map[int64]*big.Int{start.Unix(): big.NewInt(s.values[h])}
			for _, b := range c.BaselineHours(start) {
				i := int(b.Sub(syntheticStart) / time.Hour)
				ts[b.Unix()] = big.NewInt(s.values[i])
			}
			totals[s.series] = ts
		}
		d, err := c.Detect(Hour{Start: start, Totals: totals, Open: open, DetectedAt: start.Add(time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		ids := map[string]Series{}
		for s, e := range open {
			ids[e.ID] = s
		}
		for _, e := range d.Ended {
			delete(open, ids[e.ID])
		}
		for _, e := range d.Extended {
			ep := open[ids[e.ID]]
			ep.LastHour = e.LastHour
			open[ids[e.ID]] = ep
		}
		for _, a := range d.Flagged {
			open[a.Series] = a.Episode
			found = append(found, detection{series: a.Series, dir: a.Direction, start: h})
		}
	}
	return found
}

// score is per-episode precision and recall: a detection is right when a
// labelled episode of its series and direction holds its first hour; a
// label is found when some detection is right about it.
func score(set []syntheticSeries, found []detection) (precision, recall float64, tp, labels int) {
	hit := map[label]bool{}
	var all []label
	for _, s := range set {
		all = append(all, s.labels...)
	}
	for _, d := range found {
		for _, l := range all {
			if l.series == d.series && l.dir == d.dir && d.start >= l.start && d.start < l.end {
				tp++
				hit[l] = true
				break
			}
		}
	}
	precision, recall = 1, 1
	if len(found) > 0 {
		precision = float64(tp) / float64(len(found))
	}
	if len(all) > 0 {
		recall = float64(len(hit)) / float64(len(all))
	}
	return precision, recall, tp, len(all)
}

// TestPrecisionRecall: at the default configuration the detector finds at
// least 90 % of the labelled episodes of the synthetic set, and at least
// 90 % of what it flags is labelled; on the reference seed and on three
// others, so the default is not tuned to one draw.
func TestPrecisionRecall(t *testing.T) {
	t.Parallel()
	for _, seed := range []uint64{syntheticSeed, 1, 7, 42} {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Parallel()
			set := syntheticSet(seed)
			found := runSynthetic(t, DefaultConfig(), set)
			p, r, tp, n := score(set, found)
			t.Logf("seed %d, sensitivity %s: %d labelled episodes, %d flagged, %d right: precision %.3f recall %.3f", seed, DefaultSensitivity, n, len(found), tp, p, r)
			if n < 100 {
				t.Errorf("the set holds %d labelled episodes, want at least 100", n)
			}
			if p < 0.9 || r < 0.9 {
				t.Errorf("precision %.3f, recall %.3f: want both at least 0.9", p, r)
			}
		})
	}
}

// BenchmarkSensitivity reports precision and recall on the reference set
// at each of a range of sensitivities: how DefaultSensitivity was chosen.
func BenchmarkSensitivity(b *testing.B) {
	set := syntheticSet(syntheticSeed)
	for _, s := range []string{"2", "3", "3.5", "4", "5", "6", "8"} {
		b.Run(s, func(b *testing.B) {
			c := DefaultConfig()
			c.Sensitivity, _ = ParseSensitivity(s)
			var p, r float64
			for b.Loop() {
				p, r, _, _ = score(set, runSynthetic(b, c, set))
			}
			b.ReportMetric(p, "precision")
			b.ReportMetric(r, "recall")
		})
	}
}

// BenchmarkDetector judges the whole synthetic set per iteration and
// reports precision and recall at the default configuration, with the
// time to judge one series-hour.
func BenchmarkDetector(b *testing.B) {
	set := syntheticSet(syntheticSeed)
	var p, r float64
	var judged int
	for b.Loop() {
		found := runSynthetic(b, DefaultConfig(), set)
		p, r, _, _ = score(set, found)
		judged = len(set) * (len(set[0].values) - DefaultWeeks*HoursPerWeek)
	}
	b.ReportMetric(p, "precision")
	b.ReportMetric(r, "recall")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(judged), "ns/series-hour")
}

// runNaive is the detector a team writes first, the baseline of
// BenchmarkDetector: an hour is a spike (drop) when it is more than three
// standard deviations above (below) the mean of the previous 24 hours;
// consecutive flagged hours of one direction are one episode, reported at
// its first hour. It judges the same hours as runSynthetic.
func runNaive(set []syntheticSeries) []detection {
	var found []detection
	first := DefaultWeeks*HoursPerWeek + 1
	for _, s := range set {
		var open Direction
		for h := first; h < len(s.values); h++ {
			var sum, sq float64
			for _, v := range s.values[h-24 : h] {
				sum += float64(v)
				sq += float64(v) * float64(v)
			}
			mean := sum / 24
			sd := math.Sqrt(max(sq/24-mean*mean, 0))
			var dir Direction
			switch v := float64(s.values[h]); {
			case v > mean+3*sd:
				dir = Spike
			case v < mean-3*sd:
				dir = Drop
			}
			if dir != "" && dir != open {
				found = append(found, detection{series: s.series, dir: dir, start: h})
			}
			open = dir
		}
	}
	return found
}

// BenchmarkNaiveDetector reports the naive detector's precision and recall
// on the same synthetic set: the baseline BENCHMARKS.md shows beside
// BenchmarkDetector's.
func BenchmarkNaiveDetector(b *testing.B) {
	set := syntheticSet(syntheticSeed)
	var p, r float64
	for b.Loop() {
		p, r, _, _ = score(set, runNaive(set))
	}
	b.ReportMetric(p, "precision")
	b.ReportMetric(r, "recall")
}
