// Package quota decides a tenant's quota state for a meter (a metric's
// implicit meter, or a defined meter's groups) from its usage in the
// period: ok, warning (≥ the lowest of the quota's warning thresholds, 80 %
// by default), exceeded (≥ 100 %), blocked (a hard quota beyond limit ×
// (1 + burst), once its grace, if any, has run out), and names each breach.
//
// Invariant: the arithmetic is exact (integers of any size); states are
// ordered, and a usage that reaches a state has also reached every state
// below it, and every warning threshold below it (TestEvaluate,
// TestReached, TestAssess); a breach's id is a function of what it is a
// breach of, and an implicit meter's (BreachID) never equals a defined
// meter's (MeterBreachID) (TestBreachIDs); the id of the 80 % warning is
// the one it had before thresholds could be chosen.
package quota

import (
	"encoding/json"
	"fmt"
	"math/big"
	"time"

	"github.com/google/uuid"
)

// State is a quota state.
type State string

// States, in order.
const (
	OK       State = "ok"
	Warning  State = "warning"
	Exceeded State = "exceeded"
	Blocked  State = "blocked"
)

// WarningPercent is the share of the limit that starts the warning state
// when a quota chooses no thresholds.
const WarningPercent = 80

// DefaultThresholds are the warning thresholds of a quota that chooses
// none.
var DefaultThresholds = []int{WarningPercent}

// ValidThresholds checks a quota's warning thresholds: each a percentage
// from 1 to 99, strictly increasing, at most 10 (100 % is the exceeded
// state, not a warning).
func ValidThresholds(ts []int) error {
	if len(ts) > 10 {
		return fmt.Errorf("at most 10 thresholds, got %d", len(ts))
	}
	for i, t := range ts {
		if t < 1 || t > 99 {
			return fmt.Errorf("a threshold is a percentage from 1 to 99 (100 %% is exceeded), got %d", t)
		}
		if i > 0 && t <= ts[i-1] {
			return fmt.Errorf("thresholds must be strictly increasing, got %d after %d", t, ts[i-1])
		}
	}
	return nil
}

// Grace is how long, or how far, a hard quota's usage may go past the
// point where it would block before it blocks: while it lasts the state
// is exceeded. The zero Grace is none.
type Grace struct {
	// Duration, when positive, runs from the first exceeded crossing of
	// the period.
	Duration time.Duration
	// Amount, when not nil, is how many units past the limit usage may
	// reach: usage beyond limit + Amount blocks.
	Amount *int64
}

// IsZero reports whether g is no grace.
func (g Grace) IsZero() bool { return g.Duration <= 0 && g.Amount == nil }

// Rule is one metric's quota.
type Rule struct {
	// Limit nil means unlimited: always OK.
	Limit        *int64
	BurstPercent int
	Hard         bool
	// Thresholds are the warning percentages, strictly increasing, each
	// below 100; nil or empty is DefaultThresholds.
	Thresholds []int
	// Grace delays the blocked state of a hard quota.
	Grace Grace
}

// Warnings returns r's warning thresholds (DefaultThresholds when it
// chose none).
func (r Rule) Warnings() []int {
	if len(r.Thresholds) == 0 {
		return DefaultThresholds
	}
	return r.Thresholds
}

// Evaluate returns the state of used against r, with a grace by time not
// yet run out (the quota was not exceeded before).
func (r Rule) Evaluate(used *big.Int) State {
	if r.Limit == nil {
		return OK
	}
	return r.Assess(big.NewInt(*r.Limit), used, time.Time{}, time.Time{}).State
}

// Assessment is a quota's state for a usage, with the warning thresholds
// the usage reached and the end of its grace.
type Assessment struct {
	State State
	// Warnings are the warning percentages reached, lowest first.
	Warnings []int
	// InGrace reports that usage is past the point where the hard quota
	// would block but the grace has not run out: the state is exceeded.
	InGrace bool
	// GraceEndsAt is when the grace by time runs out (zero when there is
	// none, or the quota was not exceeded yet); GraceEndsAbove the usage
	// beyond which the grace by amount runs out (nil when there is none).
	GraceEndsAt    time.Time
	GraceEndsAbove *big.Int
}

// Assess judges used against limit (the plan's limit, or the allowance
// credit grants raise it to). exceededSince is when the period's usage
// first reached the limit (its exceeded breach; zero when not yet), now
// the present: a grace by time runs out at exceededSince + Duration.
func (r Rule) Assess(limit, used *big.Int, exceededSince, now time.Time) Assessment {
	var a Assessment
	if limit == nil {
		a.State = OK
		return a
	}
	used100 := new(big.Int).Mul(used, big.NewInt(100))
	for _, t := range r.Warnings() {
		if used100.Cmp(new(big.Int).Mul(limit, big.NewInt(int64(t)))) >= 0 {
			a.Warnings = append(a.Warnings, t)
		}
	}
	if r.Hard && r.Grace.Amount != nil {
		a.GraceEndsAbove = new(big.Int).Add(limit, big.NewInt(*r.Grace.Amount))
	}
	if r.Hard && r.Grace.Duration > 0 && !exceededSince.IsZero() {
		a.GraceEndsAt = exceededSince.Add(r.Grace.Duration)
	}
	switch {
	case r.Hard && used100.Cmp(new(big.Int).Mul(limit, big.NewInt(int64(100+r.BurstPercent)))) > 0:
		a.State = Blocked
		if !r.Grace.IsZero() && !r.graceOver(a, used, now) {
			a.State, a.InGrace = Exceeded, true
		}
	case used.Cmp(limit) >= 0:
		a.State = Exceeded
	case len(a.Warnings) > 0:
		a.State = Warning
	default:
		a.State = OK
	}
	return a
}

