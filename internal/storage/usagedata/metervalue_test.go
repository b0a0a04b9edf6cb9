package usagedata_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/windows"
)

// MeterValue folds the month windows of the groups matching a filter as
// each aggregation folds events (latest ties on time broken by id,
// distinct values across groups counted once), finds groups stored by
// their digest, and GroupValue and GroupValues read groups' windows.
func TestMeterValueOverMatchingGroups(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.New(t)
	month := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	at := func(h int) time.Time { return month.Add(time.Duration(h) * time.Hour) }
	type e struct {
		id, model, region, user string
		value                   int64
		at                      time.Time
	}
	evs := []e{
		{"a", "gpt-4", "eu", "u1", 10, at(1)},
		{"b", "gpt-4", "us", "u2", 30, at(2)},
		{"c", "gpt-3", "eu", "u1", 20, at(3)},
		{"d", "", "eu", "u3", 5, at(4)}, // no model
		{"e", "gpt-4", "eu", "u2", 7, at(2)},
	}
	groupBy := []string{"model", "region"}
	var adds usagedata.MeterAdds
	for _, agg := range meter.Aggregations {
		d := meter.Definition{Name: "m_" + string(agg), Metric: "tokens", Aggregation: agg, GroupBy: groupBy}
		if agg == meter.UniqueCount {
			d.Property = "user"
		}
		for _, x := range evs {
			ev := events.Event{ID: x.id, Tenant: "acme", Metric: "tokens", Value: x.value, Time: x.at,
				Properties: map[string]string{"region": x.region, "user": x.user}}
			if x.model != "" {
				ev.Properties["model"] = x.model
			}
			adds.Append("acme", d.Name, d.Group(ev).Key(), string(windows.Month), month, d.Contribution(ev), 1)
		}
	}
	if err := usagedata.AddMeterWindows(ctx, db.Pool, adds); err != nil {
		t.Fatal(err)
	}
	// A group whose key is too long for an index entry, stored by digest.
	long := strings.Repeat("x", 300)
	longKey := `["` + long + `","eu"]`
	db.Exec(t, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events) VALUES ('acme', 'm_sum', $1, 'month', $2, 1000, 1)`,
		usagedata.StoredKey(longKey), month)
	db.Exec(t, `INSERT INTO meter_group_keys (meter, digest, group_key) VALUES ('m_sum', $1, $2)`, usagedata.StoredKey(longKey), longKey)

	tests := []struct {
		name   string
		filter map[string]string
		want   map[meter.Aggregation]string
	}{
		{"every group", nil, map[meter.Aggregation]string{meter.Sum: "1072", meter.Count: "5", meter.Max: "30", meter.Latest: "5", meter.UniqueCount: "3"}},
		{"one model", map[string]string{"model": "gpt-4"},
			map[meter.Aggregation]string{meter.Sum: "47", meter.Count: "3", meter.Max: "30", meter.Latest: "7", meter.UniqueCount: "2"}},
		{"model and region", map[string]string{"model": "gpt-4", "region": "eu"},
			map[meter.Aggregation]string{meter.Sum: "17", meter.Count: "2", meter.Max: "10", meter.Latest: "7", meter.UniqueCount: "2"}},
		{"region, with a missing model and a digest", map[string]string{"region": "eu"},
			map[meter.Aggregation]string{meter.Sum: "1042", meter.Count: "4", meter.Max: "20", meter.Latest: "5", meter.UniqueCount: "3"}},
		{"the long value", map[string]string{"model": long},
			map[meter.Aggregation]string{meter.Sum: "1000", meter.Count: "0", meter.Max: "0", meter.Latest: "0", meter.UniqueCount: "0"}},
		{"no such value", map[string]string{"model": "gpt-5"},
			map[meter.Aggregation]string{meter.Sum: "0", meter.Count: "0", meter.Max: "0", meter.Latest: "0", meter.UniqueCount: "0"}},
		{"not a group_by property", map[string]string{"user": "u1"},
			map[meter.Aggregation]string{meter.Sum: "0", meter.Count: "0", meter.Max: "0", meter.Latest: "0", meter.UniqueCount: "0"}},
	}
	for _, tt := range tests {
		for _, agg := range meter.Aggregations {
			t.Run(fmt.Sprintf("%s/%s", tt.name, agg), func(t *testing.T) {
				got, err := usagedata.MeterValue(ctx, db.Pool, "acme", "m_"+string(agg), agg, groupBy, tt.filter, windows.Month, month)
				if err != nil || got.String() != tt.want[agg] {
					t.Fatalf("MeterValue = %v, %v; want %s", got, err, tt.want[agg])
				}
			})
		}
	}
	keys := []string{`["gpt-4","eu"]`, `[null,"eu"]`, longKey, `["gpt-5","eu"]`}
	want := []string{"17", "5", "1000", "0"}
	var ws []usagedata.GroupWindow
	for i, key := range keys {
		if got, err := usagedata.GroupValue(ctx, db.Pool, "acme", "m_sum", key, windows.Month, month); err != nil || got.String() != want[i] {
			t.Errorf("GroupValue(%.20s) = %v, %v; want %s", key, got, err, want[i])
		}
		ws = append(ws, usagedata.GroupWindow{Tenant: "acme", Meter: "m_sum", GroupKey: key, Granularity: windows.Month, Start: month})
	}
	ws = append(ws, usagedata.GroupWindow{Tenant: "acme", Meter: "m_sum", GroupKey: keys[0], Granularity: windows.Day, Start: month})
	want = append(want, "0")
	got, err := usagedata.GroupValues(ctx, db.Pool, ws)
	if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("GroupValues = %v, %v; want %v", got, err, want)
	}
}
