// Package windows does the time arithmetic of usage windows: which UTC
// minute, hour, day and month an event time falls in.
//
// Invariant: windows of one granularity tile time without gaps or overlap,
// [Start, End), in UTC, whatever the time zone of the input.
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
