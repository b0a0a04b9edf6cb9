package usagedata_test

import (
	"math/big"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/storage/usagedata"
)

// TestProjectionScale: usage is extended by the period's length over the
// time elapsed, that time floored at a day (or the whole period when it
// is shorter), so a projection never extrapolates from less than a day
// and never shrinks usage.
func TestProjectionScale(t *testing.T) {
	t.Parallel()
	nov := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	dec := nov.AddDate(0, 1, 0)
	for _, c := range []struct {
		name            string
		start, end, now time.Time
		want            string
	}{
		{"the first second", nov, dec, nov, "30"},
		{"ten minutes in", nov, dec, nov.Add(10 * time.Minute), "30"},
		{"a day in", nov, dec, nov.Add(24 * time.Hour), "30"},
		{"half the month", nov, dec, nov.Add(15 * 24 * time.Hour), "2"},
		{"the last instant", nov, dec, dec.Add(-time.Nanosecond), "2592000000000000/2591999999999999"},
		{"a daily period, a minute in", nov, nov.Add(24 * time.Hour), nov.Add(time.Minute), "1"},
		{"a 12-hour period", nov, nov.Add(12 * time.Hour), nov.Add(time.Hour), "1"},
		{"a weekly period, 2 days in", nov, nov.AddDate(0, 0, 7), nov.Add(48 * time.Hour), "7/2"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			want, _ := new(big.Rat).SetString(c.want)
			if got := usagedata.ProjectionScale(c.start, c.end, c.now); got.Cmp(want) != 0 {
				t.Errorf("ProjectionScale = %s, want %s", got.RatString(), want.RatString())
			}
		})
	}
}
