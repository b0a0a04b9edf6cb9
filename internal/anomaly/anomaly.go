// Package anomaly finds spikes and drops in a tenant's hourly usage of a
// meter against a seasonal baseline: the same hour of the week in the
// previous weeks and its neighbouring hours, summarised by robust
// statistics (median and median absolute deviation), so that one odd week
// does not move it. It reads no database and no clock: the caller gives
// it the totals of the hour judged and of its baseline hours, the
// episodes still open, and the instant of detection.
//
// An hour is anomalous when its robust score, (observed - median) / scale
// with scale = max(1.4826·MAD, median·RelativeFloor, 1), reaches the
// sensitivity (a spike) or its opposite (a drop), and the difference from
// the median is at least MinVolume (a drop also needs a median of at
// least MinVolume), so that a series going from 0 to 3 calls is not an
// anomaly. An episode is a run of consecutive anomalous hours of one
// direction; it is flagged once, at its first hour, and ends at the end of
// its last anomalous hour.
//
// Invariant: the arithmetic is exact (math/big): a total, the median, the
// MAD, the score and its comparison with the sensitivity never pass
// through a float, so one input always gives one judgement, on every
// machine (TestJudgeExact). An episode's id is a function of its tenant,
// meter, direction and first hour only (EpisodeID), so judging an hour
// twice finds the same episode (TestDetectRepeatable).
package anomaly

