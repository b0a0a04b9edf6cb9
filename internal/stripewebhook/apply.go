package stripewebhook

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/billingcycle"
	"github.com/usagemeter/metering/internal/billingevents"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/billingdata"
)

// apply records ev and its effect in one transaction and returns its
// outcome. A *contentError rolls everything back: the caller records the
// event as undecodable instead.
func (h *Handler) apply(ctx context.Context, ev *event) (string, error) {
	outcome := Processed
	err := pgx.BeginFunc(ctx, h.pool, func(tx pgx.Tx) error {
		fresh, err := billingdata.RecordEvent(ctx, tx, ev.ID, printable(ev.Type, 200), nullTime(ev.Created))
		if err != nil {
			return contentOrFailure(err, "recording the event")
		}
		if !fresh {
			outcome = Duplicate
			return nil
		}
		switch ev.Type {
		case "customer.subscription.created", "customer.subscription.updated", "customer.subscription.deleted":
			outcome, err = h.subscription(ctx, tx, ev)
		case "invoice.finalized":
			err = h.invoiceFinalized(ctx, tx, *ev)
		case "billing.meter.error_report_triggered":
			err = h.meterErrorReport(ctx, tx, *ev)
		default:
			outcome = Ignored
		}
		if err != nil {
			return err
		}
		return billingdata.SetEventOutcome(ctx, tx, ev.ID, outcome, nullString(ev.ObjectID))
	})
	return outcome, err
}

// subscription sets the plan of the tenants mapped to the subscription's
// customer, unless a later event about this subscription was applied.
func (h *Handler) subscription(ctx context.Context, tx pgx.Tx, ev *event) (string, error) {
	var sub subscriptionObject
	if err := decodeObject(*ev, &sub); err != nil {
		return "", err
	}
	if !stripeID.MatchString(sub.ID) {
		return "", undecodable("subscription id %q is not a Stripe id", sub.ID)
	}
	ev.ObjectID, ev.ObjectType = sub.ID, "subscription"
	if ev.Created.IsZero() {
		return "", undecodable("event without created: it cannot be ordered")
	}
	if newest, err := advance(ctx, tx, *ev); err != nil {
		return "", err
	} else if !newest {
		return Stale, nil
	}
	if !stripeID.MatchString(sub.Customer) {
		return "", undecodable("subscription %s: customer %q is not a Stripe customer id", sub.ID, sub.Customer)
	}
	var plan *string
	if ev.Type != "customer.subscription.deleted" && sub.Status != "canceled" {
		p := sub.Metadata[PlanMetadataKey]
		if p == "" {
			return "", undecodable("subscription %s (%s) has no metadata.%s naming the tenant's plan", sub.ID, sub.Status, PlanMetadataKey)
		}
		exists, err := accounts.PlanExists(ctx, tx, p)
		if err != nil {
			return "", contentOrFailure(err, "looking up the plan")
		}
		if !exists {
			return "", undecodable("subscription %s names plan %q, which is not defined here: define it (PUT /v1/admin/plans/{plan}) and resend the event", sub.ID, p)
		}
		plan = &p
	}
	moved, err := accounts.SetCustomerPlan(ctx, tx, sub.Customer, plan, effectiveAt(*ev, sub), h.now(),
		billingevents.PlanHook(h.defaultPlan)) // plan.changed commits with the change
	if err != nil {
		return "", contentOrFailure(err, "updating the tenant's plan")
	}
	if moved == 0 {
		return "", undecodable("subscription %s: no tenant has stripe_customer_id %q", sub.ID, sub.Customer)
	}
	if plan != nil {
		if err := h.recordCycle(ctx, tx, *ev, sub); err != nil {
			return "", err
		}
	}
	return Processed, nil
}

// recordCycle records the billing cycle of a live subscription for its
// customer's tenants, from the start of its current period (when the
// event is not older than that start) or else from the event's created
// time: a cycle change (a new subscription, an anchor reset, a new
// interval) starts a period. A cancelled subscription leaves the cycle
// as it was: its last period ends as Stripe ends it.
func (h *Handler) recordCycle(ctx context.Context, tx pgx.Tx, ev event, sub subscriptionObject) error {
	c, ok, err := sub.cycle()
	if err != nil {
		return undecodable("subscription %s: billing cycle: %v", sub.ID, err)
	}
	if !ok {
		return nil
	}
	from := ev.Created
	if start := sub.periodStart(); !start.IsZero() && !start.After(ev.Created) {
		from = start
	}
	if _, err := accounts.SetCustomerCycle(ctx, tx, sub.Customer, billingcycle.Change{From: from, Cycle: c}, h.now()); err != nil {
		return contentOrFailure(err, "recording the billing cycle")
	}
	return nil
}

