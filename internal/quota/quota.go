// Package quota decides a tenant's quota state for a meter (a metric's
// implicit meter, or a defined meter's groups) from its usage in the
// period: ok, warning (≥ 80 %), exceeded (≥ 100 %), blocked (a hard quota
// beyond limit × (1 + burst)), and names each breach.
//
// Invariant: the arithmetic is exact (integers of any size); states are
// ordered, and a usage that reaches a state has also reached every state
// below it (TestEvaluate, TestReached); a breach's id is a function of
// what it is a breach of, and an implicit meter's (BreachID) never equals
// a defined meter's (MeterBreachID) (TestBreachIDs).
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

// WarningPercent is the share of the limit that starts the warning state.
const WarningPercent = 80

// Rule is one metric's quota.
type Rule struct {
	// Limit nil means unlimited: always OK.
	Limit        *int64
	BurstPercent int
	Hard         bool
}

// Evaluate returns the state of used against r.
func (r Rule) Evaluate(used *big.Int) State {
	if r.Limit == nil {
		return OK
	}
	limit := big.NewInt(*r.Limit)
	used100 := new(big.Int).Mul(used, big.NewInt(100))
	if r.Hard && used100.Cmp(new(big.Int).Mul(limit, big.NewInt(int64(100+r.BurstPercent)))) > 0 {
		return Blocked
	}
	if used.Cmp(limit) >= 0 {
		return Exceeded
	}
	if used100.Cmp(new(big.Int).Mul(limit, big.NewInt(WarningPercent))) >= 0 {
		return Warning
	}
	return OK
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
	DetectedAt  time.Time `json:"detected_at"`
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
