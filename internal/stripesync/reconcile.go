package stripesync

import (
	"context"
	"fmt"
	"math/big"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/storage/billingdata"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/windows"
)

// Reconciliation statuses.
const (
	StatusOK       = "ok"
	StatusPending  = "pending"  // pushes in flight, or Stripe still aggregating recent ones
	StatusDrift    = "drift"    // Stripe disagrees with Postgres: see Drift and Note
	StatusUnmapped = "unmapped" // no Stripe customer or meter: not billed
	StatusHeld     = "held"     // a push held for approval (holds.go): see Held and Note
)

// aggregationGrace is how long after a push Stripe's summaries may lag.
const aggregationGrace = 10 * time.Minute

// Row is one line of the finance report: one tenant, metric and month,
// and, for a billed defined meter, one of its groups.
type Row struct {
	Tenant string `json:"tenant"`
	Metric string `json:"metric"`
	Period string `json:"period"`
	// Metered is the month's usage in Postgres.
	Metered *big.Int `json:"metered"`
	// Reported is what was sent to Stripe for this month's usage.
	Reported *big.Int `json:"reported"`
	// InFlight is claimed but not yet confirmed (intents and dead letters).
	InFlight *big.Int `json:"in_flight"`
	// Held is claimed but held for an operator's approval (holds.go).
	Held *big.Int `json:"held"`
	// CarriedOut is this month's usage sent after its invoice was final,
	// so Stripe bills it in a later month; CarriedIn is the reverse.
	CarriedOut *big.Int `json:"carried_out"`
	CarriedIn  *big.Int `json:"carried_in"`
	// Stripe is Stripe's own summary for the month (nil when unmapped).
	Stripe *big.Int `json:"stripe"`
	// Drift is what Stripe should show for the month minus what it shows.
	Drift  *big.Int `json:"drift"`
	Status string   `json:"status"`
	Note   string   `json:"note,omitempty"`
	// Meter is the meter billed: the metric for its implicit meter.
	Meter string `json:"meter"`
	// Group is the group's key, a JSON array of its group_by values
	// (null for a missing property); "" for a meter without groups.
	Group string `json:"group"`
	// Complete says whether the tenant's month is complete (every record
	// appended before its end plus the allowed lateness is counted, and
	// none of the tenant's dead letters waits: internal/periodclose);
	// Completeness is "complete" or why not. Set by the biller after
	// Reconcile.
	Complete     bool   `json:"complete"`
	Completeness string `json:"completeness"`
	// PeriodStart and PeriodEnd are the tenant's billing period the row
	// is of: the one in force at the end of the UTC month Period names
	// (the period starting in that month, or the longer one spanning
	// it; the month itself without a billing cycle).
	PeriodStart time.Time `json:"period_start"`
	PeriodEnd   time.Time `json:"period_end"`
	// Credited is what customer credits gave back of Reported: decreases
	// too old to cancel (credits.go). Stripe's summary still holds it, so
	// it counts in what Stripe should show, and drift stays 0.
	Credited *big.Int `json:"credited"`
	// Adjustments are the month's adjustments of this row, each beside its
	// Stripe counterpart (reconcile_adjustments.go).
	Adjustments []AdjustmentLine `json:"adjustments,omitempty"`
}

