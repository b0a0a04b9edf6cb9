package anomalydata_test

import (
	"context"
	"math/big"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/anomaly"
	"github.com/usagemeter/metering/internal/storage/anomalydata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// TestHourTotals: a meter's hour total sums its groups for implicit meters
// and defined sum and count meters; max, latest and unique_count meters
// and other granularities and hours are left out; totals beyond int64 stay
// exact.
func TestHourTotals(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.New(t)
	h := time.Date(2026, 11, 23, 14, 0, 0, 0, time.UTC)
	db.Exec(t, `INSERT INTO meters (name, metric, aggregation, group_by, property, version) VALUES
		('tokens_by_model', 'tokens', 'sum', '{model}', NULL, 1),
		('calls', 'api_calls', 'count', '{}', NULL, 1),
		('peak', 'api_calls', 'max', '{}', NULL, 1),
		('users', 'api_calls', 'unique_count', '{}', 'user', 1)`)
	db.Exec(t, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events) VALUES
		('acme', 'tokens', '', 'hour', $1, 100, 1),
		('acme', 'tokens_by_model', '["a"]', 'hour', $1, 60, 1),
		('acme', 'tokens_by_model', '["b"]', 'hour', $1, 40, 1),
		('acme', 'calls', '', 'hour', $1, 7, 7),
		('acme', 'peak', '', 'hour', $1, 9, 1),
		('acme', 'users', '', 'hour', $1, 3, 3),
		('acme', 'tokens', '', 'day', $2, 100, 1),
		('acme', 'tokens', '', 'hour', $3, 5, 1),
		('globex', 'tokens', '', 'hour', $1, 123456789012345678901234567890, 1)`, h, h.Truncate(24*time.Hour), h.Add(time.Hour))
	got, err := anomalydata.HourTotals(ctx, db.Pool, []time.Time{h, h.Add(-time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	want := map[anomaly.Series]string{
		{Tenant: "acme", Meter: "tokens"}: "100", {Tenant: "acme", Meter: "tokens_by_model"}: "100", {Tenant: "acme", Meter: "calls"}: "7",
		{Tenant: "globex", Meter: "tokens"}: "123456789012345678901234567890",
	}
	if len(got) != len(want) {
		t.Errorf("series %v, want %v", got, want)
	}
	for s, v := range want {
		if len(got[s]) != 1 || got[s][h.Unix()] == nil || got[s][h.Unix()].String() != v {
			t.Errorf("%v: %v, want %s at %s", s, got[s], v, h)
		}
	}
	since := h.Add(-28 * 24 * time.Hour)
	if ok, err := anomalydata.Mature(ctx, db.Pool, anomaly.Series{Tenant: "acme", Meter: "tokens"}, since); err != nil || ok {
		t.Errorf("Mature with a day window after since: %v, %v", ok, err)
	}
	if ok, err := anomalydata.Mature(ctx, db.Pool, anomaly.Series{Tenant: "acme", Meter: "tokens"}, h); err != nil || !ok {
		t.Errorf("Mature with a day window before: %v, %v", ok, err)
	}
}

// TestAdvanceAndEpisodes: the progress moves only from the hour stored; an
// episode is inserted once; extending and ending change only open ones.
func TestAdvanceAndEpisodes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.New(t)
	h := time.Date(2026, 11, 23, 14, 0, 0, 0, time.UTC)
	if _, ok, err := anomalydata.Progress(ctx, db.Pool); err != nil || ok {
		t.Fatalf("progress of a new database: %v %v", ok, err)
	}
	steps := []struct {
		from, to time.Time
		want     bool
	}{
		{time.Time{}, h, true},
		{time.Time{}, h, false},
		{h.Add(-time.Hour), h.Add(time.Hour), false},
		{h, h.Add(time.Hour), true},
	}
	for i, s := range steps {
		if ok, err := anomalydata.Advance(ctx, db.Pool, s.from, s.to); err != nil || ok != s.want {
			t.Errorf("step %d: Advance = %v, %v, want %v", i, ok, err, s.want)
		}
	}
	if p, ok, err := anomalydata.Progress(ctx, db.Pool); err != nil || !ok || !p.Equal(h.Add(time.Hour)) {
		t.Errorf("progress %s %v %v", p, ok, err)
	}
	s := anomaly.Series{Tenant: "acme", Meter: "api_calls"}
	sens, _ := anomaly.ParseSensitivity("4")
	a := anomaly.Anomaly{Episode: anomaly.Episode{ID: anomaly.EpisodeID(s, anomaly.Spike, h), Series: s, Direction: anomaly.Spike, Hour: h, LastHour: h},
		Observed: big.NewInt(9000), Expected: big.NewRat(1001, 1), Score: big.NewRat(7991, 100), Sensitivity: sens, DetectedAt: h.Add(70 * time.Minute)}
	for i, want := range []bool{true, false} {
		if ok, err := anomalydata.Insert(ctx, db.Pool, a); err != nil || ok != want {
			t.Fatalf("insert %d: %v %v", i, ok, err)
		}
	}
	open, err := anomalydata.Open(ctx, db.Pool)
	if err != nil || len(open) != 1 || open[s].ID != a.ID || open[s].Direction != anomaly.Spike || !open[s].LastHour.Equal(h) {
		t.Fatalf("open: %+v %v", open, err)
	}
	if err := anomalydata.Extend(ctx, db.Pool, anomaly.Extended{ID: a.ID, LastHour: h.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := anomalydata.End(ctx, db.Pool, anomaly.Ended{ID: a.ID, EndedAt: h.Add(2 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	// Ended: neither extends nor ends again.
	if err := anomalydata.Extend(ctx, db.Pool, anomaly.Extended{ID: a.ID, LastHour: h.Add(5 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := anomalydata.End(ctx, db.Pool, anomaly.Ended{ID: a.ID, EndedAt: h.Add(9 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	list, err := anomalydata.List(ctx, db.Pool, anomalydata.Filter{Tenant: "acme"})
	if err != nil || len(list) != 1 {
		t.Fatalf("list: %+v %v", list, err)
	}
	got := list[0]
	if got.Payload != a.Payload() || !got.LastHour.Equal(h.Add(time.Hour)) || got.EndedAt == nil || !got.EndedAt.Equal(h.Add(2*time.Hour)) {
		t.Errorf("stored %+v, want payload %+v, last hour %s, ended %s", got, a.Payload(), h.Add(time.Hour), h.Add(2*time.Hour))
	}
	if open, err := anomalydata.Open(ctx, db.Pool); err != nil || len(open) != 0 {
		t.Errorf("open after the end: %+v %v", open, err)
	}
}
