package ingest

import (
	"math/big"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/httpjson"
	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/windows"
)

// meterUsageJSON writes, byte for byte, what httpjson.Write writes for
// the answer as a map: HTML characters, U+2028, a nil filter, no
// windows, values beyond int64 and times not at offset 0.
func TestMeterUsageJSONIsHTTPJSON(t *testing.T) {
	t.Parallel()
	d := meter.Definition{GroupBy: []string{"model", "re<gion>"}}
	start := time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)
	huge, _ := new(big.Int).SetString("-18446744073709551617", 10)
	g := d.Group(events.Event{Properties: map[string]string{"model": "a&b\u2028\"<x>"}})
	full := usagedata.MeterUsage{
		Windows: usagedata.MeterWindows{
			{Start: start, End: start.Add(time.Hour), Value: big.NewInt(7), Events: 2, Group: g},
			{Start: start.Add(time.Nanosecond).In(time.FixedZone("x", 3600)), End: start.Add(time.Hour), Value: huge, Events: 0, Group: g},
			{Start: time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC), End: time.Date(1, 2, 3, 4, 5, 6, 0, time.UTC), Value: nil, Group: meter.Definition{}.Group(events.Event{})},
		},
		Totals: usagedata.GroupTotals{{Group: g, Value: huge, Events: 2}, {Group: g, Value: nil}},
		Total:  big.NewInt(9),
		Events: 2,
	}
	tests := []struct {
		name string
		a    meterUsageAnswer
	}{
		{"full", meterUsageAnswer{tenant: "acme", meter: "m<1>", metric: "tok&ens", aggregation: meter.Sum, groupBy: []string{"model"},
			filter: map[string]string{"z": "1", "a": "<&>\u2029"}, window: windows.Hour, from: start, to: start.Add(time.Hour), usage: full}},
		{"empty", meterUsageAnswer{tenant: "acme", meter: "m", metric: "m", aggregation: meter.Latest, groupBy: []string{},
			window: windows.Month, from: start.In(time.FixedZone("y", -7200)), to: start,
			usage: usagedata.MeterUsage{Windows: usagedata.MeterWindows{}, Totals: usagedata.GroupTotals{}, Total: new(big.Int)}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			a := tt.a
			rec := httptest.NewRecorder()
			httpjson.Write(rec, 200, map[string]any{
				"tenant": a.tenant, "meter": a.meter, "metric": a.metric, "aggregation": a.aggregation, "group_by": a.groupBy, "filter": a.filter,
				"window": a.window, "from": a.from, "to": a.to, "windows": []usagedata.MeterWindow(a.usage.Windows),
				"totals": []usagedata.GroupTotal(a.usage.Totals), "total": a.usage.Total,
			})
			got, err := meterUsageJSON(a)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != rec.Body.String() {
				t.Fatalf("got  %s\nwant %s", got, rec.Body.String())
			}
		})
	}
}
