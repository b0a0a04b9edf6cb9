package usagedata_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/windows"
)

// groupedEvents draws n events of metric tokens over two days, with model
// and region properties that are sometimes missing and a user property
// for unique_count. Times fall on few microseconds, so latest meets ties
// broken by id.
func groupedEvents(r *rand.Rand, n int) []events.Event {
	base := time.Date(2026, 11, 3, 22, 0, 0, 0, time.UTC)
	evs := make([]events.Event, n)
	for i := range evs {
		props := map[string]string{}
		if m := r.IntN(4); m < 3 {
			props["model"] = []string{"a", "b", "gpt-4"}[m]
		}
		if g := r.IntN(3); g < 2 {
			props["region"] = []string{"eu", "us"}[g]
		}
		if u := r.IntN(10); u < 8 {
			props["user"] = fmt.Sprintf("u%d", u)
		}
		evs[i] = events.Event{
			Tenant: "acme", Metric: "tokens", ID: fmt.Sprintf("%c-%04d", 'a'+r.IntN(4), i),
			Value:      r.Int64N(1_000_000),
			Time:       base.Add(time.Duration(r.IntN(4))*time.Hour + time.Duration(r.IntN(3))*time.Microsecond + time.Duration(r.IntN(1000))),
			Properties: props,
		}
	}
	return evs
}

// fold is one group's (or window's) usage computed from events.
type fold struct {
	agg     meter.Aggregation
	value   *big.Int
	events  int64
	at      time.Time
	id      string
	uniques map[string]bool
}

func (f *fold) add(d meter.Definition, e events.Event) {
	c := d.Contribution(e)
	f.events++
	switch f.agg {
	case meter.Sum, meter.Count:
		f.value.Add(f.value, big.NewInt(c.Value))
	case meter.Max:
		if f.events == 1 || big.NewInt(c.Value).Cmp(f.value) > 0 {
			f.value.SetInt64(c.Value)
		}
	case meter.Latest:
		at := c.Time.Truncate(time.Microsecond)
		if f.events == 1 || at.After(f.at) || at.Equal(f.at) && c.ID > f.id {
			f.value.SetInt64(c.Value)
			f.at, f.id = at, c.ID
		}
	case meter.UniqueCount:
		if c.HasDistinct {
			f.uniques[c.Distinct] = true
		}
		f.value.SetInt64(int64(len(f.uniques)))
	}
}

// expectUsage folds evs as q must answer them: keyed by the group's JSON
// and the window's start (the zero time for a group's total, "*" for
// the total of everything).
func expectUsage(evs []events.Event, q usagedata.MeterQuery) map[string]string {
	folds := map[string]*fold{}
	at := func(k string) *fold {
		if folds[k] == nil {
			folds[k] = &fold{agg: q.Meter.Aggregation, value: new(big.Int), uniques: map[string]bool{}}
		}
		return folds[k]
	}
	for _, e := range evs {
		if !q.Meter.Matches(e) {
			continue
		}
		keep := true
		for k, v := range q.Filter {
			if got, ok := e.Properties[k]; !ok || got != v {
				keep = false
			}
		}
		start := q.Granularity.Start(e.Time)
		if !keep || start.Before(q.From) || !start.Before(q.To) {
			continue
		}
		g, _ := json.Marshal(meter.Definition{GroupBy: q.GroupBy}.Group(e))
		at(string(g)+" "+start.Format(time.RFC3339)).add(q.Meter, e)
		at(string(g)).add(q.Meter, e)
		at("*").add(q.Meter, e)
	}
	out := map[string]string{}
	for k, f := range folds {
		out[k] = fmt.Sprintf("%s/%d", f.value, f.events)
	}
	if len(out) == 0 {
		out["*"] = "0/0"
	}
	return out
}

// gotUsage is u in expectUsage's form, checking its order on the way.
func gotUsage(t *testing.T, u usagedata.MeterUsage) map[string]string {
	t.Helper()
	out := map[string]string{"*": fmt.Sprintf("%s/%d", u.Total, u.Events)}
	var order []string
	for _, g := range u.Totals {
		j, _ := json.Marshal(g.Group)
		out[string(j)] = fmt.Sprintf("%s/%d", g.Value, g.Events)
		order = append(order, string(j))
	}
	prev, prevStart := -1, time.Time{}
	for _, w := range u.Windows {
		j, _ := json.Marshal(w.Group)
		k := string(j) + " " + w.Start.Format(time.RFC3339)
		idx := slices.Index(order, string(j))
		if idx < 0 || idx < prev || idx == prev && !w.Start.After(prevStart) {
			t.Errorf("window %s: not in the totals' order, then by start", k)
		}
		out[k] = fmt.Sprintf("%s/%d", w.Value, w.Events)
		prev, prevStart = idx, w.Start
	}
	return out
}