import (
	"errors"
	"fmt"
	"math/big"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Direction is which way an hour left its baseline.
type Direction string

// The directions.
const (
	// Spike: the hour's total is above its baseline by the sensitivity.
	Spike Direction = "spike"
	// Drop: the hour's total is below its baseline by the sensitivity.
	Drop Direction = "drop"
)

// HoursPerWeek is the season of the baseline: one week of hours.
const HoursPerWeek = 7 * 24

// Defaults of Config.
const (
	// DefaultSensitivity is the default ANOMALY_SENSITIVITY: chosen on the
	// labelled synthetic set of TestPrecisionRecall, where it balances
	// precision and recall (BenchmarkSensitivity sweeps the others).
	DefaultSensitivity = "4"
	// DefaultWeeks is how many previous weeks make the baseline.
	DefaultWeeks = 4
	// DefaultNeighbours is how many hours on each side of the same hour of
	// the week join the baseline.
	DefaultNeighbours = 1
	// DefaultMinVolume is the smallest difference from the median, in the
	// meter's units, that can be anomalous.
	DefaultMinVolume = 10
)

// madToSigma makes the MAD of normal noise an estimate of its standard
// deviation: 1.4826, exactly.
var madToSigma = big.NewRat(14826, 10000)

// Config tunes the detector. DefaultConfig is a usable one.
type Config struct {
	// Sensitivity is the robust score (in estimated standard deviations)
	// an hour must reach to be anomalous; positive.
	Sensitivity *big.Rat
	// Weeks is how many previous weeks make the baseline (at least 1).
	Weeks int
	// Neighbours is how many hours on each side of the same hour of the
	// week join the baseline (0 or more): the baseline holds
	// Weeks·(2·Neighbours+1) hours.
	Neighbours int
	// MinVolume is the smallest |observed - median| that can be anomalous;
	// a drop also needs a median of at least MinVolume. Not negative.
	MinVolume *big.Int
	// RelativeFloor bounds the scale from below by this fraction of the
	// median, so a series that never varied is not flagged for a change
	// of a few percent; nil is 1/10.
	RelativeFloor *big.Rat
}

// DefaultConfig returns the defaults: sensitivity DefaultSensitivity,
// DefaultWeeks weeks, DefaultNeighbours neighbours, DefaultMinVolume.
func DefaultConfig() Config {
	s, _ := ParseSensitivity(DefaultSensitivity)
	return Config{Sensitivity: s, Weeks: DefaultWeeks, Neighbours: DefaultNeighbours, MinVolume: big.NewInt(DefaultMinVolume)}
}

// Validate says what is wrong with c, or nil.
func (c Config) Validate() error {
	var errs []error
	if c.Sensitivity == nil || c.Sensitivity.Sign() <= 0 {
		errs = append(errs, errors.New("sensitivity must be positive"))
	}
	if c.Weeks < 1 {
		errs = append(errs, errors.New("weeks must be at least 1"))
	}
	if c.Neighbours < 0 || c.Neighbours > 12 {
		errs = append(errs, errors.New("neighbours must be between 0 and 12"))
	}
	if c.MinVolume == nil || c.MinVolume.Sign() < 0 {
		errs = append(errs, errors.New("min volume must be 0 or more"))
	}
	if c.RelativeFloor != nil && c.RelativeFloor.Sign() < 0 {
		errs = append(errs, errors.New("relative floor must be 0 or more"))
	}
	return errors.Join(errs...)
}

var decimalText = regexp.MustCompile(`^[0-9]{1,6}(\.[0-9]{1,6})?$`)

// ParseSensitivity reads a positive decimal such as "4" or "3.5" (at most
// six digits each side of the point), exactly.
func ParseSensitivity(s string) (*big.Rat, error) {
	r, ok := new(big.Rat).SetString(s)
	if !decimalText.MatchString(s) || !ok || r.Sign() <= 0 {
		return nil, fmt.Errorf("must be a positive decimal such as 4 or 3.5, got %q", s)
	}
	return r, nil
}

// Decimal writes r, which must have a terminating decimal expansion of at
// most 30 places (every value this package makes has), as its shortest
// decimal: "4", "3.5", "-0.25".
func Decimal(r *big.Rat) string {
	if r.IsInt() {
		return r.Num().String()
	}
	for p := 1; p <= 30; p++ {
		s := r.FloatString(p)
		if back, ok := new(big.Rat).SetString(s); ok && back.Cmp(r) == 0 {
			return s
		}
	}
	return r.FloatString(30)
}

// BaselineHours returns the starts of the baseline hours of the hour
// starting at h: for each of the previous weeks, the same hour of the
// week and its neighbours, oldest first.
func (c Config) BaselineHours(h time.Time) []time.Time {
	out := make([]time.Time, 0, c.Weeks*(2*c.Neighbours+1))
	for w := c.Weeks; w >= 1; w-- {
		same := h.Add(-time.Duration(w*HoursPerWeek) * time.Hour)
		for k := -c.Neighbours; k <= c.Neighbours; k++ {
			out = append(out, same.Add(time.Duration(k)*time.Hour))
		}
	}
	return out
}

// Judgement is one hour's verdict.
type Judgement struct {
	// Direction is Spike or Drop, "" for a normal hour.
	Direction Direction
	// Observed is the hour's total; Expected the baseline's median.
	Observed *big.Int
	Expected *big.Rat
	// Score is (Observed - Expected) / scale, exact.
	Score *big.Rat
}

// Judge scores observed against baseline (the totals of the baseline
// hours, a missing hour counted as 0) under c.
func (c Config) Judge(observed *big.Int, baseline []*big.Int) Judgement {
	// Sorting and medians stay in integers: twice a median of integers is
	// an integer, so med2 = 2·median and, over |2x - med2| = 2·|x -
	// median|, twice their median is 4·MAD.
	med2 := median2(baseline)
	two := big.NewInt(2)
	devs := make([]*big.Int, len(baseline))
	for i, b := range baseline {
		d := new(big.Int).Mul(b, two)
		d.Sub(d, med2)
		devs[i] = d.Abs(d)
	}
	med := new(big.Rat).SetFrac(med2, two)
	mad := new(big.Rat).SetFrac(median2(devs), big.NewInt(4))
	scale := new(big.Rat).Mul(mad, madToSigma)
	floor := c.RelativeFloor
	if floor == nil {
		floor = big.NewRat(1, 10)
	}
	if rel := new(big.Rat).Mul(med, floor); rel.Cmp(scale) > 0 {
		scale = rel
	}
	if one := big.NewRat(1, 1); one.Cmp(scale) > 0 {
		scale = one
	}
	diff := new(big.Rat).Sub(new(big.Rat).SetInt(observed), med)
	score := new(big.Rat).Quo(diff, scale)
	j := Judgement{Observed: new(big.Int).Set(observed), Expected: med, Score: score}
	absDiff := new(big.Rat).Abs(diff)
	minVol := new(big.Rat).SetInt(c.MinVolume)
	if absDiff.Cmp(minVol) < 0 {
		return j
	}
	switch {
	case score.Cmp(c.Sensitivity) >= 0:
		j.Direction = Spike
	case new(big.Rat).Neg(score).Cmp(c.Sensitivity) >= 0 && med.Cmp(minVol) >= 0:
		j.Direction = Drop
	}
	return j
}

// median2 is twice the median of xs (the middle one, or the mean of the
// two middle ones), an integer; 0 for none.
func median2(xs []*big.Int) *big.Int {
	if len(xs) == 0 {
		return new(big.Int)
	}
	s := slices.Clone(xs)
	slices.SortFunc(s, func(a, b *big.Int) int { return a.Cmp(b) })
	n := len(s)
	if n%2 == 1 {
		return new(big.Int).Lsh(s[n/2], 1)
	}
	return new(big.Int).Add(s[n/2-1], s[n/2])
}

// Series is one tenant's meter.
type Series struct {
	Tenant, Meter string
}

// Episode is a run of anomalous hours of one series and direction.
type Episode struct {
	ID string
	Series
	Direction Direction
	// Hour is the start of its first anomalous hour, LastHour of its
	// latest.
	Hour, LastHour time.Time
}

// idNamespace is the UUIDv5 namespace of episode ids (itself the UUIDv5
// of the topic's URL-like name).
var idNamespace = uuid.NewSHA1(uuid.NameSpaceURL, []byte("kafka:usage.anomalies"))

// EpisodeID is the stable id of the episode of s in direction d whose
// first anomalous hour starts at hour: a UUIDv5 of the four.
func EpisodeID(s Series, d Direction, hour time.Time) string {
	return uuid.NewSHA1(idNamespace, fmt.Appendf(nil, "%s\x00%s\x00%s\x00%s", s.Tenant, s.Meter, d, hour.UTC().Format(time.RFC3339))).String()
}

// Anomaly is a newly flagged episode: its first hour's judgement.
type Anomaly struct {
	Episode
	Observed    *big.Int
	Expected    *big.Rat
	Score       *big.Rat
	Sensitivity *big.Rat
	DetectedAt  time.Time
}

// Ended is an episode that ended: EndedAt is the end of its last
// anomalous hour.
type Ended struct {
	ID      string
	EndedAt time.Time
}

// Extended is an open episode whose latest anomalous hour is now LastHour.
type Extended struct {
	ID       string
	LastHour time.Time
}

// Hour is what Detect needs of one hour.
type Hour struct {
	// Start of the hour judged (on the hour, UTC).
	Start time.Time
	// Totals of each series at Start and at the baseline hours
	// (Config.BaselineHours(Start)), by the Unix second of the hour's
	// start; an hour missing is 0.
	Totals map[Series]map[int64]*big.Int
	// Open episodes, at most one per series.
	Open map[Series]Episode
	// Mature reports whether a series has usage from before its baseline
	// began; an immature series (new) is never flagged, since it has no
	// baseline yet. nil: every series is mature.
	Mature func(Series) (bool, error)
	// DetectedAt is the instant of detection the flagged anomalies carry.
	DetectedAt time.Time
}

// Decision is what judging an hour changes.
type Decision struct {
	// Flagged are the episodes that begin at this hour.
	Flagged []Anomaly
	// Extended are open episodes this hour continues.
	Extended []Extended
	// Ended are open episodes this hour does not continue.
	Ended []Ended
	// Judged is how many series were judged.
	Judged int
}

// Detect judges every series that has a total in h.Totals or an open
// episode, in order of tenant and meter, and says which episodes begin,
// continue and end at h.Start.
func (c Config) Detect(h Hour) (Decision, error) {
	var series []Series
	for s := range h.Totals {
		series = append(series, s)
	}
	for s := range h.Open {
		if _, ok := h.Totals[s]; !ok {
			series = append(series, s)
		}
	}
	slices.SortFunc(series, func(a, b Series) int {
		if c := strings.Compare(a.Tenant, b.Tenant); c != 0 {
			return c
		}
		return strings.Compare(a.Meter, b.Meter)
	})
	hours := c.BaselineHours(h.Start)
	var d Decision
	for _, s := range series {
		ts := h.Totals[s]
		base := make([]*big.Int, len(hours))
		for i, t := range hours {
			base[i] = valueAt(ts, t)
		}
		j := c.Judge(valueAt(ts, h.Start), base)
		d.Judged++
		open, isOpen := h.Open[s]
		if isOpen && open.Direction == j.Direction && open.LastHour.Add(time.Hour).Equal(h.Start) {
			d.Extended = append(d.Extended, Extended{ID: open.ID, LastHour: h.Start})
			continue
		}
		if j.Direction != "" && !isOpen && h.Mature != nil {
			mature, err := h.Mature(s)
			if err != nil {
				return Decision{}, fmt.Errorf("judging %s/%s at %s: %w", s.Tenant, s.Meter, h.Start.Format(time.RFC3339), err)
			}
			if !mature {
				j.Direction = ""
			}
		}
		if isOpen && !open.LastHour.Before(h.Start) {
			// Judged already (a repeated hour): leave it as it is.
			continue
		}
		if isOpen {
			d.Ended = append(d.Ended, Ended{ID: open.ID, EndedAt: open.LastHour.Add(time.Hour)})
		}
		if j.Direction == "" {
			continue
		}
		ep := Episode{ID: EpisodeID(s, j.Direction, h.Start), Series: s, Direction: j.Direction, Hour: h.Start, LastHour: h.Start}
		d.Flagged = append(d.Flagged, Anomaly{
			Episode: ep, Observed: j.Observed, Expected: j.Expected, Score: j.Score,
			Sensitivity: new(big.Rat).Set(c.Sensitivity), DetectedAt: h.DetectedAt,
		})
	}
	return d, nil
}

func valueAt(ts map[int64]*big.Int, t time.Time) *big.Int {
	if v, ok := ts[t.Unix()]; ok && v != nil {
		return v
	}
	return new(big.Int)
}