// Reconcile compares Postgres with Stripe for every tenant and metric,
// and every group of a billed defined meter, of each tenant's billing
// periods of the UTC month containing period (see billingdata.PeriodTotals:
// every period starting in that month, or else the longer one spanning
// it; a row per period). Stripe's summary of a
// period is read over its whole minutes (summaryWindow), where its pushes
// are stamped.
func (b *Biller) Reconcile(ctx context.Context, period time.Time) ([]Row, error) {
	period = windows.Month.Start(period)
	raws, err := b.readPeriod(ctx, period)
	if err != nil {
		return nil, err
	}
	meters, err := b.meters(ctx)
	if err != nil {
		return nil, err
	}
	starts := make(map[string]map[int64]bool, len(raws))
	for _, x := range raws {
		if starts[x.Tenant] == nil {
			starts[x.Tenant] = map[int64]bool{}
		}
		starts[x.Tenant][periodKey(x.PeriodStart)] = true
	}
	adjs, err := b.readAdjustments(ctx, starts)
	if err != nil {
		return nil, fmt.Errorf("reading the period's adjustments and credits: %w", err)
	}
	now := b.cfg.Now()
	// Rows billed to one Stripe meter of one customer (groups of a meter
	// whose event name has no placeholder, or whose names coincide, and
	// tenants sharing a customer) are one summary in Stripe: they are
	// compared with it together.
	type set struct {
		meterID, customer, eventName string
		start, end                   time.Time
		rows                         []int
	}
	type setKey struct {
		meterID, customer string
		start, end        time.Time
	}
	var sets []*set
	setOf := map[setKey]*set{}
	out := make([]Row, 0, len(raws))
	kept := make([]periodRow, 0, len(raws))
	for _, x := range raws {
		r := x.Row
		k := pairKey{r.Tenant, r.Meter, usagedata.StoredGroupKey(r.Group), periodKey(r.PeriodStart)}
		r.Credited, r.Adjustments = new(big.Int), adjs.lines[k]
		if c := adjs.credited[k]; c != nil {
			r.Credited.Set(c)
		}
		meterID := meters[x.eventName]
		switch {
		case x.skip:
			continue
		case x.unmapped != "":
			r.Status, r.Note = StatusUnmapped, x.unmapped
		case x.customer == "":
			r.Status, r.Note = StatusUnmapped, "the tenant has no stripe_customer_id"
		case meterID == "":
			r.Status, r.Note = StatusUnmapped, fmt.Sprintf("no active Stripe meter for event name %q", x.eventName)
		default:
			key := setKey{meterID, x.customer, r.PeriodStart, r.PeriodEnd}
			st := setOf[key]
			if st == nil {
				st = &set{meterID: meterID, customer: x.customer, eventName: x.eventName, start: r.PeriodStart, end: r.PeriodEnd}
				setOf[key] = st
				sets = append(sets, st)
			}
			st.rows = append(st.rows, len(out))
		}
		out = append(out, r)
		kept = append(kept, x)
	}
	var driftTotal = map[string]float64{}
	for _, st := range sets {
		var total int64
		err := b.call(ctx, func() error {
			var err error
			from, to := summaryWindow(st.start, st.end)
			total, err = b.stripe.Summary(ctx, st.meterID, st.customer, from, to)
			return err
		})
		if err != nil {
			first := out[st.rows[0]]
			return nil, fmt.Errorf("reading Stripe's summary for %s/%s%s: %w", first.Tenant, first.Meter, first.Group, err)
		}
		expected := new(big.Int)
		for _, i := range st.rows {
			r := &out[i]
			r.Stripe = big.NewInt(total)
			expected.Sub(expected.Add(expected, r.Metered), r.CarriedOut)
			expected.Add(expected.Add(expected, r.CarriedIn), r.Credited)
		}
		drift := expected.Sub(expected, big.NewInt(total))
		for n, i := range st.rows {
			r := &out[i]
			r.Drift = new(big.Int)
			if n == 0 {
				// The set's drift once, on its first row.
				r.Drift.Set(drift)
			}
			judge(r, kept[i], now)
			if len(st.rows) > 1 {
				if r.Note != "" {
					r.Note += "; "
				}
				r.Note += fmt.Sprintf("one of %d rows billed to Stripe meter %q of customer %s: stripe is their sum, drift (on the first) theirs together",
					len(st.rows), st.eventName, st.customer)
			}
			driftTotal[r.Status] += float64(r.Drift.Int64())
		}
	}
	for i := range out {
		r := &out[i]
		if r.CarriedOut.Sign() > 0 {
			if r.Note != "" {
				r.Note += "; "
			}
			r.Note += fmt.Sprintf("late usage of %s carried into a later invoice", r.CarriedOut)
		}
		if r.Drift == nil {
			r.Drift = new(big.Int)
		}
	}
	if b.cfg.Metrics != nil {
		for _, st := range []string{StatusOK, StatusPending, StatusDrift, StatusHeld} {
			b.cfg.Metrics.Drift.WithLabelValues(st).Set(driftTotal[st])
		}
	}
	return out, nil
}

// periodRow is one tenant and metric of a period as Postgres has it,
// with what Reconcile needs beyond the Row it reports.
type periodRow struct {
	Row
	customer, eventName string
	unmapped            string
	skip                bool
	dead                int
	discarded           *big.Int
	lastSent            *time.Time
	heldID              int64
	heldReason          string
}

// readPeriod reads, for every tenant and metric with usage or pushes in
// the month starting at period, the metered total and the pushes' sums.
func (b *Biller) readPeriod(ctx context.Context, period time.Time) ([]periodRow, error) {
	rows, err := billingdata.PeriodTotals(ctx, b.pool, period, b.cfg.DefaultPlan)
	if err != nil {
		return nil, fmt.Errorf("reading the period's usage and pushes: %w", err)
	}
	raws := make([]periodRow, len(rows))
	for i, t := range rows {
		x := periodRow{customer: t.Customer, eventName: t.EventName, dead: t.Dead, discarded: usagedata.NumericInt(t.Discarded), lastSent: t.LastSent,
			heldID: t.HeldID, heldReason: t.HeldReason}
		x.Tenant, x.Metric, x.Meter, x.Group = t.Tenant, t.Metric, t.Meter, t.Group
		if t.Defined {
			m := groupMapping(t.EventName, t.Aggregation, t.GroupBy, t.Filter, t.Group)
			x.eventName, x.skip, x.unmapped = m.eventName, m.skip, m.unmapped
		}
		x.Metered, x.Reported, x.InFlight = usagedata.NumericInt(t.Metered), usagedata.NumericInt(t.Reported), usagedata.NumericInt(t.InFlight)
		x.Held = usagedata.NumericInt(t.Held)
		x.CarriedOut, x.CarriedIn = usagedata.NumericInt(t.CarriedOut), usagedata.NumericInt(t.CarriedIn)
		x.Period = period.Format("2006-01")
		x.PeriodStart, x.PeriodEnd = t.PeriodStart, t.PeriodEnd
		raws[i] = x
	}
	return raws, nil
}

