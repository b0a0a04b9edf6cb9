package metertruth_test

import (
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/testkit/metertruth"
	"github.com/usagemeter/metering/internal/windows"
)

func TestFold(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 11, 21, 10, 30, 0, 0, time.UTC)
	evs := []events.Event{
		{Tenant: "acme", ID: "a", Metric: "tokens", Value: 5, Time: at, Properties: map[string]string{"model": "x", "user": "u1"}},
		{Tenant: "acme", ID: "b", Metric: "tokens", Value: 7, Time: at.Add(time.Minute), Properties: map[string]string{"user": "u1"}},
		{Tenant: "acme", ID: "c", Metric: "bytes", Value: 9, Time: at},
	}
	byModel := meter.Definition{Name: "by_model", Metric: "tokens", Aggregation: meter.Sum, GroupBy: []string{"model"}}
	users := meter.Definition{Name: "users", Metric: "tokens", Aggregation: meter.UniqueCount, Property: "user"}
	got := metertruth.Fold([]meter.Definition{meter.Implicit("tokens"), byModel, users}, evs)
	hour := at.Truncate(time.Hour)
	for k, want := range map[string]string{
		metertruth.Key("acme", "tokens", "", windows.Minute, at):                  "5/1",
		metertruth.Key("acme", "tokens", "", windows.Minute, at.Add(time.Minute)): "7/1",
		metertruth.Key("acme", "tokens", "", windows.Hour, hour):                  "12/2",
		metertruth.Key("acme", "by_model", `["x"]`, windows.Hour, hour):           "5/1",
		metertruth.Key("acme", "by_model", `[null]`, windows.Hour, hour):          "7/1",
		metertruth.Key("acme", "users", "", windows.Hour, hour):                   "1/2",
	} {
		if got[k] != want {
			t.Errorf("%s = %q, want %q", k, got[k], want)
		}
	}
	// Implicit: 2 minutes + hour, day, month; by_model: 2 groups × 3;
	// users: 3. No minute window of a defined meter, nothing of bytes.
	if len(got) != 5+6+3 {
		t.Errorf("%d windows, want 14: %v", len(got), got)
	}
}