// subscriptionObject is the part of a Stripe subscription we read.
// current_period_start is on the subscription up to API version
// 2025-02-24, on each of its items from 2025-03-31 on.
type subscriptionObject struct {
	ID                 string            `json:"id"`
	Customer           string            `json:"customer"`
	Status             string            `json:"status"`
	Metadata           map[string]string `json:"metadata"`
	CurrentPeriodStart int64             `json:"current_period_start"`
	BillingCycleAnchor int64             `json:"billing_cycle_anchor"`
	Items              struct {
		Data []struct {
			CurrentPeriodStart int64 `json:"current_period_start"`
			Price              struct {
				Recurring *recurring `json:"recurring"`
			} `json:"price"`
			Plan *recurring `json:"plan"`
		} `json:"data"`
	} `json:"items"`
}

// recurring is how often a Stripe price (or a legacy plan) bills.
type recurring struct {
	Interval      string `json:"interval"`
	IntervalCount int    `json:"interval_count"`
}

// cycle returns the subscription's billing cycle: its
// billing_cycle_anchor and the recurring interval of its first recurring
// item (every item of a subscription bills on one cycle). ok is false
// when the object does not say.
func (s subscriptionObject) cycle() (billingcycle.Cycle, bool, error) {
	if s.BillingCycleAnchor <= 0 {
		return billingcycle.Cycle{}, false, nil
	}
	for _, it := range s.Items.Data {
		rec := it.Price.Recurring
		if rec == nil || rec.Interval == "" {
			rec = it.Plan
		}
		if rec == nil || rec.Interval == "" {
			continue
		}
		c := billingcycle.Cycle{Anchor: time.Unix(s.BillingCycleAnchor, 0).UTC(), Interval: billingcycle.Interval(rec.Interval), Count: max(rec.IntervalCount, 1)}
		if err := c.Validate(); err != nil {
			return billingcycle.Cycle{}, false, err
		}
		return c, true, nil
	}
	return billingcycle.Cycle{}, false, nil
}

// periodStart is the start of the subscription's current period (zero
// when the object does not say): the latest of its items' when it has
// none of its own.
func (s subscriptionObject) periodStart() time.Time {
	start := s.CurrentPeriodStart
	for _, it := range s.Items.Data {
		start = max(start, it.CurrentPeriodStart)
	}
	if start <= 0 {
		return time.Time{}
	}
	return time.Unix(start, 0).UTC()
}

// effectiveAt is when a subscription event's plan takes effect: the
// start of the subscription's current period when the event is the
// renewal that began it (an update whose previous_attributes hold the
// period's start: a change scheduled for renewal, such as a subscription
// schedule's next phase, takes effect when the period starts, however
// late the event is processed), else the event's created time (a change
// made now; a subscription created or cancelled).
func effectiveAt(ev event, sub subscriptionObject) time.Time {
	if ev.Type == "customer.subscription.updated" && renewed(ev.Previous) {
		if start := sub.periodStart(); !start.IsZero() && !start.After(ev.Created) {
			return start
		}
	}
	return ev.Created
}

// renewed reports whether previous_attributes hold the previous start of
// the current period (on the subscription, or on its items).
func renewed(previous json.RawMessage) bool {
	var prev struct {
		CurrentPeriodStart json.RawMessage `json:"current_period_start"`
		Items              struct {
			Data []struct {
				CurrentPeriodStart json.RawMessage `json:"current_period_start"`
			} `json:"data"`
		} `json:"items"`
	}
	if len(previous) == 0 || json.Unmarshal(previous, &prev) != nil {
		return false
	}
	if len(prev.CurrentPeriodStart) > 0 {
		return true
	}
	for _, it := range prev.Items.Data {
		if len(it.CurrentPeriodStart) > 0 {
			return true
		}
	}
	return false
}

