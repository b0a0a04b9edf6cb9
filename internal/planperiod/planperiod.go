// Package planperiod decides which quotas limit a tenant over one quota
// period when its plan assignment or its plan's version changed during
// that period. It is pure: the caller reads the assignments, versions and
// quotas overlapping the period and passes them in.
//
// Invariant: Evaluate is a function of its arguments alone, and a period
// in which one version of one plan was in force throughout gets exactly
// that version's quotas, limits unchanged, whatever the policies.
//
// The rules, for a period P = [start, end) of one granularity:
//
//   - P is cut into segments, each with the version in force over it:
//     the version, latest effective_from first, of the plan of the
//     tenant's assignment in force (the default plan where no assignment
//     is; nothing where the assignment is an explicit "no plan" or the
//     plan had no version yet).
//   - The reference segment is the one in force at min(now, end) (the
//     last one when now is at or after end). Its version's proration
//     policy decides (the policy of the version changed TO); a reference
//     segment without a version decides 'immediate'.
//   - next_period: the quotas of the segment in force at P's start, for
//     the whole of P.
//   - immediate: the quotas of the reference segment, for the whole of P.
//   - prorate: per quota key, each segment's limit weighted by its share
//     of P, summed and rounded down (exact rationals). A segment where the
//     quota is absent (or that has no version) weighs 0: a quota that
//     appears mid-period limits the period by the share it is in force. A
//     segment where the quota is unlimited (no limit) makes the prorated
//     quota unlimited. The quota's other attributes are those of the
//     latest segment holding it.
package planperiod

import (
	"fmt"
	"math/big"
	"slices"
	"sort"
	"time"
)

// Proration is a version's policy for a change in the middle of a period.
type Proration string

// The policies of a plan version.
const (
	Prorate    Proration = "prorate"
	Immediate  Proration = "immediate"
	NextPeriod Proration = "next_period"
)

// Valid reports whether p is one of the policies.
func (p Proration) Valid() bool { return p == Prorate || p == Immediate || p == NextPeriod }

// Key identifies a quota across versions: its metric, meter (empty for the
// implicit meter), filter (canonical JSON, "{}" for none), per_group and
// period (a quota whose period changes is another quota).
type Key struct {
	Metric, Meter, Filter string
	PerGroup              bool
	Period                string
}

// Quota is one quota of a version. Limit nil is unlimited. Data carries
// what the caller needs back (the stored row), untouched.
type Quota struct {
	Key   Key
	Limit *int64
	Data  any
}

// Version is one version of a plan, with its quotas.
type Version struct {
	Plan          string
	Version       int
	EffectiveFrom time.Time
	Proration     Proration
	Quotas        []Quota
	// SpendThresholds are the version's spend thresholds, carried for
	// the caller (Evaluate does not read them).
	SpendThresholds []string
}

// Assignment is a tenant's plan over [From, To) (To zero: open). None is
// an explicit "no plan": unlimited, the default plan does not apply.
type Assignment struct {
	Plan   string
	None   bool
	From   time.Time
	To     time.Time
	Source string
}

// Inputs is what Evaluate reads: the tenant's assignments (any order, not
// overlapping), the versions of every plan they and the default name (any
// order), and the default plan ("" for none).
type Inputs struct {
	Assignments []Assignment
	Versions    []Version
	DefaultPlan string
}

// Segment is a part of the period with the version in force over it.
type Segment struct {
	From, To time.Time
	// Version is nil where no version is in force.
	Version *Version
	// Source is the assignment's source, "default" under the default
	// plan, "" where nothing is assigned.
	Source string
}

// Result is the quotas in force over a period.
type Result struct {
	// Plan is the reference segment's plan ("" for none), Version its
	// version (0 for none), Source where the plan came from ("default"
	// for the default plan).
	Plan    string
	Version int
	Source  string
	// Policy is the policy applied.
	Policy Proration
	// Quotas are the effective quotas, sorted by key; a prorated limit is
	// the rounded-down weighted sum.
	Quotas   []Quota
	Segments []Segment
}

// Evaluate returns the quotas in force over [start, end) at now.
func Evaluate(in Inputs, start, end, now time.Time) (Result, error) {
	if !end.After(start) {
		return Result{}, fmt.Errorf("period [%s, %s) is empty", start, end)
	}
	segs := Segments(in, start, end)
	ref := segs[len(segs)-1]
	at := now
	if at.After(end) {
		at = end
	}
	for _, s := range segs {
		if !at.Before(s.From) && at.Before(s.To) {
			ref = s
			break
		}
	}
	res := Result{Segments: segs, Source: ref.Source, Policy: Immediate}
	if ref.Version != nil {
		res.Plan, res.Version, res.Policy = ref.Version.Plan, ref.Version.Version, ref.Version.Proration
		if !res.Policy.Valid() {
			res.Policy = Immediate
		}
	}
	if len(segs) == 1 {
		res.Quotas = quotasOf(segs[0].Version)
		return res, nil
	}
	switch res.Policy {
	case NextPeriod:
		res.Quotas = quotasOf(segs[0].Version)
	case Immediate:
		res.Quotas = quotasOf(ref.Version)
	case Prorate:
		res.Quotas = prorate(segs, start, end)
	}
	return res, nil
}

