// Package billingcycle does the time arithmetic of a tenant's billing
// periods: the cycle of its Stripe subscription (an anchor and an
// interval: a month that starts on the 14th at 09:23:11, a year, two
// weeks) and the history of its cycles, effective-dated.
//
// It is pure: the caller reads a tenant's cycle changes and passes them
// in.
//
// Invariant: the periods of a Schedule tile time without gaps or overlap:
// for every instant t, Span(t) = [s, e) with s ≤ t < e, and Span(e)
// starts at e. A Schedule without changes is the UTC calendar month.
//
// The rules follow Stripe's billing cycle anchor:
//
//   - day and week intervals: boundaries every Count days (7×Count for
//     week) from the anchor, exactly.
//   - month and year intervals: the boundary k intervals from the anchor
//     is on the anchor's day of month at the anchor's time of day; in a
//     month too short for that day, on the month's last day (an anchor
//     on the 31st bills on Feb 28, then on Mar 31 again).
//   - a change of cycle effective at From starts a period at From (Stripe
//     starts a new period when the anchor is reset), and the period in
//     force before it ends there.
package billingcycle

import (
	"fmt"
	"slices"
	"time"
)

// Interval is the unit of a cycle.
type Interval string

// The intervals Stripe prices recur on.
const (
	Day   Interval = "day"
	Week  Interval = "week"
	Month Interval = "month"
	Year  Interval = "year"
)

// ParseInterval accepts day, week, month or year.
func ParseInterval(s string) (Interval, error) {
	switch i := Interval(s); i {
	case Day, Week, Month, Year:
		return i, nil
	}
	return "", fmt.Errorf("interval must be day, week, month or year, got %q", s)
}

// MaxCount bounds Count: Stripe allows at most one year (12 months, 52
// weeks, 365 days) between two billings.
func (i Interval) MaxCount() int {
	switch i {
	case Day:
		return 365
	case Week:
		return 52
	case Month:
		return 12
	}
	return 1
}

// Cycle is a tenant's billing cycle: periods of Count Intervals with a
// boundary at Anchor.
type Cycle struct {
	Anchor   time.Time `json:"anchor"`
	Interval Interval  `json:"interval"`
	Count    int       `json:"interval_count"`
}

// Calendar is the UTC calendar month: the cycle of a tenant without one.
var Calendar = Cycle{Anchor: time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC), Interval: Month, Count: 1}

// Validate reports what is wrong with c, or nil.
func (c Cycle) Validate() error {
	if _, err := ParseInterval(string(c.Interval)); err != nil {
		return err
	}
	if c.Count < 1 || c.Count > c.Interval.MaxCount() {
		return fmt.Errorf("interval_count must be 1-%d for interval %s, got %d", c.Interval.MaxCount(), c.Interval, c.Count)
	}
	if c.Anchor.IsZero() {
		return fmt.Errorf("anchor is required (an RFC 3339 time)")
	}
	if y := c.Anchor.UTC().Year(); y < 1970 || y > 9000 {
		return fmt.Errorf("anchor must be between 1970 and 9000, got %s", c.Anchor.UTC().Format(time.RFC3339))
	}
	return nil
}

// IsCalendar reports whether c's periods are the UTC calendar months.
func (c Cycle) IsCalendar() bool {
	a := c.Anchor.UTC()
	return c.Interval == Month && c.Count == 1 && a.Day() == 1 && a.Hour() == 0 && a.Minute() == 0 && a.Second() == 0 && a.Nanosecond() == 0
}

// Equal reports whether c and o have the same periods.
func (c Cycle) Equal(o Cycle) bool {
	if c.IsCalendar() && o.IsCalendar() {
		return true
	}
	if c.Interval != o.Interval || c.Count != o.Count {
		return false
	}
	// Same periods when each anchor is a boundary of the other (one way
	// is not enough: Feb 28 is a boundary of an anchor on the 31st).
	return c.isBoundary(o.Anchor) && o.isBoundary(c.Anchor)
}

// isBoundary reports whether t is a boundary of c.
func (c Cycle) isBoundary(t time.Time) bool {
	s, _ := c.Span(t)
	return s.Equal(t.UTC())
}

// boundary returns the k-th boundary of c (k = 0 is the anchor; negative
// k goes back in time).
func (c Cycle) boundary(k int) time.Time {
	a := c.Anchor.UTC()
	switch c.Interval {
	case Day:
		return a.AddDate(0, 0, k*c.Count)
	case Week:
		return a.AddDate(0, 0, 7*k*c.Count)
	}
	months := k * c.Count
	if c.Interval == Year {
		months *= 12
	}
	// The month k intervals away, then the anchor's day clamped to it.
	first := time.Date(a.Year(), a.Month()+time.Month(months), 1, 0, 0, 0, 0, time.UTC)
	day := min(a.Day(), daysIn(first.Year(), first.Month()))
	return time.Date(first.Year(), first.Month(), day, a.Hour(), a.Minute(), a.Second(), a.Nanosecond(), time.UTC)
}