func addEvents(t *testing.T, db *pgtest.DB, d meter.Definition, evs []events.Event) {
	t.Helper()
	var a usagedata.MeterAdds
	for _, e := range evs {
		if !d.Matches(e) {
			continue
		}
		for _, g := range []windows.Granularity{windows.Hour, windows.Day} {
			a.Append(e.Tenant, d.Name, d.Group(e).Key(), string(g), g.Start(e.Time), d.Contribution(e), 1)
		}
		if a.Len() > 50 { // several batches
			if err := usagedata.AddMeterWindows(context.Background(), db.Pool, a); err != nil {
				t.Fatal(err)
			}
			a = usagedata.MeterAdds{}
		}
	}
	if err := usagedata.AddMeterWindows(context.Background(), db.Pool, a); err != nil {
		t.Fatal(err)
	}
}

// Every aggregation, regrouped, filtered and totalled, answers what
// folding the events themselves gives.
func TestMeterUsageMatchesGroundTruth(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	evs := groupedEvents(rand.New(rand.NewPCG(7, 11)), 400)
	reader := usagedata.NewReader(db.Pool)
	day := time.Date(2026, 11, 3, 0, 0, 0, 0, time.UTC)
	for _, agg := range meter.Aggregations {
		d := meter.Definition{Name: "tokens_" + string(agg), Metric: "tokens", Aggregation: agg, GroupBy: []string{"model", "region"}}
		if agg == meter.UniqueCount {
			d.Property = "user"
		}
		if agg == meter.Sum {
			d.Filter = map[string]string{"region": "eu"} // a meter's own filter
		}
		addEvents(t, db, d, evs)
		for _, groupBy := range [][]string{nil, {"model"}, {"region"}, {"model", "region"}, {"region", "model"}} {
			for _, filter := range []map[string]string{nil, {"region": "eu"}, {"model": "gpt-4", "region": "us"}, {"model": "none"}} {
				for _, span := range []struct {
					g        windows.Granularity
					from, to time.Time
				}{
					{windows.Hour, day, day.Add(72 * time.Hour)},
					{windows.Hour, day.Add(23 * time.Hour), day.Add(25 * time.Hour)}, // cuts the range
					{windows.Day, day, day.Add(48 * time.Hour)},
				} {
					q := usagedata.MeterQuery{Tenant: "acme", Meter: d, Granularity: span.g, From: span.from, To: span.to, GroupBy: groupBy, Filter: filter}
					t.Run(fmt.Sprintf("%s/%v/%v/%s-%s", agg, groupBy, filter, span.g, span.from.Format("02T15")), func(t *testing.T) {
						u, err := reader.MeterUsage(ctx, q)
						if err != nil {
							t.Fatal(err)
						}
						got, want := gotUsage(t, u), expectUsage(evs, q)
						for _, k := range slices.Sorted(maps.Keys(want)) {
							if got[k] != want[k] {
								t.Errorf("%s: got %q, want %q", k, got[k], want[k])
							}
						}
						for k := range got {
							if _, ok := want[k]; !ok {
								t.Errorf("%s: got %q, want nothing", k, got[k])
							}
						}
					})
				}
			}
		}
	}
}