func quotasOf(v *Version) []Quota {
	if v == nil {
		return []Quota{}
	}
	qs := slices.Clone(v.Quotas)
	sortQuotas(qs)
	return qs
}

func sortQuotas(qs []Quota) {
	sort.SliceStable(qs, func(i, j int) bool { return lessKey(qs[i].Key, qs[j].Key) })
}

func lessKey(a, b Key) bool {
	switch {
	case a.Metric != b.Metric:
		return a.Metric < b.Metric
	case a.Meter != b.Meter:
		return a.Meter < b.Meter
	case a.Filter != b.Filter:
		return a.Filter < b.Filter
	case a.PerGroup != b.PerGroup:
		return !a.PerGroup
	}
	return a.Period < b.Period
}

// prorate weighs each quota's limit by its segments' shares of the period.
func prorate(segs []Segment, start, end time.Time) []Quota {
	total := big.NewInt(int64(end.Sub(start)))
	type acc struct {
		last      Quota
		sum       *big.Int
		unlimited bool
	}
	byKey := map[Key]*acc{}
	for _, s := range segs {
		if s.Version == nil {
			continue
		}
		share := big.NewInt(int64(s.To.Sub(s.From)))
		for _, q := range s.Version.Quotas {
			a := byKey[q.Key]
			if a == nil {
				a = &acc{sum: new(big.Int)}
				byKey[q.Key] = a
			}
			a.last = q
			if q.Limit == nil {
				a.unlimited = true
				continue
			}
			a.sum.Add(a.sum, new(big.Int).Mul(big.NewInt(*q.Limit), share))
		}
	}
	out := make([]Quota, 0, len(byKey))
	for _, a := range byKey {
		q := a.last
		if a.unlimited {
			q.Limit = nil
		} else {
			v := new(big.Int).Quo(a.sum, total) // non-negative: Quo rounds down
			l := v.Int64()
			q.Limit = &l
		}
		out = append(out, q)
	}
	sortQuotas(out)
	return out
}

// Segments cuts [start, end) into the parts over which one version (or
// none) is in force, adjacent parts with the same version merged.
func Segments(in Inputs, start, end time.Time) []Segment {
	cuts := []time.Time{start, end}
	add := func(t time.Time) {
		if t.After(start) && t.Before(end) {
			cuts = append(cuts, t)
		}
	}
	for _, a := range in.Assignments {
		add(a.From)
		if !a.To.IsZero() {
			add(a.To)
		}
	}
	for _, v := range in.Versions {
		add(v.EffectiveFrom)
	}
	slices.SortFunc(cuts, func(a, b time.Time) int { return a.Compare(b) })
	cuts = slices.CompactFunc(cuts, func(a, b time.Time) bool { return a.Equal(b) })
	byPlan := map[string][]*Version{}
	for i := range in.Versions {
		v := &in.Versions[i]
		byPlan[v.Plan] = append(byPlan[v.Plan], v)
	}
	for _, vs := range byPlan {
		slices.SortFunc(vs, func(a, b *Version) int { return a.EffectiveFrom.Compare(b.EffectiveFrom) })
	}
	var segs []Segment
	for i := 0; i+1 < len(cuts); i++ {
		v, source := inForce(in, byPlan, cuts[i])
		if n := len(segs); n > 0 && segs[n-1].Version == v && segs[n-1].Source == source {
			segs[n-1].To = cuts[i+1]
			continue
		}
		segs = append(segs, Segment{From: cuts[i], To: cuts[i+1], Version: v, Source: source})
	}
	return segs
}

// inForce returns the version in force at t and its source.
func inForce(in Inputs, byPlan map[string][]*Version, t time.Time) (*Version, string) {
	plan, source := in.DefaultPlan, "default"
	for _, a := range in.Assignments {
		if !t.Before(a.From) && (a.To.IsZero() || t.Before(a.To)) {
			plan, source = a.Plan, a.Source
			if a.None {
				return nil, source
			}
			break
		}
	}
	if plan == "" {
		return nil, ""
	}
	var found *Version
	for _, v := range byPlan[plan] {
		if v.EffectiveFrom.After(t) {
			break
		}
		found = v
	}
	return found, source
}
