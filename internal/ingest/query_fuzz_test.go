package ingest

import (
	"net/url"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
)

// FuzzParseUsageQuery: any query string either is refused with a message
// or yields a well-formed, bounded range.
func FuzzParseUsageQuery(f *testing.F) {
	for _, s := range []string{
		"metric=api_calls",
		"metric=api_calls&window=minute&from=2026-11-21T00:00:00Z&to=2026-11-21T01:00:00Z",
		"metric=a&window=day&from=0001-01-01T00:00:00Z&to=9999-12-31T23:59:59Z",
		"metric=a&from=2026-11-22T00:00:00Z&to=2026-11-21T00:00:00Z",
		"metric=a&window=week", "metric=&from=x", "metric=a&to=2026-11-21T00:00:00.999999999+14:00",
		"metric=%ff&window=%00", "",
	} {
		f.Add(s)
	}
	now := time.Date(2026, 11, 21, 19, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, raw string) {
		v, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		q, err := parseUsageQuery(v, now)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("an error without a message")
			}
			return
		}
		if !events.ValidName(q.metric) || !q.from.Before(q.to) || windowCount(q.g, q.from, q.to) > maxWindows {
			t.Fatalf("accepted %q as %+v", raw, q)
		}
	})
}
