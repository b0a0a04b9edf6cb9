package stripesync

import (
	"context"
	"fmt"
	"math/big"
	"time"

	"github.com/usagemeter/metering/internal/storage/billingdata"
	"github.com/usagemeter/metering/internal/storage/usagedata"
)

// Counterparts of an adjustment in Stripe.
const (
	// CounterpartPush: an increase went out in this push's delta.
	CounterpartPush = "push"
	// CounterpartCancellation: a decrease cancelled this push (within
	// Stripe's 24 hours); the sync then sent the month's new total.
	CounterpartCancellation = "cancellation"
	// CounterpartCredit: a decrease became this customer credit.
	CounterpartCredit = "credit"
	// CounterpartPending: nothing in Stripe answers it yet.
	CounterpartPending = "pending"
)

// AdjustmentLine is one adjustment of a reconciled month beside its
// Stripe counterpart.
type AdjustmentLine struct {
	ID         string    `json:"id"`
	Amount     int64     `json:"amount"`
	Reason     string    `json:"reason"`
	Reference  string    `json:"reference"`
	RecordedAt time.Time `json:"recorded_at"`
	// Counterpart is push, cancellation, credit or pending.
	Counterpart string `json:"counterpart"`
	// Identifier is the push's (push, cancellation).
	Identifier string `json:"identifier,omitempty"`
	// Value is the push's delta, or the credit's quantity.
	Value string `json:"value,omitempty"`
	// Status is the push's or the credit's status.
	Status string `json:"status,omitempty"`
	// CreditAmount is the credit in the currency's minor unit (<= 0), and
	// BalanceTransaction its Stripe id once sent.
	CreditAmount       int64  `json:"credit_amount,omitempty"`
	Currency           string `json:"currency,omitempty"`
	BalanceTransaction string `json:"balance_transaction,omitempty"`
}

// pairKey is one (tenant, meter, stored group key) of a month.
type pairKey struct {
	tenant, meter, group string
	period               int64 // the billing period's start, Unix microseconds
}

// periodKey is a billing period start as pairKey holds it.
func periodKey(t time.Time) int64 { return t.UnixMicro() }

// periodAdjustments is what reconciliation adds for adjustments: per pair,
// the quantity credited and the adjustments with their counterparts.
type periodAdjustments struct {
	credited map[pairKey]*big.Int
	lines    map[pairKey][]AdjustmentLine
}

// readAdjustments reads the month's adjustments, pushes and credits and
// pairs each adjustment, in log order, with the first counterpart made at
// or after it that no earlier adjustment took: an increase with a push,
// a decrease with a credit, else a cancelled push.
//
// starts holds each tenant's billing period start; the tenants sharing a
// start are read together (one read per distinct start).
func (b *Biller) readAdjustments(ctx context.Context, starts map[string]map[int64]bool) (periodAdjustments, error) {
	out := periodAdjustments{credited: map[pairKey]*big.Int{}, lines: map[pairKey][]AdjustmentLine{}}
	var adjs []usagedata.Adjustment
	var credits []billingdata.Credit
	var pushes []billingdata.PeriodPush
	var adjPeriods, creditPeriods, pushPeriods []int64
	distinct := map[int64]bool{}
	for _, ss := range starts {
		for s := range ss {
			distinct[s] = true
		}
	}
	for pk := range distinct {
		period := time.UnixMicro(pk).UTC()
		as, err := usagedata.ListAdjustments(ctx, b.pool, "", period, period.Add(time.Microsecond))
		if err != nil {
			return out, err
		}
		for _, a := range as {
			if starts[a.Tenant][pk] {
				adjs, adjPeriods = append(adjs, a), append(adjPeriods, pk)
			}
		}
		cs, err := billingdata.CreditsOf(ctx, b.pool, "", period)
		if err != nil {
			return out, err
		}
		for _, c := range cs {
			if starts[c.Tenant][pk] {
				credits, creditPeriods = append(credits, c), append(creditPeriods, pk)
			}
		}
		if len(as) == 0 {
			continue
		}
		ps, err := billingdata.PeriodPushes(ctx, b.pool, "", period)
		if err != nil {
			return out, err
		}
		for _, p := range ps {
			if starts[p.Tenant][pk] {
				pushes, pushPeriods = append(pushes, p), append(pushPeriods, pk)
			}
		}
	}
	// Each tenant's rows come from one period's read, in its order
	// (adjustments in log order, pushes and credits in id order); only
	// rows of the same tenant are ever paired.
	for ci, c := range credits {
		k := pairKey{c.Tenant, c.Metric, c.GroupKey, creditPeriods[ci]}
		q, ok := new(big.Int).SetString(c.Quantity, 10)
		if !ok {
			return out, fmt.Errorf("credit %s has quantity %q", c.IdempotencyKey, c.Quantity)
		}
		if out.credited[k] == nil {
			out.credited[k] = new(big.Int)
		}
		out.credited[k].Add(out.credited[k], q)
	}
	if len(adjs) == 0 {
		return out, nil
	}
	usedPush, usedCredit := map[int]bool{}, map[int]bool{}
	for ai, a := range adjs {
		k := pairKey{a.Tenant, a.Meter, usagedata.StoredGroupKey(a.GroupKey), adjPeriods[ai]}
		l := AdjustmentLine{ID: a.ID, Amount: a.Amount, Reason: a.Reason, Reference: a.Reference, RecordedAt: a.RecordedAt, Counterpart: CounterpartPending}
		if a.Amount > 0 {
			for i, p := range pushes {
				if !usedPush[i] && p.Status != "cancelled" && (pairKey{p.Tenant, p.Metric, p.GroupKey, pushPeriods[i]}) == k && !p.Created.Before(a.RecordedAt) {
					usedPush[i] = true
					l.Counterpart, l.Identifier, l.Value, l.Status = CounterpartPush, p.Identifier, p.Delta, p.Status
					break
				}
			}
		} else {
			for i, c := range credits {
				if !usedCredit[i] && (pairKey{c.Tenant, c.Metric, c.GroupKey, creditPeriods[i]}) == k && !c.Created.Before(a.RecordedAt) {
					usedCredit[i] = true
					l.Counterpart, l.Value, l.Status = CounterpartCredit, c.Quantity, c.Status
					l.CreditAmount, l.Currency, l.BalanceTransaction = c.Amount, c.Currency, c.TxnID
					break
				}
			}
			if l.Counterpart == CounterpartPending {
				for i, p := range pushes {
					if !usedPush[i] && p.Status == "cancelled" && (pairKey{p.Tenant, p.Metric, p.GroupKey, pushPeriods[i]}) == k && !p.Updated.Before(a.RecordedAt) {
						usedPush[i] = true
						l.Counterpart, l.Identifier, l.Value, l.Status = CounterpartCancellation, p.Identifier, p.Delta, p.Status
						break
					}
				}
			}
		}
		out.lines[k] = append(out.lines[k], l)
	}
	return out, nil
}