// daysIn returns the number of days of month m of year y.
func daysIn(y int, m time.Month) int {
	return time.Date(y, m+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

// Span returns the period [start, end) of c containing t.
func (c Cycle) Span(t time.Time) (time.Time, time.Time) {
	t = t.UTC()
	k := c.estimate(t)
	for c.boundary(k).After(t) {
		k--
	}
	for !c.boundary(k + 1).After(t) {
		k++
	}
	return c.boundary(k), c.boundary(k + 1)
}

// estimate returns a k whose boundary is near t, so that Span walks a
// step or two at most.
func (c Cycle) estimate(t time.Time) int {
	a := c.Anchor.UTC()
	switch c.Interval {
	case Day, Week:
		days := int(t.Sub(a) / (24 * time.Hour))
		per := c.Count
		if c.Interval == Week {
			per *= 7
		}
		return floorDiv(days, per)
	}
	months := (t.Year()-a.Year())*12 + int(t.Month()) - int(a.Month())
	per := c.Count
	if c.Interval == Year {
		per *= 12
	}
	return floorDiv(months, per)
}

func floorDiv(a, b int) int {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

// Change is a cycle in force from From until the next change.
type Change struct {
	From  time.Time `json:"effective_from"`
	Cycle Cycle     `json:"cycle"`
}

// Schedule is a tenant's cycles over time. Before its first change, and
// when it has none, the tenant's periods are the UTC calendar months.
type Schedule struct {
	changes []Change // sorted by From, From distinct
}

// NewSchedule returns the schedule of changes, in any order; of two
// changes from the same instant, the later in the list wins. Each cycle
// must be valid.
func NewSchedule(changes []Change) (Schedule, error) {
	cs := make([]Change, 0, len(changes))
	for i, ch := range changes {
		if err := ch.Cycle.Validate(); err != nil {
			return Schedule{}, fmt.Errorf("change %d: %w", i, err)
		}
		ch.From = ch.From.UTC()
		cs = append(cs, ch)
	}
	slices.SortStableFunc(cs, func(x, y Change) int { return x.From.Compare(y.From) })
	out := cs[:0]
	for _, ch := range cs {
		if n := len(out); n > 0 && out[n-1].From.Equal(ch.From) {
			out[n-1] = ch
			continue
		}
		out = append(out, ch)
	}
	return Schedule{changes: out}, nil
}

// Changes returns the schedule's changes, earliest first.
func (s Schedule) Changes() []Change { return slices.Clone(s.changes) }

// CycleAt returns the cycle in force at t.
func (s Schedule) CycleAt(t time.Time) Cycle {
	if i := s.index(t); i >= 0 {
		return s.changes[i].Cycle
	}
	return Calendar
}

// index returns the index of the change in force at t, or -1.
func (s Schedule) index(t time.Time) int {
	i, found := slices.BinarySearchFunc(s.changes, t, func(ch Change, t time.Time) int { return ch.From.Compare(t) })
	if found {
		return i
	}
	return i - 1
}

// Span returns the billing period [start, end) containing t: the period
// of the cycle in force at t, starting no earlier than that cycle's
// change and ending no later than the next change.
func (s Schedule) Span(t time.Time) (time.Time, time.Time) {
	t = t.UTC()
	i := s.index(t)
	cycle := Calendar
	if i >= 0 {
		cycle = s.changes[i].Cycle
	}
	start, end := cycle.Span(t)
	if i >= 0 && start.Before(s.changes[i].From) {
		start = s.changes[i].From
	}
	if i+1 < len(s.changes) && s.changes[i+1].From.Before(end) {
		end = s.changes[i+1].From
	}
	return start, end
}

// Periods returns the periods overlapping [from, to), earliest first.
func (s Schedule) Periods(from, to time.Time) [][2]time.Time {
	var out [][2]time.Time
	for t := from.UTC(); t.Before(to); {
		start, end := s.Span(t)
		out = append(out, [2]time.Time{start, end})
		t = end
	}
	return out
}

// ChangeMargin is how far ahead of the moment it is recorded a change of
// cycle must take effect. An event may be up to 5 minutes early
// (events.DefaultMaxFuture) and clocks drift a little, so no event at or after
// a change's effective time can have been counted before the change was
// recorded: where an event falls depends only on its time and the final
// schedule, and a rebuild places it where live counting did.
const ChangeMargin = 10 * time.Minute

// EarliestFrom is the earliest effective time of a change recorded at
// now.
func EarliestFrom(now time.Time) time.Time { return now.UTC().Add(ChangeMargin) }

// Start returns the start of the billing period containing t.
func (s Schedule) Start(t time.Time) time.Time {
	start, _ := s.Span(t)
	return start
}

// End returns the end of the billing period that starts at start (or
// contains it).
func (s Schedule) End(start time.Time) time.Time {
	_, end := s.Span(start)
	return end
}

// InMonth returns the billing period a month named "YYYY-MM" (UTC) stands
// for: the period in force at the month's last instant. That is the
// period starting in that month when one does (the later one when a
// change of cycle starts two), else the longer period spanning it (a
// yearly cycle); for UTC calendar months, the month itself.
func (s Schedule) InMonth(month time.Time) (time.Time, time.Time) {
	m := month.UTC()
	first := time.Date(m.Year(), m.Month(), 1, 0, 0, 0, 0, time.UTC)
	return s.Span(first.AddDate(0, 1, 0).Add(-time.Nanosecond))
}

// Schedules are the billing schedules of several tenants, by tenant. A
// tenant not in it has UTC calendar months.
type Schedules map[string]Schedule

// Of returns tenant's schedule.
func (s Schedules) Of(tenant string) Schedule { return s[tenant] }

// Span returns tenant's billing period containing t.
func (s Schedules) Span(tenant string, t time.Time) (time.Time, time.Time) {
	return s[tenant].Span(t)
}
