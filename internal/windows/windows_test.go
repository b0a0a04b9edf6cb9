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
