package windows_test

import (
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/windows"
)

func TestSpan(t *testing.T) {
	cet := time.FixedZone("CET", 3600)
	tests := []struct {
		g          windows.Granularity
		t          time.Time
		start, end string
	}{
		{windows.Minute, time.Date(2026, 11, 21, 19, 0, 59, 999, time.UTC), "2026-11-21T19:00:00Z", "2026-11-21T19:01:00Z"},
		{windows.Hour, time.Date(2026, 11, 21, 19, 59, 0, 0, time.UTC), "2026-11-21T19:00:00Z", "2026-11-21T20:00:00Z"},
		{windows.Day, time.Date(2026, 11, 22, 0, 30, 0, 0, cet), "2026-11-21T00:00:00Z", "2026-11-22T00:00:00Z"},
		{windows.Month, time.Date(2026, 12, 31, 23, 59, 59, 0, time.UTC), "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"},
		{windows.Month, time.Date(2028, 2, 29, 12, 0, 0, 0, time.UTC), "2028-02-01T00:00:00Z", "2028-03-01T00:00:00Z"},
		{windows.Day, time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), "2026-03-01T00:00:00Z", "2026-03-02T00:00:00Z"},
	}
	for _, tt := range tests {
		s, e := tt.g.Span(tt.t)
		if s.Format(time.RFC3339) != tt.start || e.Format(time.RFC3339) != tt.end {
			t.Errorf("%s of %v = [%v, %v), want [%s, %s)", tt.g, tt.t, s, e, tt.start, tt.end)
		}
	}
}

func TestParse(t *testing.T) {
	for _, g := range windows.All {
		if got, err := windows.Parse(string(g)); err != nil || got != g {
			t.Errorf("Parse(%s) = %v, %v", g, got, err)
		}
	}
	if _, err := windows.Parse("week"); err == nil {
		t.Error("Parse(week) succeeded")
	}
}

// periodsOn14th are billing periods from the 14th at 09:23:11 to the next.
type periodsOn14th struct{}

func (periodsOn14th) Span(t time.Time) (time.Time, time.Time) {
	s := time.Date(t.Year(), t.Month(), 14, 9, 23, 11, 0, time.UTC)
	if t.Before(s) {
		s = s.AddDate(0, -1, 0)
	}
	return s, s.AddDate(0, 1, 0)
}

// TestSpanIn: a month window is the tenant's billing period; the other
// granularities are the UTC ones.
func TestSpanIn(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 11, 14, 9, 23, 10, 0, time.UTC)
	p := periodsOn14th{}
	if s, e := windows.Month.SpanIn(p, at); !s.Equal(time.Date(2026, 10, 14, 9, 23, 11, 0, time.UTC)) || !e.Equal(time.Date(2026, 11, 14, 9, 23, 11, 0, time.UTC)) {
		t.Errorf("month: [%s, %s)", s, e)
	}
	if s := windows.Month.StartIn(p, at.Add(time.Second)); !s.Equal(time.Date(2026, 11, 14, 9, 23, 11, 0, time.UTC)) {
		t.Errorf("month after the boundary: %s", s)
	}
	if e := windows.Month.EndIn(p, time.Date(2026, 11, 14, 9, 23, 11, 0, time.UTC)); !e.Equal(time.Date(2026, 12, 14, 9, 23, 11, 0, time.UTC)) {
		t.Errorf("month end: %s", e)
	}
	for _, g := range []windows.Granularity{windows.Minute, windows.Hour, windows.Day} {
		s, e := g.SpanIn(p, at)
		if ws, we := g.Span(at); !s.Equal(ws) || !e.Equal(we) || !g.StartIn(p, at).Equal(ws) || !g.EndIn(p, ws).Equal(we) {
			t.Errorf("%s: [%s, %s), want [%s, %s)", g, s, e, ws, we)
		}
	}
}
