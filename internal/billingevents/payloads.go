package billingevents

import (
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"time"

	"github.com/usagemeter/metering/internal/price"
)

// PlanChanged is the data of plan.changed: the tenant moved to Plan (at
// Version, 0 when plans are not versioned) from PreviousPlan ("" for a
// tenant's first plan), from EffectiveAt on.
//
// Default is set when the tenant's assignment ended and the configured
// default plan applies: Plan is then that plan ("" when none is
// configured: unlimited). SinceAlways is set for a tenant's first plan
// assigned at no given time: it covers the tenant's whole past, and
// EffectiveAt is the zero time.
//
// Natural key: (EffectiveAt, Plan, Version), and Default and SinceAlways
// when set.
type PlanChanged struct {
	PreviousPlan string    `json:"previous_plan"`
	Plan         string    `json:"plan"`
	Version      int       `json:"version"`
	EffectiveAt  time.Time `json:"effective_at"`
	// Source says who changed it: "admin", "stripe" (a webhook), ...
	Source      string `json:"source,omitempty"`
	Default     bool   `json:"default,omitempty"`
	SinceAlways bool   `json:"since_always,omitempty"`
}

// Type is TypePlanChanged.
func (PlanChanged) Type() Type { return TypePlanChanged }

func (p PlanChanged) naturalKey() ([]string, error) {
	if !p.Default {
		if err := need("plan", p.Plan); err != nil {
			return nil, err
		}
	}
	if p.EffectiveAt.IsZero() != p.SinceAlways {
		return nil, errors.New("effective_at is zero but since_always is not set, or the reverse")
	}
	key := []string{keyTime(p.EffectiveAt), p.Plan, strconv.Itoa(p.Version)}
	if p.Default {
		key = append(key, "default")
	}
	if p.SinceAlways {
		key = append(key, "since_always")
	}
	return key, nil
}

// UnitMeterUnits is the Unit of a grant's amounts counted in units of
// its Meter (not money).
const UnitMeterUnits = "units"

// GrantCreated is the data of grant.created: a credit grant of Amount
// (exact decimal) in Unit (an ISO 4217 currency code such as "usd", or
// "units" of Meter), usable from EffectiveAt until ExpiresAt (nil: does
// not expire).
//
// Natural key: GrantID.
type GrantCreated struct {
	GrantID     string     `json:"grant_id"`
	Amount      Amount     `json:"amount"`
	Unit        string     `json:"unit"`
	Meter       string     `json:"meter,omitempty"`
	EffectiveAt time.Time  `json:"effective_at"`
	ExpiresAt   *time.Time `json:"expires_at,omitempty"`
}

// Type is TypeGrantCreated.
func (GrantCreated) Type() Type { return TypeGrantCreated }

func (p GrantCreated) naturalKey() ([]string, error) {
	if err := need("grant_id", p.GrantID, "unit", p.Unit); err != nil {
		return nil, err
	}
	return []string{p.GrantID}, amountErr("amount", p.Amount)
}

// GrantExpired is the data of grant.expired: the grant reached its
// expiry at ExpiredAt with Remaining (exact decimal, in the grant's Unit)
// unused.
//
// Natural key: GrantID.
type GrantExpired struct {
	GrantID   string    `json:"grant_id"`
	Remaining Amount    `json:"remaining"`
	Unit      string    `json:"unit"`
	ExpiredAt time.Time `json:"expired_at"`
}

// Type is TypeGrantExpired.
func (GrantExpired) Type() Type { return TypeGrantExpired }

func (p GrantExpired) naturalKey() ([]string, error) {
	if err := need("grant_id", p.GrantID, "unit", p.Unit); err != nil {
		return nil, err
	}
	return []string{p.GrantID}, amountErr("remaining", p.Remaining)
}

// GrantVoided is the data of grant.voided: an operator voided the grant
// at VoidedAt, with Remaining (exact decimal, in the grant's Unit) unused.
//
// Natural key: GrantID.
type GrantVoided struct {
	GrantID   string    `json:"grant_id"`
	Remaining Amount    `json:"remaining"`
	Unit      string    `json:"unit"`
	VoidedAt  time.Time `json:"voided_at"`
	Reason    string    `json:"reason,omitempty"`
}

// Type is TypeGrantVoided.
func (GrantVoided) Type() Type { return TypeGrantVoided }

func (p GrantVoided) naturalKey() ([]string, error) {
	if err := need("grant_id", p.GrantID, "unit", p.Unit); err != nil {
		return nil, err
	}
	return []string{p.GrantID}, amountErr("remaining", p.Remaining)
}

// AdjustmentRecorded is the data of adjustment.recorded: Amount (exact
// signed decimal, in Unit) added to the tenant's bill for the month
// Period ("YYYY-MM"), on Meter and Group when it adjusts one meter
// ("" otherwise).
//
// Natural key: AdjustmentID.
type AdjustmentRecorded struct {
	AdjustmentID string `json:"adjustment_id"`
	Period       string `json:"period"`
	Amount       Amount `json:"amount"`
	Unit         string `json:"unit"`
	Meter        string `json:"meter,omitempty"`
	Group        string `json:"group,omitempty"`
	Reason       string `json:"reason,omitempty"`
}