// A missing property is a group of its own, null in the JSON, ordered
// first.
func TestMeterUsageNullGroup(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	d := meter.Definition{Name: "calls_by_model", Metric: "calls", Aggregation: meter.Count, GroupBy: []string{"region", "model"}}
	at := time.Date(2026, 11, 3, 10, 5, 0, 0, time.UTC)
	evs := []events.Event{
		{Tenant: "acme", Metric: "calls", ID: "1", Value: 1, Time: at, Properties: map[string]string{"model": "gpt-4", "region": "eu"}},
		{Tenant: "acme", Metric: "calls", ID: "2", Value: 1, Time: at, Properties: map[string]string{"region": "eu"}},
		{Tenant: "acme", Metric: "calls", ID: "3", Value: 1, Time: at, Properties: map[string]string{"region": "us"}},
		{Tenant: "acme", Metric: "calls", ID: "4", Value: 1, Time: at, Properties: map[string]string{"model": ""}},
	}
	addEvents(t, db, d, evs)
	u, err := usagedata.NewReader(db.Pool).MeterUsage(context.Background(), usagedata.MeterQuery{
		Tenant: "acme", Meter: d, Granularity: windows.Hour, From: at.Truncate(time.Hour), To: at.Add(time.Hour), GroupBy: []string{"model"},
	})
	if err != nil {
		t.Fatal(err)
	}
	j, _ := json.Marshal(u.Totals)
	want := `[{"group":{"model":null},"value":2,"events":2},{"group":{"model":""},"value":1,"events":1},{"group":{"model":"gpt-4"},"value":1,"events":1}]`
	if string(j) != want {
		t.Fatalf("totals = %s\nwant     %s", j, want)
	}
	j, _ = json.Marshal(u.Windows[0])
	if want := `{"start":"2026-11-03T10:00:00Z","end":"2026-11-03T11:00:00Z","value":2,"events":2,"group":{"model":null}}`; string(j) != want {
		t.Fatalf("window = %s\nwant     %s", j, want)
	}
}