// graceOver reports whether either grace r has chosen has run out: the
// time since the first exceeded crossing, or usage beyond limit + amount.
func (r Rule) graceOver(a Assessment, used *big.Int, now time.Time) bool {
	if a.GraceEndsAbove != nil && used.Cmp(a.GraceEndsAbove) > 0 {
		return true
	}
	return !a.GraceEndsAt.IsZero() && !now.Before(a.GraceEndsAt)
}

// Level is one breach threshold: a state, and for a warning its
// percentage.
type Level struct {
	Threshold State
	// Percent is a warning's percentage (0 for exceeded and blocked).
	Percent int
}

// Name is what a breach id is derived from: the state, and for a warning
// other than 80 % the percentage after a colon ("warning:50"), so the
// 80 % warning keeps the id it always had.
func (l Level) Name() string {
	if l.Threshold == Warning && l.Percent != WarningPercent {
		return fmt.Sprintf("%s:%d", Warning, l.Percent)
	}
	return string(l.Threshold)
}

// Levels returns the breach thresholds a reaches, lowest first: each
// warning percentage reached, then exceeded and blocked as reached.
func (a Assessment) Levels() []Level {
	var out []Level
	for _, p := range a.Warnings {
		out = append(out, Level{Warning, p})
	}
	for _, s := range Reached(a.State) {
		if s != Warning {
			out = append(out, Level{Threshold: s})
		}
	}
	return out
}

// Reached returns the breach thresholds at or below s, lowest first: the
// states whose breach records a usage in state s implies.
func Reached(s State) []State {
	switch s {
	case Warning:
		return []State{Warning}
	case Exceeded:
		return []State{Warning, Exceeded}
	case Blocked:
		return []State{Warning, Exceeded, Blocked}
	}
	return nil
}

// Breach is a threshold crossed in a period: the quota.breaches message,
// a quota_breaches row, and an entry of a tenant's breach history.
//
// Meter is the meter whose usage crossed it (the metric for the implicit
// meter) and Group the group it is counted over, an object of group_by
// values (null for a missing property): a per_group quota's group, a
// filter quota's filter, {} for a quota on a whole meter.
type Breach struct {
	BreachID string          `json:"breach_id"`
	Tenant   string          `json:"tenant"`
	Metric   string          `json:"metric"`
	Meter    string          `json:"meter"`
	Group    json.RawMessage `json:"group"`
	// GroupKey identifies Group among the meter's breaches (stored, not
	// sent): "" for a whole meter.
	GroupKey    string    `json:"-"`
	PeriodStart time.Time `json:"period_start"`
	PeriodEnd   time.Time `json:"period_end"`
	Limit       int64     `json:"limit"`
	Value       *big.Int  `json:"value"`
	Threshold   string    `json:"threshold"`
	// Percent is a warning's threshold, the percentage of the limit
	// crossed (absent for exceeded and blocked).
	Percent    int       `json:"percent,omitempty"`
	DetectedAt time.Time `json:"detected_at"`
}

// WholeMeter is the Group of a breach of a quota on a whole meter.
var WholeMeter = json.RawMessage(`{}`)

var breachNamespace = uuid.MustParse("5b1f3c1e-8a0e-4f63-9a55-2f7d0c6a9e41")

// BreachID is the stable id of a breach of a quota on a metric's implicit
// meter: the same (tenant, metric, period, threshold) always has the same
// id, so consumers can deduplicate.
func BreachID(tenant, metric string, periodStart time.Time, threshold string) string {
	return uuid.NewSHA1(breachNamespace, fmt.Appendf(nil, "%s\x00%s\x00%s\x00%s", tenant, metric, periodStart.UTC().Format(time.RFC3339), threshold)).String()
}

// MeterBreachID is the stable id of a breach of a quota on a defined
// meter: the same (tenant, meter, group key, period, threshold) always has
// the same id. Its name is hashed after a "meter" field, so it never
// equals a BreachID, whatever the names.
func MeterBreachID(tenant, meter, groupKey string, periodStart time.Time, threshold string) string {
	return uuid.NewSHA1(breachNamespace, fmt.Appendf(nil, "meter\x00%s\x00%s\x00%s\x00%s\x00%s", tenant, meter, groupKey, periodStart.UTC().Format(time.RFC3339), threshold)).String()
}