// Type is TypeAdjustmentRecorded.
func (AdjustmentRecorded) Type() Type { return TypeAdjustmentRecorded }

func (p AdjustmentRecorded) naturalKey() ([]string, error) {
	if err := need("adjustment_id", p.AdjustmentID, "period", p.Period, "unit", p.Unit); err != nil {
		return nil, err
	}
	return []string{p.AdjustmentID}, amountErr("amount", p.Amount)
}

// OverageStarted is the data of overage.started: the tenant's usage of
// Meter (and Group, "" for a meter without groups) in the period
// [PeriodStart, PeriodEnd) passed its included amount Included at
// StartedAt; Usage is the usage then. Both are exact integers.
//
// OveragePrice is the quota's overage price (in the plan's currency),
// absent when it has none.
//
// Natural key: (Meter, Group, PeriodStart): once per meter, group and
// period.
type OverageStarted struct {
	Meter        string       `json:"meter"`
	Group        string       `json:"group"`
	PeriodStart  time.Time    `json:"period_start"`
	PeriodEnd    time.Time    `json:"period_end"`
	Included     *big.Int     `json:"included"`
	Usage        *big.Int     `json:"usage"`
	StartedAt    time.Time    `json:"started_at"`
	OveragePrice *price.Price `json:"overage_price,omitempty"`
}

// Type is TypeOverageStarted.
func (OverageStarted) Type() Type { return TypeOverageStarted }

func (p OverageStarted) naturalKey() ([]string, error) {
	if err := need("meter", p.Meter); err != nil {
		return nil, err
	}
	if p.PeriodStart.IsZero() {
		return nil, errors.New("period_start is zero")
	}
	return []string{p.Meter, p.Group, keyTime(p.PeriodStart)}, nil
}

// PeriodClosed is the data of period.closed: the tenant's billing period
// [PeriodStart, PeriodEnd) is complete (every record appended to
// usage.events before PeriodEnd + AllowedLateness is counted, and no
// dead letter of the tenant waits), and Usage is its final usage: one
// line per meter and group with usage in the period.
//
// Natural key: (PeriodStart, PeriodEnd): once per tenant and period.
type PeriodClosed struct {
	PeriodStart time.Time `json:"period_start"`
	PeriodEnd   time.Time `json:"period_end"`
	// AllowedLateness is the lateness the period was judged with, as a
	// Go duration ("1h0m0s").
	AllowedLateness string       `json:"allowed_lateness"`
	Usage           []MeterUsage `json:"usage"`
}

// MeterUsage is the final usage of one meter and group in a period.
type MeterUsage struct {
	// Meter is the meter's name: a metric's name for its implicit meter.
	Meter string `json:"meter"`
	// Metric is the metric the meter counts.
	Metric string `json:"metric"`
	// Aggregation is how the meter folds events: sum, count, max,
	// latest or unique_count.
	Aggregation string `json:"aggregation"`
	// Group is the group's key, a JSON array of its group_by values; ""
	// for a meter without groups.
	Group string `json:"group"`
	// Value is the exact integer usage of the period.
	Value *big.Int `json:"value"`
}

// Type is TypePeriodClosed.
func (PeriodClosed) Type() Type { return TypePeriodClosed }

func (p PeriodClosed) naturalKey() ([]string, error) {
	if p.PeriodStart.IsZero() || !p.PeriodEnd.After(p.PeriodStart) {
		return nil, errors.New("the period is empty")
	}
	return []string{keyTime(p.PeriodStart), keyTime(p.PeriodEnd)}, nil
}

// SpendThreshold is the data of spend.threshold: the projected bill of
// the tenant's billing period [PeriodStart, PeriodEnd), or its bill so
// far, reached Threshold, a spend threshold of the plan version Plan,
// PlanVersion in force, at DetectedAt. Threshold, ProjectedTotal and
// Total are exact decimal strings of Currency.
//
// Natural key: (PeriodStart, Threshold as a number: "100" and "100.00"
// are one): once per tenant, period and threshold. Its id is the one the
// webhook notifications give a spend threshold (SpendThresholdID), so an
// endpoint notified of it by either path is notified once.
type SpendThreshold struct {
	Threshold      Amount    `json:"threshold"`
	ProjectedTotal Amount    `json:"projected_total"`
	Total          Amount    `json:"total"`
	Currency       string    `json:"currency"`
	PeriodStart    time.Time `json:"period_start"`
	PeriodEnd      time.Time `json:"period_end"`
	Plan           string    `json:"plan"`
	PlanVersion    int       `json:"plan_version"`
	DetectedAt     time.Time `json:"detected_at"`
}

// Type is TypeSpendThreshold.
func (SpendThreshold) Type() Type { return TypeSpendThreshold }

func (p SpendThreshold) naturalKey() ([]string, error) {
	r, ok := p.Threshold.Rat()
	if !ok || r.Sign() <= 0 {
		return nil, fmt.Errorf("threshold %q is no positive decimal", string(p.Threshold))
	}
	if p.PeriodStart.IsZero() {
		return nil, errors.New("period_start is zero")
	}
	return []string{p.PeriodStart.UTC().Format(time.RFC3339), r.RatString()}, nil
}
