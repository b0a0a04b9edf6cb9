package biller_test

import (
	"testing"

	"github.com/usagemeter/metering/internal/biller"
)

// FuzzParsePeriod: a period is YYYY-MM and parses to the first instant of
// that UTC month, or it is refused.
func FuzzParsePeriod(f *testing.F) {
	for _, s := range []string{"2026-11", "2026-13", "0000-01", "9999-12", "2026-1", "2026-11-01", "x", "-2026-11"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if s == "" {
			return // empty means the current month
		}
		p, err := biller.ParsePeriod(s)
		if err != nil {
			return
		}
		if p.Format("2006-01") != s || p.Day() != 1 || p.Hour() != 0 || p.Location().String() != "UTC" {
			t.Fatalf("%q parsed to %v", s, p)
		}
	})
}
