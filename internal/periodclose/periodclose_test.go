package periodclose_test

import (
	"context"
	"math/big"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/billingevents"
	"github.com/usagemeter/metering/internal/periodclose"
	"github.com/usagemeter/metering/internal/storage/billingdata"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

const group, topic = "metering-aggregator", "usage.events"

var (
	oct = time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)
	nov = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	dec = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	// now is two hours into December: November's lateness (1h) has passed.
	now = dec.Add(2 * time.Hour)
)

func TestJudge(t *testing.T) {
	t.Parallel()
	at := func(s string) *time.Time {
		v, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatal(err)
		}
		return &v
	}
	for _, tt := range []struct {
		name    string
		parts   []billingdata.PartitionWatermark
		waiting int
		want    string
	}{
		{"all past", []billingdata.PartitionWatermark{{Partition: 0, Watermark: at("2026-12-01T01:00:00Z")}, {Partition: 1, Watermark: at("2026-12-01T05:00:00Z")}}, 0, "complete"},
		{"one behind", []billingdata.PartitionWatermark{{Partition: 0, Watermark: at("2026-12-01T02:00:00Z")}, {Partition: 2, Watermark: at("2026-11-30T23:10:00.5Z")}}, 0,
			"partition 2 applied up to 2026-11-30T23:10:00Z, needs 2026-12-01T01:00:00Z"},
		{"no watermark", []billingdata.PartitionWatermark{{Partition: 4}}, 0, "partition 4 has no watermark yet, needs 2026-12-01T01:00:00Z"},
		{"dead letters", []billingdata.PartitionWatermark{{Partition: 0, Watermark: at("2026-12-02T00:00:00Z")}}, 3, "3 dead letters wait"},
		{"one dead letter and behind", []billingdata.PartitionWatermark{{Partition: 0, Watermark: at("2026-12-01T00:59:59Z")}}, 1,
			"partition 0 applied up to 2026-12-01T00:59:59Z, needs 2026-12-01T01:00:00Z; 1 dead letter waits"},
		{"nothing consumed", nil, 0, "no partition of usage.events has been consumed yet"},
		{"partitions that reached the same second share a reason", []billingdata.PartitionWatermark{
			{Partition: 0, Watermark: at("2026-11-30T23:10:00.2Z")}, {Partition: 1, Watermark: at("2026-11-30T23:10:00.7Z")},
			{Partition: 2, Watermark: at("2026-12-02T00:00:00Z")}, {Partition: 3, Watermark: at("2026-11-30T23:10:00Z")},
			{Partition: 5, Watermark: at("2026-11-30T23:10:00Z")}, {Partition: 6}, {Partition: 7}, {Partition: 4, Watermark: at("2026-11-30T20:00:00Z")}}, 0,
			"partitions 0-1, 3, 5 applied up to 2026-11-30T23:10:00Z, needs 2026-12-01T01:00:00Z; partition 4 applied up to 2026-11-30T20:00:00Z, needs 2026-12-01T01:00:00Z; partitions 6-7 have no watermark yet, needs 2026-12-01T01:00:00Z"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			st := periodclose.Judge(tt.parts, tt.waiting, dec, time.Hour)
			if st.String() != tt.want || st.Complete != (tt.want == "complete") {
				t.Errorf("Judge = %+v (%q), want %q", st, st.String(), tt.want)
			}
		})
	}
}

