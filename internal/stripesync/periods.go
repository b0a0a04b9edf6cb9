package stripesync

import (
	"context"
	"fmt"
	"time"

	"github.com/usagemeter/metering/internal/billingcycle"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/windows"
)

// Billing periods. A tenant's usage is billed per billing period (its
// month windows: its billing cycle's periods, the UTC calendar months
// without one), and each period's pushes are stamped inside it, so that
// Stripe bills them on the invoice of that period. Stripe reads its
// summaries over minute-aligned spans only, so a period's pushes are
// stamped inside its summary window (summaryWindow): the whole minutes
// of the period. For calendar months that is the month itself.

// periods reads the billing schedule of every tenant with a cycle, in one
// statement (the others have calendar months).
func (b *Biller) periods(ctx context.Context) (billingcycle.Schedules, error) {
	s, err := accounts.AllSchedules(ctx, b.pool)
	if err != nil {
		return nil, fmt.Errorf("reading billing cycles: %w", err)
	}
	return s, nil
}

// summaryWindow returns the minute-aligned span [from, to) over which
// Stripe's summary of the billing period [start, end) is read, and which
// its pushes are stamped in: the period's whole minutes (start rounded
// up, end rounded down); for a period without a whole minute (a change
// of cycle a few seconds after a boundary), the minutes it touches.
func summaryWindow(start, end time.Time) (time.Time, time.Time) {
	from, to := ceilMinute(start), end.UTC().Truncate(time.Minute)
	if !from.Before(to) {
		return start.UTC().Truncate(time.Minute), ceilMinute(end)
	}
	return from, to
}

func ceilMinute(t time.Time) time.Time {
	f := t.UTC().Truncate(time.Minute)
	if f.Before(t) {
		f = f.Add(time.Minute)
	}
	return f
}

// stampIn returns t moved into the summary window [from, to): its last
// second at the latest.
func stampIn(t, from, to time.Time) time.Time {
	switch {
	case t.Before(from):
		return from
	case !t.Before(to):
		return to.Add(-time.Second)
	}
	return t
}

// oldestPeriod returns the start of the oldest billing period a sync
// looks at: two calendar months before now's, or, for a tenant with a
// cycle, the period two before its current one, whichever is earlier
// (a yearly tenant's current period may have started months ago).
func oldestPeriod(periods billingcycle.Schedules, now time.Time) time.Time {
	oldest := windows.Month.Start(now).AddDate(0, -2, 0)
	for _, s := range periods {
		p := s.Start(now)
		for range 2 {
			p = s.Start(p.Add(-time.Nanosecond))
		}
		if p.Before(oldest) {
			oldest = p
		}
	}
	return oldest
}

// NextPeriodEnd returns the earliest end after now of a billing period:
// the end of the UTC calendar month, or sooner the end of a tenant's
// current period (when the biller runs a final sync for it). Should the
// billing cycles not be readable, the month's end.
func (b *Biller) NextPeriodEnd(ctx context.Context, now time.Time) time.Time {
	next := windows.Month.End(windows.Month.Start(now))
	periods, err := b.periods(ctx)
	if err != nil {
		b.cfg.Logger.WarnContext(ctx, "reading billing cycles for the next period end failed", "err", err)
		return next
	}
	for _, s := range periods {
		if e := s.End(now); e.Before(next) {
			next = e
		}
	}
	return next
}
