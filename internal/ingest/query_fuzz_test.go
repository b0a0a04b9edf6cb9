package ingest

import (
	"net/url"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/meter"
)

// FuzzParseUsageQuery: any query string either is refused with a message
// or yields a well-formed, bounded range of exactly one of metric and
// meter, with groups and filters only for a meter and within its limits.
func FuzzParseUsageQuery(f *testing.F) {
	for _, s := range []string{
		"metric=api_calls",
		"metric=api_calls&window=minute&from=2026-11-21T00:00:00Z&to=2026-11-21T01:00:00Z",
		"metric=a&window=day&from=0001-01-01T00:00:00Z&to=9999-12-31T23:59:59Z",
		"metric=a&from=2026-11-22T00:00:00Z&to=2026-11-21T00:00:00Z",
		"metric=a&window=week", "metric=&from=x", "metric=a&to=2026-11-21T00:00:00.999999999+14:00",
		"metric=%ff&window=%00", "",
		"meter=tokens_by_model&group_by=model&group_by=region&filter[region]=eu&window=day",
		"meter=m&metric=m", "meter=m&filter[a]=1&filter[a]=2", "meter=m&filter[]=x", "metric=a&group_by=b",
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
		if events.ValidName(q.metric) == events.ValidName(q.meter) || q.metric != "" && (len(q.groupBy) > 0 || len(q.filter) > 0) ||
			len(q.groupBy) > meter.MaxGroupBy || len(q.filter) > meter.MaxGroupBy || !q.from.Before(q.to) || windowCount(q.g, q.from, q.to) > maxWindows {
			t.Fatalf("accepted %q as %+v", raw, q)
		}
	})
}
