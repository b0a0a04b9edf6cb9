// Package windows does the time arithmetic of usage windows: which UTC
// minute, hour, day and month an event time falls in, and, for a tenant,
// which billing period: a tenant's month windows are its billing periods
// (StartIn, EndIn, SpanIn), the UTC calendar months for a tenant without
// a billing cycle.
//
// Invariant: windows of one granularity tile time without gaps or overlap,
// [Start, End), in UTC, whatever the time zone of the input; so do a
// tenant's month windows, given periods that tile time.
package windows

import (
	"fmt"
	"time"
)

// Granularity is the size of a window.
type Granularity string

// Granularities, smallest first.
const (
	Minute Granularity = "minute"
	Hour   Granularity = "hour"
	Day    Granularity = "day"
	Month  Granularity = "month"
)

// All lists every granularity the aggregator keeps.
var All = []Granularity{Minute, Hour, Day, Month}

// Parse accepts "minute", "hour", "day" or "month".
func Parse(s string) (Granularity, error) {
	for _, g := range All {
		if string(g) == s {
			return g, nil
		}
	}
	return "", fmt.Errorf("window must be minute, hour, day or month, got %q", s)
}

// Start returns the start of the window of granularity g containing t.
func (g Granularity) Start(t time.Time) time.Time {
	t = t.UTC()
	switch g {
	case Minute:
		return t.Truncate(time.Minute)
	case Hour:
		return t.Truncate(time.Hour)
	case Day:
		return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
	case Month:
		return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
	}
	panic("windows: unknown granularity " + string(g))
}

// End returns the end (exclusive) of the window that starts at start.
func (g Granularity) End(start time.Time) time.Time {
	start = start.UTC()
	switch g {
	case Minute:
		return start.Add(time.Minute)
	case Hour:
		return start.Add(time.Hour)
	case Day:
		return start.AddDate(0, 0, 1)
	case Month:
		return start.AddDate(0, 1, 0)
	}
	panic("windows: unknown granularity " + string(g))
}

// Span returns the [start, end) window of granularity g containing t.
func (g Granularity) Span(t time.Time) (time.Time, time.Time) {
	s := g.Start(t)
	return s, g.End(s)
}

// Periods are a tenant's billing periods (a billingcycle.Schedule): Span
// returns the period [start, end) containing t. They must tile time.
type Periods interface {
	Span(t time.Time) (time.Time, time.Time)
}

// StartIn returns the start of the window of granularity g containing t
// for a tenant whose billing periods are p: for Month, the start of the
// billing period; for the others, Start(t).
func (g Granularity) StartIn(p Periods, t time.Time) time.Time {
	if g == Month {
		s, _ := p.Span(t)
		return s
	}
	return g.Start(t)
}

// EndIn returns the end (exclusive) of the window of granularity g that
// starts at start for a tenant whose billing periods are p.
func (g Granularity) EndIn(p Periods, start time.Time) time.Time {
	if g == Month {
		_, e := p.Span(start)
		return e
	}
	return g.End(start)
}

// SpanIn returns the [start, end) window of granularity g containing t for
// a tenant whose billing periods are p.
func (g Granularity) SpanIn(p Periods, t time.Time) (time.Time, time.Time) {
	if g == Month {
		return p.Span(t)
	}
	return g.Span(t)
}
