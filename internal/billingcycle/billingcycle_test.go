package billingcycle_test

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/billingcycle"
)

func at(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestCycleSpan(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		cycle      billingcycle.Cycle
		t          string
		start, end string
	}{
		{"calendar month", billingcycle.Calendar, "2026-11-21T19:00:00Z", "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"},
		{"calendar month, first instant", billingcycle.Calendar, "2026-12-01T00:00:00Z", "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"},
		{"month on the 14th at a time of day", billingcycle.Cycle{Anchor: at("2026-03-14T09:23:11Z"), Interval: billingcycle.Month, Count: 1},
			"2026-11-21T19:00:00Z", "2026-11-14T09:23:11Z", "2026-12-14T09:23:11Z"},
		{"a second before the boundary", billingcycle.Cycle{Anchor: at("2026-03-14T09:23:11Z"), Interval: billingcycle.Month, Count: 1},
			"2026-11-14T09:23:10Z", "2026-10-14T09:23:11Z", "2026-11-14T09:23:11Z"},
		{"before the anchor", billingcycle.Cycle{Anchor: at("2026-03-14T09:23:11Z"), Interval: billingcycle.Month, Count: 1},
			"2025-12-31T00:00:00Z", "2025-12-14T09:23:11Z", "2026-01-14T09:23:11Z"},
		{"anchor on the 31st: February ends on its last day", billingcycle.Cycle{Anchor: at("2026-01-31T00:00:00Z"), Interval: billingcycle.Month, Count: 1},
			"2026-03-01T00:00:00Z", "2026-02-28T00:00:00Z", "2026-03-31T00:00:00Z"},
		{"anchor on the 31st: then the 31st again", billingcycle.Cycle{Anchor: at("2026-01-31T00:00:00Z"), Interval: billingcycle.Month, Count: 1},
			"2026-04-15T00:00:00Z", "2026-03-31T00:00:00Z", "2026-04-30T00:00:00Z"},
		{"leap February", billingcycle.Cycle{Anchor: at("2027-01-30T00:00:00Z"), Interval: billingcycle.Month, Count: 1},
			"2028-02-29T12:00:00Z", "2028-02-29T00:00:00Z", "2028-03-30T00:00:00Z"},
		{"quarterly", billingcycle.Cycle{Anchor: at("2026-02-10T00:00:00Z"), Interval: billingcycle.Month, Count: 3},
			"2026-11-21T19:00:00Z", "2026-11-10T00:00:00Z", "2027-02-10T00:00:00Z"},
		{"yearly from February 29", billingcycle.Cycle{Anchor: at("2024-02-29T08:00:00Z"), Interval: billingcycle.Year, Count: 1},
			"2026-01-01T00:00:00Z", "2025-02-28T08:00:00Z", "2026-02-28T08:00:00Z"},
		{"yearly back on February 29", billingcycle.Cycle{Anchor: at("2024-02-29T08:00:00Z"), Interval: billingcycle.Year, Count: 1},
			"2028-03-01T00:00:00Z", "2028-02-29T08:00:00Z", "2029-02-28T08:00:00Z"},
		{"two weeks", billingcycle.Cycle{Anchor: at("2026-11-02T06:00:00Z"), Interval: billingcycle.Week, Count: 2},
			"2026-11-21T19:00:00Z", "2026-11-16T06:00:00Z", "2026-11-30T06:00:00Z"},
		{"daily, before the anchor", billingcycle.Cycle{Anchor: at("2026-11-21T12:00:00Z"), Interval: billingcycle.Day, Count: 1},
			"2026-11-20T11:59:59Z", "2026-11-19T12:00:00Z", "2026-11-20T12:00:00Z"},
		{"an anchor with an offset is read in UTC", billingcycle.Cycle{Anchor: at("2026-03-14T01:00:00+02:00"), Interval: billingcycle.Month, Count: 1},
			"2026-11-13T23:30:00Z", "2026-11-13T23:00:00Z", "2026-12-13T23:00:00Z"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if err := tt.cycle.Validate(); err != nil {
				t.Fatal(err)
			}
			s, e := tt.cycle.Span(at(tt.t))
			if !s.Equal(at(tt.start)) || !e.Equal(at(tt.end)) {
				t.Fatalf("Span(%s) = [%s, %s), want [%s, %s)", tt.t, s.Format(time.RFC3339), e.Format(time.RFC3339), tt.start, tt.end)
			}
		})
	}
}

func TestCycleValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		cycle billingcycle.Cycle
		want  string
	}{
		{"unknown interval", billingcycle.Cycle{Anchor: at("2026-01-01T00:00:00Z"), Interval: "fortnight", Count: 1}, `interval must be day, week, month or year, got "fortnight"`},
		{"count 0", billingcycle.Cycle{Anchor: at("2026-01-01T00:00:00Z"), Interval: billingcycle.Month, Count: 0}, "interval_count must be 1-12 for interval month, got 0"},
		{"more than a year", billingcycle.Cycle{Anchor: at("2026-01-01T00:00:00Z"), Interval: billingcycle.Week, Count: 53}, "interval_count must be 1-52 for interval week, got 53"},
		{"no anchor", billingcycle.Cycle{Interval: billingcycle.Year, Count: 1}, "anchor is required (an RFC 3339 time)"},
		{"anchor out of range", billingcycle.Cycle{Anchor: at("1969-12-31T00:00:00Z"), Interval: billingcycle.Year, Count: 1}, "anchor must be between 1970 and 9000, got 1969-12-31T00:00:00Z"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.cycle.Validate()
			if err == nil || err.Error() != tt.want {
				t.Fatalf("Validate() = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestCycleEqual(t *testing.T) {
	t.Parallel()
	month31 := billingcycle.Cycle{Anchor: at("2026-01-31T00:00:00Z"), Interval: billingcycle.Month, Count: 1}
	tests := []struct {
		name string
		a, b billingcycle.Cycle
		want bool
	}{
		{"calendar and an anchor on a first", billingcycle.Calendar, billingcycle.Cycle{Anchor: at("2031-07-01T00:00:00Z"), Interval: billingcycle.Month, Count: 1}, true},
		{"a later boundary of the same cycle", month31, billingcycle.Cycle{Anchor: at("2026-03-31T00:00:00Z"), Interval: billingcycle.Month, Count: 1}, true},
		{"a clamped boundary is not the same cycle", month31, billingcycle.Cycle{Anchor: at("2026-02-28T00:00:00Z"), Interval: billingcycle.Month, Count: 1}, false},
		{"another interval", billingcycle.Calendar, billingcycle.Cycle{Anchor: billingcycle.Calendar.Anchor, Interval: billingcycle.Year, Count: 1}, false},
		{"another count", billingcycle.Calendar, billingcycle.Cycle{Anchor: billingcycle.Calendar.Anchor, Interval: billingcycle.Month, Count: 2}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := tt.a.Equal(tt.b); got != tt.want {
				t.Fatalf("Equal = %v, want %v", got, tt.want)
			}
			if got := tt.b.Equal(tt.a); got != tt.want {
				t.Fatalf("Equal (swapped) = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestScheduleSpan(t *testing.T) {
	t.Parallel()
	s, err := billingcycle.NewSchedule([]billingcycle.Change{
		// Out of order on purpose, and a duplicate From where the later wins.
		{From: at("2027-02-01T00:00:00Z"), Cycle: billingcycle.Cycle{Anchor: at("2027-02-01T00:00:00Z"), Interval: billingcycle.Year, Count: 1}},
		{From: at("2026-11-14T09:23:11Z"), Cycle: billingcycle.Cycle{Anchor: at("2026-11-14T09:23:11Z"), Interval: billingcycle.Week, Count: 1}},
		{From: at("2026-11-14T09:23:11Z"), Cycle: billingcycle.Cycle{Anchor: at("2026-11-14T09:23:11Z"), Interval: billingcycle.Month, Count: 1}},
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ t, start, end string }{
		{"2026-10-20T00:00:00Z", "2026-10-01T00:00:00Z", "2026-11-01T00:00:00Z"},           // calendar before the first change
		{"2026-11-10T00:00:00Z", "2026-11-01T00:00:00Z", "2026-11-14T09:23:11Z"},           // the calendar month, cut at the change
		{"2026-11-14T09:23:11Z", "2026-11-14T09:23:11Z", "2026-12-14T09:23:11Z"},           // the change starts a period
		{"2027-01-20T00:00:00Z", "2027-01-14T09:23:11Z", "2027-02-01T00:00:00Z"},           // cut by the next change
		{"2027-06-01T00:00:00Z", "2027-02-01T00:00:00Z", "2028-02-01T00:00:00Z"},           // yearly
		{"2026-11-14T09:23:10.999999999Z", "2026-11-01T00:00:00Z", "2026-11-14T09:23:11Z"}, // just before
	}
	for _, tt := range tests {
		start, end := s.Span(at(tt.t))
		if !start.Equal(at(tt.start)) || !end.Equal(at(tt.end)) {
			t.Errorf("Span(%s) = [%s, %s), want [%s, %s)", tt.t, start.Format(time.RFC3339Nano), end.Format(time.RFC3339Nano), tt.start, tt.end)
		}
	}
	if got := s.CycleAt(at("2026-12-01T00:00:00Z")).Interval; got != billingcycle.Month {
		t.Errorf("CycleAt = %s, want the later of the two changes at one instant (month)", got)
	}
	if _, err := billingcycle.NewSchedule([]billingcycle.Change{{From: at("2026-01-01T00:00:00Z")}}); err == nil {
		t.Error("NewSchedule accepted an invalid cycle")
	}
}

// TestScheduleTiles checks the package invariant on random schedules:
// every instant is in exactly one period, and periods follow each other
// without gaps.
func TestScheduleTiles(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	base := at("2024-01-01T00:00:00Z")
	intervals := []billingcycle.Interval{billingcycle.Day, billingcycle.Week, billingcycle.Month, billingcycle.Year}
	randomTime := func(span time.Duration) time.Time {
		return base.Add(time.Duration(rng.Int64N(int64(span)))).Truncate(time.Second)
	}
	for range 200 {
		var changes []billingcycle.Change
		for range rng.IntN(4) {
			iv := intervals[rng.IntN(len(intervals))]
			changes = append(changes, billingcycle.Change{From: randomTime(3 * 365 * 24 * time.Hour), Cycle: billingcycle.Cycle{
				Anchor: randomTime(4 * 365 * 24 * time.Hour), Interval: iv, Count: 1 + rng.IntN(min(iv.MaxCount(), 3))}})
		}
		s, err := billingcycle.NewSchedule(changes)
		if err != nil {
			t.Fatal(err)
		}
		periods := s.Periods(base, base.AddDate(4, 0, 0))
		for i, p := range periods {
			if !p[0].Before(p[1]) {
				t.Fatalf("%+v: empty period %v", changes, p)
			}
			if i > 0 && !periods[i-1][1].Equal(p[0]) {
				t.Fatalf("%+v: gap or overlap between %v and %v", changes, periods[i-1], p)
			}
			for _, probe := range []time.Time{p[0], p[1].Add(-time.Nanosecond), p[0].Add(p[1].Sub(p[0]) / 2)} {
				if s, e := s.Span(probe); !s.Equal(p[0]) || !e.Equal(p[1]) {
					t.Fatalf("%+v: Span(%s) = [%s, %s), want %v", changes, probe, s, e, p)
				}
			}
		}
	}
}

// TestInMonth: a month names the period in force at its last instant:
// the one starting in it (the later of two when a change starts one),
// the year spanning it, the month itself without a cycle.
func TestInMonth(t *testing.T) {
	t.Parallel()
	monthly := billingcycle.Change{From: at("2026-01-14T09:23:11Z"), Cycle: billingcycle.Cycle{Anchor: at("2026-01-14T09:23:11Z"), Interval: billingcycle.Month, Count: 1}}
	yearly := billingcycle.Change{From: at("2026-03-05T00:00:00Z"), Cycle: billingcycle.Cycle{Anchor: at("2025-03-05T00:00:00Z"), Interval: billingcycle.Year, Count: 1}}
	reset := billingcycle.Change{From: at("2026-11-20T12:00:00Z"), Cycle: billingcycle.Cycle{Anchor: at("2026-11-20T12:00:00Z"), Interval: billingcycle.Month, Count: 1}}
	for _, tt := range []struct {
		name       string
		changes    []billingcycle.Change
		month      string
		start, end string
	}{
		{"calendar", nil, "2026-11-01T00:00:00Z", "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"},
		{"on the 14th", []billingcycle.Change{monthly}, "2026-11-01T00:00:00Z", "2026-11-14T09:23:11Z", "2026-12-14T09:23:11Z"},
		{"yearly, a month inside", []billingcycle.Change{yearly}, "2026-11-01T00:00:00Z", "2026-03-05T00:00:00Z", "2027-03-05T00:00:00Z"},
		{"yearly, the month before the anchor", []billingcycle.Change{yearly}, "2027-02-01T00:00:00Z", "2026-03-05T00:00:00Z", "2027-03-05T00:00:00Z"},
		{"two periods start in the month", []billingcycle.Change{monthly, reset}, "2026-11-01T00:00:00Z", "2026-11-20T12:00:00Z", "2026-12-20T12:00:00Z"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, err := billingcycle.NewSchedule(tt.changes)
			if err != nil {
				t.Fatal(err)
			}
			start, end := s.InMonth(at(tt.month))
			if !start.Equal(at(tt.start)) || !end.Equal(at(tt.end)) {
				t.Errorf("InMonth(%s) = [%s, %s), want [%s, %s)", tt.month, start, end, tt.start, tt.end)
			}
			if !s.Start(start).Equal(start) || !s.End(start).Equal(end) {
				t.Errorf("Start/End of %s disagree with Span", start)
			}
			if got := (billingcycle.Schedules{"x": s}).Of("x"); got.Start(start) != start {
				t.Errorf("Schedules.Of lost the schedule")
			}
		})
	}
	if s, e := (billingcycle.Schedules{}).Span("nobody", at("2026-11-21T19:00:00Z")); !s.Equal(at("2026-11-01T00:00:00Z")) || !e.Equal(at("2026-12-01T00:00:00Z")) {
		t.Errorf("a tenant without a schedule: [%s, %s), want the calendar month", s, e)
	}
	if got := billingcycle.EarliestFrom(at("2026-11-21T19:00:00Z")); !got.Equal(at("2026-11-21T19:10:00Z")) {
		t.Errorf("EarliestFrom = %s", got)
	}
}