// judge sets r's status and note from its drift (Stripe's summary already
// compared) and the state of its pushes, x.
func judge(r *Row, x periodRow, now time.Time) {
	reported := new(big.Int).Set(r.Reported)
	if r.Credited != nil {
		reported.Sub(reported, r.Credited) // what the customer pays for
	}
	claimed := new(big.Int).Add(reported, r.InFlight)
	switch {
	case r.Drift.Sign() == 0 && r.Metered.Cmp(reported) == 0:
		r.Status = StatusOK
	case x.heldID != 0:
		r.Status, r.Note = StatusHeld, fmt.Sprintf("push %d held for approval: %s; approve or reject it with `biller holds` or POST /v1/admin/holds/%d/approve|reject",
			x.heldID, x.heldReason, x.heldID)
	case x.discarded.Sign() > 0:
		r.Status, r.Note = StatusDrift, fmt.Sprintf("%s discarded (from the billing DLQ, or a rejected hold) and never sent: finance decides", x.discarded)
	case x.dead > 0:
		r.Status, r.Note = StatusDrift, fmt.Sprintf("%d push(es) in the billing DLQ: replay them with `biller dlq replay`", x.dead)
	case r.InFlight.Sign() > 0 || (claimed.Cmp(r.Metered) == 0 && x.lastSent != nil && now.Sub(*x.lastSent) < aggregationGrace):
		r.Status, r.Note = StatusPending, "Stripe has not aggregated every push yet"
	case claimed.Cmp(r.Metered) < 0:
		r.Status, r.Note = StatusDrift, "under-reported: the next sync sends the difference"
	case claimed.Cmp(r.Metered) > 0:
		r.Status, r.Note = StatusDrift, "over-reported: cancelled automatically within 24 hours of the push, otherwise credited to the customer by the next sync"
	default:
		r.Status, r.Note = StatusDrift, "Stripe's summary differs from what was sent: check for events changed in Stripe"
	}
}

// fixOverReporting cancels, within Stripe's 24-hour window, the latest
// sent push of every (tenant, metric, month) whose claimed total exceeds
// the metered one (windows rebuilt lower, say); the next planning then
// sends the right difference under a new identifier.
func (b *Biller) fixOverReporting(ctx context.Context) (int, error) {
	periods, err := b.periods(ctx)
	if err != nil {
		return 0, err
	}
	rows, err := billingdata.FindOverReported(ctx, b.pool, oldestPeriod(periods, b.cfg.Now()), b.cfg.Now().Add(-DedupHorizon))
	if err != nil {
		return 0, fmt.Errorf("finding over-reported months: %w", err)
	}
	victims := make([]victim, len(rows))
	for i, r := range rows {
		victims[i] = victim{id: r.ID, identifier: r.Identifier, g: group{customer: r.Customer, eventName: r.EventName, billed: r.Billed}}
	}
	n := 0
	for _, v := range victims {
		cancelled, err := b.cancelOverReported(ctx, v)
		if err != nil {
			return n, fmt.Errorf("recording cancellation of %s: %w", v.identifier, err)
		}
		if cancelled {
			b.cfg.Logger.InfoContext(ctx, "cancelled an over-reported push", "identifier", v.identifier)
			n++
		}
	}
	return n, nil
}

// victim is the latest sent push of an over-reported month.
type victim struct {
	id         int64
	identifier string
	g          group
}

// cancelOverReported cancels v in Stripe and marks it cancelled, under
// its group's lock and only if it is still sent; a failed Stripe call is
// logged and leaves it as it is. It reports whether v was cancelled.
func (b *Biller) cancelOverReported(ctx context.Context, v victim) (bool, error) {
	// Under the group's lock, as a cancellation changes what Stripe's
	// summary shows (landed.go), and only if no other biller did it.
	cancelled := false
	err := pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
		if err := lockGroup(ctx, tx, v.g); err != nil {
			return err
		}
		status, err := billingdata.LockStatus(ctx, tx, v.id)
		if err != nil {
			return err
		}
		if status != "sent" {
			return nil
		}
		err = b.call(ctx, func() error { return b.stripe.CancelMeterEvent(ctx, v.g.eventName, v.identifier) })
		if err != nil {
			b.cfg.Logger.WarnContext(ctx, "cancelling an over-reported push failed", "identifier", v.identifier, "err", err)
			return nil
		}
		if err := billingdata.MarkCancelled(ctx, tx, v.id); err != nil {
			return err
		}
		cancelled = true
		return nil
	})
	return cancelled, err
}