// fixture: acme with usage in October, November (implicit and a defined
// meter by model, one group stored by its digest) and December; globex
// with November usage and a dead letter waiting; two partitions.
func fixture(t *testing.T) *pgtest.DB {
	t.Helper()
	db := pgtest.New(t)
	big70 := new(big.Int).Lsh(big.NewInt(1), 70).String() // beyond int64: exact
	digest := "sha256:" + strings.Repeat("ab", 32)
	db.Exec(t, `INSERT INTO meters (name, metric, aggregation, group_by, property, version) VALUES
		('tokens_by_model', 'tokens', 'sum', '{model}', NULL, 1), ('users', 'api_calls', 'unique_count', '{}', 'user', 1)`)
	db.Exec(t, `INSERT INTO meter_group_keys (meter, digest, group_key) VALUES ('tokens_by_model', $1, '["a-very-long-model"]')`, digest)
	db.Exec(t, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events) VALUES
		('acme', 'api_calls', '', 'month', $1, 5, 5),
		('acme', 'api_calls', '', 'month', $2, `+big70+`, 9),
		('acme', 'api_calls', '', 'day', $2, 3, 3),
		('acme', 'tokens_by_model', '["gpt-4"]', 'month', $2, 7, 2),
		('acme', 'tokens_by_model', $4, 'month', $2, 11, 1),
		('acme', 'users', '', 'month', $2, 2, 4),
		('acme', 'api_calls', '', 'month', $3, 1, 1),
		('globex', 'api_calls', '', 'month', $2, 42, 42)`, oct, nov, dec, digest)
	db.Exec(t, `INSERT INTO usage_dlq (tenant, error, error_class, source_topic, source_partition, source_offset, payload)
		VALUES ('globex', 'bad', 'invalid', 'usage.events', 0, 17, '\x7b7d')`)
	ctx := context.Background()
	for p, wm := range map[int]time.Time{0: dec.Add(90 * time.Minute), 1: dec.Add(-50 * time.Minute)} {
		if ok, err := usagedata.AdvanceOffsetTo(ctx, db.Pool, group, topic, p, -1, 100, wm); err != nil || !ok {
			t.Fatalf("storing partition %d: %v %v", p, ok, err)
		}
	}
	return db
}

func newCloser(db *pgtest.DB) *periodclose.Closer {
	return periodclose.New(db.Pool, periodclose.Config{Group: group, Topic: topic, Lateness: time.Hour, Now: func() time.Time { return now }})
}

// events reads the period.closed events queued in the outbox, and checks
// that each is recorded in billing_period_events (they commit together).
func events(t *testing.T, db *pgtest.DB) []billingevents.Event {
	t.Helper()
	ctx := context.Background()
	rows, err := db.Pool.Query(ctx, `SELECT o.msg_value, o.headers->>'event-id', convert_from(o.msg_key, 'UTF8'), e.event_id IS NOT NULL
		FROM outbox o LEFT JOIN billing_period_events e ON e.event_id = o.headers->>'event-id'
		WHERE o.topic = 'billing.events' ORDER BY o.id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []billingevents.Event
	for rows.Next() {
		var v []byte
		var id, key string
		var recorded bool
		if err := rows.Scan(&v, &id, &key, &recorded); err != nil {
			t.Fatal(err)
		}
		ev, err := billingevents.Decode(v)
		if err != nil {
			t.Fatal(err)
		}
		if ev.ID != id || ev.Tenant != key || !recorded {
			t.Errorf("event %s: header id %s, key %s, recorded %v", ev.ID, id, key, recorded)
		}
		out = append(out, ev)
	}
	var markers int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM billing_period_events`).Scan(&markers); err != nil {
		t.Fatal(err)
	}
	if markers != len(out) {
		t.Errorf("%d periods recorded, %d events queued", markers, len(out))
	}
	return out
}

// TestCompleteness: a partition behind, then a waiting dead letter, keep
// the period incomplete with the reason; both cleared, it is complete.
func TestCompleteness(t *testing.T) {
	t.Parallel()
	db := fixture(t)
	ctx := context.Background()
	c := newCloser(db)
	st, err := c.Statuses(ctx, nov, dec, []string{"acme", "globex", "initech"})
	if err != nil {
		t.Fatal(err)
	}
	behind := "partition 1 applied up to 2026-11-30T23:10:00Z, needs 2026-12-01T01:00:00Z"
	want := map[string]string{"acme": behind, "globex": behind + "; 1 dead letter waits", "initech": behind}
	for tenant, w := range want {
		if st[tenant].String() != w || st[tenant].Complete {
			t.Errorf("%s: %+v, want %q", tenant, st[tenant], w)
		}
	}
	// Partition 1 is read to its end (offset 100) at 01:30.
	if moved, err := usagedata.CaughtUp(ctx, db.Pool, group, topic, 1, 100, dec.Add(90*time.Minute), false); err != nil || !moved {
		t.Fatalf("CaughtUp: %v %v", moved, err)
	}
	st, err = c.Statuses(ctx, nov, dec, []string{"acme", "globex"})
	if err != nil {
		t.Fatal(err)
	}
	if !st["acme"].Complete || st["globex"].String() != "1 dead letter waits" {
		t.Errorf("after catching up: %+v", st)
	}
	db.Exec(t, `UPDATE usage_dlq SET status = 'replayed', resolved_at = now()`)
	st, err = c.Statuses(ctx, nov, dec, []string{"globex"})
	if err != nil || !st["globex"].Complete || st["globex"].String() != "complete" {
		t.Errorf("after the replay: %+v %v", st, err)
	}
	// December is not complete: its end has not come.
	st, err = c.Statuses(ctx, dec, dec.AddDate(0, 1, 0), []string{"acme"})
	if err != nil || st["acme"].Complete {
		t.Errorf("December: %+v %v", st, err)
	}
}

// TestCaughtUpNeedsTheLogEnd: a partition whose stored offset is below
// the log end keeps its watermark; an empty partition never stored gets
// its row.
func TestCaughtUpNeedsTheLogEnd(t *testing.T) {
	t.Parallel()
	db := fixture(t)
	ctx := context.Background()
	if moved, err := usagedata.CaughtUp(ctx, db.Pool, group, topic, 1, 101, now, false); err != nil || moved {
		t.Errorf("CaughtUp below the log end moved: %v %v", moved, err)
	}
	if moved, err := usagedata.CaughtUp(ctx, db.Pool, group, topic, 5, 0, now, false); err != nil || moved {
		t.Errorf("CaughtUp of a partition never stored, not empty, moved: %v %v", moved, err)
	}
	if moved, err := usagedata.CaughtUp(ctx, db.Pool, group, topic, 6, 0, now, true); err != nil || !moved {
		t.Errorf("CaughtUp of an empty partition: %v %v", moved, err)
	}
	// The watermark never moves back.
	if moved, err := usagedata.CaughtUp(ctx, db.Pool, group, topic, 0, 100, dec, false); err != nil || moved {
		t.Errorf("CaughtUp at an earlier time moved: %v %v", moved, err)
	}
	ws, err := billingdata.Watermarks(ctx, db.Pool, group, topic)
	if err != nil {
		t.Fatal(err)
	}
	got := map[int]string{}
	for _, w := range ws {
		got[w.Partition] = w.Watermark.UTC().Format(time.RFC3339)
	}
	want := map[int]string{0: "2026-12-01T01:30:00Z", 1: "2026-11-30T23:10:00Z", 6: "2026-12-01T02:00:00Z"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("watermarks %v, want %v", got, want)
	}
}

// TestClosesEachCompletePeriodOnce: the sync closes each complete period
// once, with its exact usage per meter and group, whatever how often it
// runs or how many closers run at once; an incomplete one waits.
func TestClosesEachCompletePeriodOnce(t *testing.T) {
	t.Parallel()
	db := fixture(t)
	ctx := context.Background()
	c := newCloser(db)
	// Partition 1 is past October's end plus lateness, not November's.
	if res, err := c.Close(ctx); err != nil || res.Closed != 1 || res.Waiting != 0 {
		t.Fatalf("with a partition behind: %+v %v; want acme's October closed, November not scanned", res, err)
	}
	if evs := events(t, db); len(evs) != 1 || !evs[0].Data.(billingevents.PeriodClosed).PeriodStart.Equal(oct) {
		t.Fatalf("events: %+v, want October's", evs)
	}
	if _, err := usagedata.CaughtUp(ctx, db.Pool, group, topic, 1, 100, dec.Add(90*time.Minute), false); err != nil {
		t.Fatal(err)
	}
	// Two closers at once, as a deposed leader and its successor.
	var wg sync.WaitGroup
	results := make([]periodclose.Result, 2)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if results[i], err = newCloser(db).Close(ctx); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if closed := results[0].Closed + results[1].Closed; closed != 1 {
		t.Errorf("closers announced %d periods (%+v), want 1: acme's November", closed, results)
	}
	if res, err := c.Close(ctx); err != nil || res.Closed != 0 || res.Waiting != 1 {
		t.Errorf("again: %+v %v; want globex waiting only", res, err)
	}
	evs := events(t, db)
	if len(evs) != 2 {
		t.Fatalf("%d events, want 2", len(evs))
	}
	byPeriod := map[time.Time]billingevents.Event{}
	for _, ev := range evs {
		byPeriod[ev.Data.(billingevents.PeriodClosed).PeriodStart] = ev
	}
	novEv := byPeriod[nov]
	if novEv.Tenant != "acme" || novEv.Type != billingevents.TypePeriodClosed ||
		novEv.ID != billingevents.ID(billingevents.TypePeriodClosed, "acme", "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z") {
		t.Errorf("November's event: %+v", novEv)
	}
	data := novEv.Data.(billingevents.PeriodClosed)
	wantUsage := []billingevents.MeterUsage{
		{Meter: "api_calls", Metric: "api_calls", Aggregation: "sum", Value: new(big.Int).Lsh(big.NewInt(1), 70)},
		{Meter: "tokens_by_model", Metric: "tokens", Aggregation: "sum", Group: `["gpt-4"]`, Value: big.NewInt(7)},
		{Meter: "tokens_by_model", Metric: "tokens", Aggregation: "sum", Group: `["a-very-long-model"]`, Value: big.NewInt(11)},
		{Meter: "users", Metric: "api_calls", Aggregation: "unique_count", Value: big.NewInt(2)},
	}
	if !data.PeriodEnd.Equal(dec) || data.AllowedLateness != "1h0m0s" || !reflect.DeepEqual(data.Usage, wantUsage) {
		t.Errorf("November's data: %+v\nwant usage %+v", data, wantUsage)
	}
	if oct := byPeriod[oct].Data.(billingevents.PeriodClosed); len(oct.Usage) != 1 || oct.Usage[0].Value.Int64() != 5 {
		t.Errorf("October's data: %+v", oct)
	}
	// globex's dead letter is discarded: its November closes, once.
	db.Exec(t, `UPDATE usage_dlq SET status = 'discarded', resolved_at = now()`)
	for range 2 {
		if _, err := c.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	evs = events(t, db)
	if len(evs) != 3 || evs[2].Tenant != "globex" || evs[2].Data.(billingevents.PeriodClosed).Usage[0].Value.Int64() != 42 {
		t.Errorf("after the discard: %+v", evs)
	}
}

// TestCloseWaitsForEveryPartition: a stored partition without a
// watermark (not read to its end since it was stored) closes nothing.
func TestCloseWaitsForEveryPartition(t *testing.T) {
	t.Parallel()
	db := fixture(t)
	ctx := context.Background()
	if _, err := usagedata.CaughtUp(ctx, db.Pool, group, topic, 1, 100, dec.Add(90*time.Minute), false); err != nil {
		t.Fatal(err)
	}
	if ok, err := usagedata.AdvanceOffset(ctx, db.Pool, group, topic, 2, -1, 3); err != nil || !ok {
		t.Fatal(ok, err)
	}
	if res, err := newCloser(db).Close(ctx); err != nil || res != (periodclose.Result{}) {
		t.Errorf("Close = %+v, %v; want nothing closed", res, err)
	}
	if evs := events(t, db); len(evs) != 0 {
		t.Errorf("events: %+v", evs)
	}
}

// TestPartitionsKafkaListsCount: a partition Kafka lists that no consumer
// stored keeps the period incomplete, and a Kafka that cannot list them
// leaves completeness unknown, so incomplete.
func TestPartitionsKafkaListsCount(t *testing.T) {
	t.Parallel()
	db := fixture(t)
	ctx := context.Background()
	if _, err := usagedata.CaughtUp(ctx, db.Pool, group, topic, 1, 100, dec.Add(90*time.Minute), false); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name   string
		list   func(context.Context) ([]int, error)
		want   string
		closed int // -1: Close fails
	}{
		{"a partition not stored", func(context.Context) ([]int, error) { return []int{0, 1, 2}, nil }, "partition 2 has no watermark yet, needs 2026-12-01T01:00:00Z", 0},
		{"Kafka does not answer", func(context.Context) ([]int, error) { return nil, context.DeadlineExceeded },
			"the partitions of usage.events could not be listed from Kafka", -1},
		{"every partition stored", func(context.Context) ([]int, error) { return []int{1, 0}, nil }, "complete", 2},
	} {
		c := periodclose.New(db.Pool, periodclose.Config{Group: group, Topic: topic, Lateness: time.Hour, Partitions: tt.list, Now: func() time.Time { return now }})
		st, err := c.Statuses(ctx, nov, dec, []string{"acme"})
		if err != nil || st["acme"].String() != tt.want {
			t.Errorf("%s: %+v, %v; want %q", tt.name, st["acme"], err, tt.want)
		}
		res, err := c.Close(ctx)
		if (tt.closed < 0) != (err != nil) || (err == nil && res.Closed != tt.closed) {
			t.Errorf("%s: Close = %+v, %v; want %d closed", tt.name, res, err, tt.closed)
		}
	}
}