// advance moves ev's object to ev if ev is the latest event applied to it,
// by (created, event id); it reports false when a later one was applied.
// The row lock taken here orders concurrent deliveries about one object.
func advance(ctx context.Context, tx pgx.Tx, ev event) (bool, error) {
	newest, err := billingdata.AdvanceObject(ctx, tx, ev.ObjectID, ev.ObjectType, ev.Created, ev.ID)
	if err != nil {
		return false, contentOrFailure(err, "ordering the event")
	}
	return newest, nil
}

// invoiceFinalized closes the invoice's month for the customer's tenants.
// Ordering does not matter here: an invoice is finalized once, and the
// first finalized invoice of a month closes it (insert-if-absent).
func (h *Handler) invoiceFinalized(ctx context.Context, tx pgx.Tx, ev event) error {
	var inv struct {
		ID          string `json:"id"`
		Customer    string `json:"customer"`
		PeriodStart int64  `json:"period_start"`
	}
	if err := decodeObject(ev, &inv); err != nil {
		return err
	}
	switch {
	case !stripeID.MatchString(inv.ID):
		return undecodable("invoice id %q is not a Stripe id", inv.ID)
	case !stripeID.MatchString(inv.Customer):
		return undecodable("invoice %s: customer %q is not a Stripe customer id", inv.ID, inv.Customer)
	case inv.PeriodStart <= 0:
		return undecodable("invoice %s without period_start", inv.ID)
	}
	tenants, err := accounts.CountCustomerTenants(ctx, tx, inv.Customer)
	if err != nil {
		return contentOrFailure(err, "looking up the customer's tenants")
	}
	if tenants == 0 {
		return undecodable("invoice %s: no tenant has stripe_customer_id %q", inv.ID, inv.Customer)
	}
	return contentOrFailure(billingdata.ClosePeriod(ctx, tx, inv.Customer, time.Unix(inv.PeriodStart, 0).UTC(), inv.ID), "closing the period")
}

// meterErrorReport keeps Stripe's report for people; each is its own row,
// so ordering does not matter.
func (h *Handler) meterErrorReport(ctx context.Context, tx pgx.Tx, ev event) error {
	var rep struct {
		Meter   string `json:"meter"`
		Summary string `json:"summary"`
		Reason  struct {
			ErrorCount int `json:"error_count"`
		} `json:"reason"`
	}
	if err := decodeObject(ev, &rep); err != nil {
		return err
	}
	h.log.WarnContext(ctx, "Stripe reported meter errors", "meter", rep.Meter, "summary", rep.Summary, "errors", rep.Reason.ErrorCount)
	err := billingdata.RecordMeterError(ctx, tx, ev.ID, printable(rep.Meter, 255), printable(fmt.Sprintf("%s (%d errors)", rep.Summary, rep.Reason.ErrorCount), 4096))
	return contentOrFailure(err, "recording the meter error report")
}

// recordUndecodable acknowledges a signed event that cannot take effect:
// it is kept with its reason and the exact bytes Stripe signed, and its
// object (when known) is moved to it, so that an older event about the
// same object does not take effect after it either.
func (h *Handler) recordUndecodable(ctx context.Context, ev event, payload []byte, reason error) (string, error) {
	outcome := RecordedUndecodable
	why := printable(reason.Error(), 4096)
	err := pgx.BeginFunc(ctx, h.pool, func(tx pgx.Tx) error {
		fresh, err := billingdata.RecordUndecodableEvent(ctx, tx, ev.ID, printable(ev.Type, 200), nullTime(ev.Created), nullString(ev.ObjectID))
		if err != nil {
			return err
		}
		if !fresh {
			outcome = Duplicate
			return nil
		}
		if ev.ObjectID != "" && !ev.Created.IsZero() {
			if _, err := advance(ctx, tx, ev); err != nil {
				return err
			}
		}
		return billingdata.RecordUndecodable(ctx, tx, ev.ID, printable(ev.Type, 200), nullTime(ev.Created), why, payload)
	})
	if err != nil {
		return "", fmt.Errorf("recording undecodable event %s: %w", ev.ID, err)
	}
	if outcome == RecordedUndecodable {
		h.log.WarnContext(ctx, "webhook recorded as undecodable: see stripe_webhook_undecodable", "event", ev.ID, "type", printable(ev.Type, 200), "reason", why)
	}
	return outcome, nil
}

func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func nullString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}