// A stored key that is a digest (migration 0014) reads as the key
// meter_group_keys gives back: regrouped, filtered and, for
// unique_count, its values counted with the others'.
func TestMeterUsageDigestKeys(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	long := strings.Repeat("x", 300)
	longKey := `["` + long + `","eu"]`
	sum := sha256.Sum256([]byte(longKey))
	digest := "sha256:" + hex.EncodeToString(sum[:])
	h := time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)
	db.Exec(t, `INSERT INTO meter_group_keys (meter, digest, group_key) VALUES ('m_sum', $1, $2), ('m_uniq', $1, $2)`, digest, longKey)
	db.Exec(t, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events) VALUES
		('acme', 'm_sum', '["a","eu"]', 'hour', $1, 5, 1),
		('acme', 'm_sum', $2, 'hour', $1, 7, 2),
		('acme', 'm_sum', $2, 'hour', $1::timestamptz + interval '1 hour', 11, 1),
		('acme', 'm_uniq', '["a","eu"]', 'hour', $1, 2, 2),
		('acme', 'm_uniq', $2, 'hour', $1, 2, 3)`, h, digest)
	db.Exec(t, `INSERT INTO meter_uniques (tenant, meter, group_key, granularity, window_start, value) VALUES
		('acme', 'm_uniq', '["a","eu"]', 'hour', $1, 'u1'), ('acme', 'm_uniq', '["a","eu"]', 'hour', $1, 'u2'),
		('acme', 'm_uniq', $2, 'hour', $1, 'u2'), ('acme', 'm_uniq', $2, 'hour', $1, 'u3')`, h, digest)
	reader := usagedata.NewReader(db.Pool)
	groupBy := []string{"model", "region"}
	tests := []struct {
		name    string
		d       meter.Definition
		groupBy []string
		filter  map[string]string
		want    string
	}{
		{"regrouped by model", meter.Definition{Name: "m_sum", Aggregation: meter.Sum, GroupBy: groupBy}, []string{"model"}, nil,
			`[{"group":{"model":"a"},"value":5,"events":1},{"group":{"model":"` + long + `"},"value":18,"events":3}] 23`},
		{"folded by region", meter.Definition{Name: "m_sum", Aggregation: meter.Sum, GroupBy: groupBy}, []string{"region"}, nil,
			`[{"group":{"region":"eu"},"value":23,"events":4}] 23`},
		{"filtered on the long value", meter.Definition{Name: "m_sum", Aggregation: meter.Sum, GroupBy: groupBy}, []string{"region"}, map[string]string{"model": long},
			`[{"group":{"region":"eu"},"value":18,"events":3}] 18`},
		{"unique values across keys", meter.Definition{Name: "m_uniq", Aggregation: meter.UniqueCount, GroupBy: groupBy, Property: "user"}, nil, nil,
			`[{"group":{},"value":3,"events":5}] 3`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := reader.MeterUsage(ctx, usagedata.MeterQuery{Tenant: "acme", Meter: tt.d, Granularity: windows.Hour,
				From: h, To: h.Add(2 * time.Hour), GroupBy: tt.groupBy, Filter: tt.filter})
			if err != nil {
				t.Fatal(err)
			}
			j, _ := json.Marshal(u.Totals)
			if got := fmt.Sprintf("%s %s", j, u.Total); got != tt.want {
				t.Fatalf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

// An undefined name is its metric's implicit meter and reads what
// Usage (metric=) reads; a defined one is its stored definition.
func TestMeterUsageImplicitAndDefined(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	h := time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)
	db.Exec(t, `INSERT INTO usage_windows (tenant, meter, granularity, window_start, value, events) VALUES
		('acme', 'api_calls', 'hour', $1, 18014398509481984, 2), ('acme', 'api_calls', 'hour', $1::timestamptz + interval '2 hours', 3, 3),
		('acme', 'api_calls', 'day', $1, 1, 1), ('globex', 'api_calls', 'hour', $1, 9, 9)`, h)
	if _, _, err := accounts.PutMeter(ctx, db.Pool, accounts.Meter{Name: "tokens_by_model", Metric: "tokens", Aggregation: "max", GroupBy: []string{"model"}}); err != nil {
		t.Fatal(err)
	}
	reader := usagedata.NewReader(db.Pool)
	d, defined, err := reader.Meter(ctx, "api_calls")
	if err != nil || defined || d.Aggregation != meter.Sum || len(d.GroupBy) != 0 || d.Metric != "api_calls" {
		t.Fatalf("implicit meter = %+v, %v, %v", d, defined, err)
	}
	u, err := reader.MeterUsage(ctx, usagedata.MeterQuery{Tenant: "acme", Meter: d, Granularity: windows.Hour, From: h, To: h.Add(24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	ws, total, err := reader.Usage(ctx, "acme", "api_calls", windows.Hour, h, h.Add(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(u.Windows) != len(ws) || u.Total.Cmp(total) != 0 || total.String() != "18014398509481987" {
		t.Fatalf("meter read %d windows, total %s; metric read %d, %s", len(u.Windows), u.Total, len(ws), total)
	}
	for i, w := range ws {
		m := u.Windows[i]
		if !m.Start.Equal(w.Start) || !m.End.Equal(w.End) || m.Value.Cmp(w.Value) != 0 || m.Events != w.Events {
			t.Errorf("window %d: meter read %+v, metric read %+v", i, m, w)
		}
	}
	d, defined, err = reader.Meter(ctx, "tokens_by_model")
	if err != nil || !defined || d.Aggregation != meter.Max || !slices.Equal(d.GroupBy, []string{"model"}) || d.Metric != "tokens" {
		t.Fatalf("defined meter = %+v, %v, %v", d, defined, err)
	}
	// Nothing counted: no windows, no totals, a total of 0.
	u, err = reader.MeterUsage(ctx, usagedata.MeterQuery{Tenant: "acme", Meter: d, Granularity: windows.Hour, From: h, To: h.Add(time.Hour), GroupBy: []string{"model"}})
	if err != nil || len(u.Windows) != 0 || len(u.Totals) != 0 || u.Total.Sign() != 0 || u.Events != 0 {
		t.Fatalf("empty read = %+v, %v", u, err)
	}
}

func TestMeterUsageRefuses(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	reader := usagedata.NewReader(db.Pool)
	h := time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)
	db.Exec(t, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events)
		SELECT 'acme', 'm', '["' || i || '"]', 'hour', $1, 1, 1 FROM generate_series(1, 5) i`, h)
	d := meter.Definition{Name: "m", Metric: "tokens", Aggregation: meter.Sum, GroupBy: []string{"model", "region"}}
	tests := []struct {
		name    string
		d       meter.Definition
		groupBy []string
		filter  map[string]string
		max     int
		want    error
	}{
		{"group_by outside the meter's", d, []string{"user"}, nil, 0, usagedata.ErrBadMeterQuery},
		{"filter outside the meter's", d, nil, map[string]string{"user": "u1"}, 0, usagedata.ErrBadMeterQuery},
		{"group_by twice", d, []string{"model", "model"}, nil, 0, usagedata.ErrBadMeterQuery},
		{"groups of the implicit meter", meter.Implicit("tokens"), []string{"model"}, nil, 0, usagedata.ErrBadMeterQuery},
		{"unknown aggregation", meter.Definition{Name: "m", Aggregation: "median"}, nil, nil, 0, usagedata.ErrBadMeterQuery},
		{"too many windows", meter.Definition{Name: "m", Aggregation: meter.Sum, GroupBy: []string{"model"}}, []string{"model"}, nil, 4, usagedata.ErrTooManyWindows},
		{"just enough windows", meter.Definition{Name: "m", Aggregation: meter.Sum, GroupBy: []string{"model"}}, []string{"model"}, nil, 5, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := reader.MeterUsage(context.Background(), usagedata.MeterQuery{Tenant: "acme", Meter: tt.d, Granularity: windows.Hour,
				From: h, To: h.Add(time.Hour), GroupBy: tt.groupBy, Filter: tt.filter, MaxWindows: tt.max})
			if !errors.Is(err, tt.want) || (tt.want != nil && err.Error() == "") {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

// TestMeterUsageBoundsStoredWindows: a filtered read of one group of a
// meter with many groups in range answers while the range holds at most
// 100 stored windows per window the answer may hold, and is refused
// (ErrTooManyWindows) beyond, rather than read whole into memory.
func TestMeterUsageBoundsStoredWindows(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	reader := usagedata.NewReader(db.Pool)
	h := time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)
	db.Exec(t, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events)
		SELECT 'acme', 'wide', '["g' || i || '"]', 'hour', $1, i, 1 FROM generate_series(1, 250) i`, h)
	d := meter.Definition{Name: "wide", Metric: "tokens", Aggregation: meter.Sum, GroupBy: []string{"model"}}
	for _, tt := range []struct {
		max  int
		want error
	}{{2, usagedata.ErrTooManyWindows}, {3, nil}} {
		u, err := reader.MeterUsage(context.Background(), usagedata.MeterQuery{Tenant: "acme", Meter: d, Granularity: windows.Hour,
			From: h, To: h.Add(time.Hour), GroupBy: []string{"model"}, Filter: map[string]string{"model": "g7"}, MaxWindows: tt.max})
		if !errors.Is(err, tt.want) {
			t.Fatalf("MaxWindows %d: %v, want %v", tt.max, err, tt.want)
		}
		if err == nil && (len(u.Windows) != 1 || u.Total.Int64() != 7) {
			t.Fatalf("MaxWindows %d: %d windows, total %s; want g7's one window of 7", tt.max, len(u.Windows), u.Total)
		}
	}
}

// MeterWindows writes what encoding/json writes for each window.
func TestMeterWindowsJSON(t *testing.T) {
	t.Parallel()
	d := meter.Definition{GroupBy: []string{"model", "region"}}
	start := time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)
	big1, _ := new(big.Int).SetString("18446744073709551617", 10)
	ws := usagedata.MeterWindows{
		{Start: start, End: start.Add(time.Hour), Value: big1, Events: 3,
			Group: d.Group(events.Event{Properties: map[string]string{"model": "a\"<b>\u2028\\", "other": "x"}})},
		{Start: start.Add(time.Nanosecond).In(time.FixedZone("x", 3600)), End: start.Add(time.Hour), Value: new(big.Int), Events: 0,
			Group: meter.Definition{}.Group(events.Event{})},
	}
	got, err := json.Marshal(ws)
	if err != nil {
		t.Fatal(err)
	}
	want, err := json.Marshal([]usagedata.MeterWindow(ws))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

// Windows and totals past int64, folded across keys and windows, are
// exact: sums that overflow an int64 turn to big integers, a stored value
// beyond int64 is read as one, and max compares them. The same read over
// the simple protocol (every column as text, decoded by the type map)
// answers the same.
func TestMeterUsageBeyondInt64(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	h := time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)
	for _, m := range []string{"m_sum", "m_max"} {
		db.Exec(t, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events) VALUES
			('acme', $2, '["a","eu"]', 'hour', $1, 9223372036854775807, 1),
			('acme', $2, '["a","us"]', 'hour', $1, 9223372036854775807, 2),
			('acme', $2, '["a","eu"]', 'hour', $1::timestamptz + interval '1 hour', 100000000000000000000, 3),
			('acme', $2, '["b","eu"]', 'hour', $1, 5, 4),
			('acme', $2, '["b","eu"]', 'hour', $1::timestamptz + interval '1 hour', 4611686018427387904, 5),
			('acme', $2, '["b","us"]', 'hour', $1::timestamptz + interval '1 hour', 4611686018427387904, 6)`, h, m)
	}
	simple, err := pgxpool.New(ctx, db.URL+"&default_query_exec_mode=simple_protocol")
	if err != nil {
		t.Fatal(err)
	}
	defer simple.Close()
	groupBy := []string{"model", "region"}
	tests := []struct {
		name    string
		d       meter.Definition
		groupBy []string
		want    string
	}{
		{"sum by model", meter.Definition{Name: "m_sum", Aggregation: meter.Sum, GroupBy: groupBy}, []string{"model"},
			`[{"start":"2026-11-03T10:00:00Z","end":"2026-11-03T11:00:00Z","value":18446744073709551614,"events":3,"group":{"model":"a"}},` +
				`{"start":"2026-11-03T11:00:00Z","end":"2026-11-03T12:00:00Z","value":100000000000000000000,"events":3,"group":{"model":"a"}},` +
				`{"start":"2026-11-03T10:00:00Z","end":"2026-11-03T11:00:00Z","value":5,"events":4,"group":{"model":"b"}},` +
				`{"start":"2026-11-03T11:00:00Z","end":"2026-11-03T12:00:00Z","value":9223372036854775808,"events":11,"group":{"model":"b"}}] ` +
				`[{"group":{"model":"a"},"value":118446744073709551614,"events":6},{"group":{"model":"b"},"value":9223372036854775813,"events":15}] ` +
				`127670116110564327427/21`},
		{"sum of everything", meter.Definition{Name: "m_sum", Aggregation: meter.Sum, GroupBy: groupBy}, nil,
			`[{"start":"2026-11-03T10:00:00Z","end":"2026-11-03T11:00:00Z","value":18446744073709551619,"events":7,"group":{}},` +
				`{"start":"2026-11-03T11:00:00Z","end":"2026-11-03T12:00:00Z","value":109223372036854775808,"events":14,"group":{}}] ` +
				`[{"group":{},"value":127670116110564327427,"events":21}] 127670116110564327427/21`},
		{"max by region", meter.Definition{Name: "m_max", Aggregation: meter.Max, GroupBy: groupBy}, []string{"region"},
			`[{"start":"2026-11-03T10:00:00Z","end":"2026-11-03T11:00:00Z","value":9223372036854775807,"events":5,"group":{"region":"eu"}},` +
				`{"start":"2026-11-03T11:00:00Z","end":"2026-11-03T12:00:00Z","value":100000000000000000000,"events":8,"group":{"region":"eu"}},` +
				`{"start":"2026-11-03T10:00:00Z","end":"2026-11-03T11:00:00Z","value":9223372036854775807,"events":2,"group":{"region":"us"}},` +
				`{"start":"2026-11-03T11:00:00Z","end":"2026-11-03T12:00:00Z","value":4611686018427387904,"events":6,"group":{"region":"us"}}] ` +
				`[{"group":{"region":"eu"},"value":100000000000000000000,"events":13},{"group":{"region":"us"},"value":9223372036854775807,"events":8}] ` +
				`100000000000000000000/21`},
	}
	for _, tt := range tests {
		for _, pool := range []*pgxpool.Pool{db.Pool, simple} {
			t.Run(fmt.Sprintf("%s/%s", tt.name, pool.Config().ConnConfig.DefaultQueryExecMode), func(t *testing.T) {
				u, err := usagedata.NewReader(pool).MeterUsage(ctx, usagedata.MeterQuery{Tenant: "acme", Meter: tt.d, Granularity: windows.Hour,
					From: h, To: h.Add(2 * time.Hour), GroupBy: tt.groupBy})
				if err != nil {
					t.Fatal(err)
				}
				ws, _ := json.Marshal(u.Windows)
				ts, _ := json.Marshal(u.Totals)
				if got := fmt.Sprintf("%s %s %s/%d", ws, ts, u.Total, u.Events); got != tt.want {
					t.Fatalf("got  %s\nwant %s", got, tt.want)
				}
			})
		}
	}
}
