package accounts_test

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// definition is the part of a meter PutMeter stores as given.
func definition(m accounts.Meter) accounts.Meter {
	return accounts.Meter{Name: m.Name, Metric: m.Metric, Aggregation: m.Aggregation, GroupBy: m.GroupBy,
		Filter: m.Filter, Property: m.Property, Description: m.Description}
}

// TestPutMeter: a put creates the meter at version 1; one that changes
// nothing (nil and empty group_by and filter being the same) keeps the
// version and updated_at; any change raises the version by one; and
// MetersVersion rises by exactly one with each created or changed meter.
func TestPutMeter(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.New(t)
	tokens := accounts.Meter{Name: "tokens_by_model", Metric: "tokens", Aggregation: accounts.AggregationSum,
		GroupBy: []string{"model", "region"}, Filter: map[string]string{"region": "eu", "tier": "pro"}, Description: "tokens per model"}
	with := func(m accounts.Meter, change func(*accounts.Meter)) accounts.Meter {
		change(&m)
		return m
	}
	plain := accounts.Meter{Name: "calls", Metric: "calls", Aggregation: accounts.AggregationCount}
	steps := []struct {
		name        string
		put         accounts.Meter
		wantCreated bool
		wantVersion int64
		wantSum     int64 // MetersVersion after the put
	}{
		{"create", tokens, true, 1, 1},
		{"same again", tokens, false, 1, 1},
		{"same filter built another way", with(tokens, func(m *accounts.Meter) {
			m.Filter = map[string]string{"tier": "pro", "region": "eu"}
		}), false, 1, 1},
		{"description", with(tokens, func(m *accounts.Meter) { m.Description = "tokens" }), false, 2, 2},
		{"group_by order", with(tokens, func(m *accounts.Meter) {
			m.Description, m.GroupBy = "tokens", []string{"region", "model"}
		}), false, 3, 3},
		{"filter value", with(tokens, func(m *accounts.Meter) {
			m.Description, m.GroupBy, m.Filter = "tokens", []string{"region", "model"}, map[string]string{"region": "us", "tier": "pro"}
		}), false, 4, 4},
		{"to unique_count", with(tokens, func(m *accounts.Meter) {
			m.Description, m.GroupBy, m.Filter = "tokens", []string{"region", "model"}, map[string]string{"region": "us", "tier": "pro"}
			m.Aggregation, m.Property = accounts.AggregationUniqueCount, "user"
		}), false, 5, 5},
		{"another meter, nil group_by and filter", plain, true, 1, 6},
		{"empty group_by and filter are nil ones", with(plain, func(m *accounts.Meter) {
			m.GroupBy, m.Filter = []string{}, map[string]string{}
		}), false, 1, 6},
		{"metric", with(plain, func(m *accounts.Meter) { m.Metric = "requests" }), false, 2, 7},
		{"aggregation", with(plain, func(m *accounts.Meter) {
			m.Metric, m.Aggregation = "requests", accounts.AggregationLatest
		}), false, 3, 8},
		{"version and times in the input are ignored", with(plain, func(m *accounts.Meter) {
			m.Metric, m.Aggregation = "requests", accounts.AggregationLatest
			m.Version, m.CreatedAt, m.UpdatedAt = 42, time.Unix(1, 0), time.Unix(2, 0)
		}), false, 3, 8},
	}
	stored := map[string]accounts.Meter{}
	for _, st := range steps {
		got, created, err := accounts.PutMeter(ctx, db.Pool, st.put)
		if err != nil {
			t.Fatalf("%s: PutMeter: %v", st.name, err)
		}
		if created != st.wantCreated || got.Version != st.wantVersion {
			t.Fatalf("%s: PutMeter = version %d, created %v; want %d, %v", st.name, got.Version, created, st.wantVersion, st.wantCreated)
		}
		want := definition(st.put)
		if want.GroupBy == nil {
			want.GroupBy = []string{}
		}
		if want.Filter == nil {
			want.Filter = map[string]string{}
		}
		if !reflect.DeepEqual(definition(got), want) {
			t.Fatalf("%s: PutMeter stored %+v, want %+v", st.name, definition(got), want)
		}
		prev, existed := stored[got.Name]
		switch {
		case !existed && !got.CreatedAt.Equal(got.UpdatedAt):
			t.Errorf("%s: a new meter has created_at %v, updated_at %v", st.name, got.CreatedAt, got.UpdatedAt)
		case existed && !got.CreatedAt.Equal(prev.CreatedAt):
			t.Errorf("%s: created_at moved from %v to %v", st.name, prev.CreatedAt, got.CreatedAt)
		case existed && got.Version == prev.Version && !got.UpdatedAt.Equal(prev.UpdatedAt):
			t.Errorf("%s: an unchanged put moved updated_at from %v to %v", st.name, prev.UpdatedAt, got.UpdatedAt)
		case existed && got.Version != prev.Version && got.UpdatedAt.Before(prev.UpdatedAt):
			t.Errorf("%s: a change moved updated_at back from %v to %v", st.name, prev.UpdatedAt, got.UpdatedAt)
		}
		stored[got.Name] = got
		read, err := accounts.GetMeter(ctx, db.Pool, got.Name)
		if err != nil || !reflect.DeepEqual(read, got) {
			t.Fatalf("%s: GetMeter = %+v, %v; want %+v", st.name, read, err, got)
		}
		sum, err := accounts.MetersVersion(ctx, db.Pool)
		if err != nil || sum != st.wantSum {
			t.Fatalf("%s: MetersVersion = %d, %v; want %d", st.name, sum, err, st.wantSum)
		}
	}
}

// TestListAndGetMeters: ListMeters orders by name byte by byte; a meter
// never put is ErrNotFound.
func TestListAndGetMeters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.New(t)
	if ms, err := accounts.ListMeters(ctx, db.Pool); err != nil || len(ms) != 0 {
		t.Fatalf("ListMeters on no meters = %v, %v", ms, err)
	}
	if v, err := accounts.MetersVersion(ctx, db.Pool); err != nil || v != 0 {
		t.Fatalf("MetersVersion on no meters = %d, %v; want 0", v, err)
	}
	for _, name := range []string{"b", "a.x", "B", "a", "a-x", "_"} {
		if _, _, err := accounts.PutMeter(ctx, db.Pool, accounts.Meter{Name: name, Metric: "m", Aggregation: accounts.AggregationMax}); err != nil {
			t.Fatalf("PutMeter %s: %v", name, err)
		}
	}
	ms, err := accounts.ListMeters(ctx, db.Pool)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range ms {
		names = append(names, m.Name)
	}
	if want := []string{"B", "_", "a", "a-x", "a.x", "b"}; !reflect.DeepEqual(names, want) {
		t.Errorf("ListMeters names = %q, want %q", names, want)
	}
	for _, name := range []string{"c", "A", ""} {
		if _, err := accounts.GetMeter(ctx, db.Pool, name); !errors.Is(err, accounts.ErrNotFound) {
			t.Errorf("GetMeter(%q) = %v, want ErrNotFound", name, err)
		}
	}
}

// TestPutMeterRefusesInvalid: the table's checks refuse what no meter can
// be, as ErrInvalidMeter, and store nothing.
func TestPutMeterRefusesInvalid(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.New(t)
	ok := accounts.Meter{Name: "m", Metric: "tokens", Aggregation: accounts.AggregationSum}
	with := func(change func(*accounts.Meter)) accounts.Meter {
		m := ok
		change(&m)
		return m
	}
	tests := []struct {
		name string
		m    accounts.Meter
	}{
		{"unknown aggregation", with(func(m *accounts.Meter) { m.Aggregation = "avg" })},
		{"no aggregation", with(func(m *accounts.Meter) { m.Aggregation = "" })},
		{"six group_by", with(func(m *accounts.Meter) { m.GroupBy = []string{"a", "b", "c", "d", "e", "f"} })},
		{"empty group_by name", with(func(m *accounts.Meter) { m.GroupBy = []string{"a", ""} })},
		{"property without unique_count", with(func(m *accounts.Meter) { m.Property = "user" })},
		{"unique_count without property", with(func(m *accounts.Meter) { m.Aggregation = accounts.AggregationUniqueCount })},
		{"bad name", with(func(m *accounts.Meter) { m.Name = "a/b" })},
		{"dot segment name", with(func(m *accounts.Meter) { m.Name = ".." })},
		{"empty name", with(func(m *accounts.Meter) { m.Name = "" })},
		{"long name", with(func(m *accounts.Meter) { m.Name = strings.Repeat("n", 129) })},
		{"empty metric", with(func(m *accounts.Meter) { m.Metric = "" })},
		{"long description", with(func(m *accounts.Meter) { m.Description = strings.Repeat("d", 1025) })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := accounts.PutMeter(ctx, db.Pool, tt.m)
			if !errors.Is(err, accounts.ErrInvalidMeter) {
				t.Fatalf("PutMeter(%+v) = %v, want ErrInvalidMeter", tt.m, err)
			}
		})
	}
	five := with(func(m *accounts.Meter) { m.GroupBy = []string{"a", "b", "c", "d", "e"} })
	if _, _, err := accounts.PutMeter(ctx, db.Pool, five); err != nil {
		t.Fatalf("PutMeter with five group_by: %v", err)
	}
	// A stored meter stays as it was when a change is refused.
	if _, _, err := accounts.PutMeter(ctx, db.Pool, with(func(m *accounts.Meter) { m.Property = "user" })); !errors.Is(err, accounts.ErrInvalidMeter) {
		t.Fatalf("refused change: %v", err)
	}
	if m, err := accounts.GetMeter(ctx, db.Pool, "m"); err != nil || m.Version != 1 || len(m.GroupBy) != 5 || m.Property != "" {
		t.Fatalf("after a refused change: %+v, %v", m, err)
	}
	if ms, err := accounts.ListMeters(ctx, db.Pool); err != nil || len(ms) != 1 {
		t.Fatalf("ListMeters = %+v, %v; want only the valid meter", ms, err)
	}
	// What the Go type cannot say, the table refuses too.
	for _, sql := range []string{
		`INSERT INTO meters (name, metric, aggregation, filter, version) VALUES ('f', 'x', 'sum', '{"region": 1}', 1)`,
		`INSERT INTO meters (name, metric, aggregation, filter, version) VALUES ('f', 'x', 'sum', '["eu"]', 1)`,
		`INSERT INTO meters (name, metric, aggregation, group_by, version) VALUES ('f', 'x', 'sum', '{a,NULL}', 1)`,
		`INSERT INTO meters (name, metric, aggregation, group_by, version) VALUES ('f', 'x', 'sum', '{{a},{b}}', 1)`,
		`INSERT INTO meters (name, metric, aggregation, property, version) VALUES ('f', 'x', 'unique_count', '', 1)`,
		`INSERT INTO meters (name, metric, aggregation, version) VALUES ('f', 'x', 'sum', 0)`,
	} {
		if _, err := db.Pool.Exec(ctx, sql); err == nil {
			t.Errorf("%s: accepted", sql)
		}
	}
}

// TestPutMeterConcurrently: puts of one new definition at the same time
// make it once: one is created, the others find it unchanged.
func TestPutMeterConcurrently(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.New(t)
	for round := range 5 {
		m := accounts.Meter{Name: "m" + string(rune('0'+round)), Metric: "tokens", Aggregation: accounts.AggregationSum, GroupBy: []string{"model"}}
		const n = 4
		created := make([]bool, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() { _, created[i], errs[i] = accounts.PutMeter(ctx, db.Pool, m) })
		}
		wg.Wait()
		made := 0
		for i := range n {
			if errs[i] != nil {
				t.Fatalf("round %d: PutMeter: %v", round, errs[i])
			}
			if created[i] {
				made++
			}
		}
		got, err := accounts.GetMeter(ctx, db.Pool, m.Name)
		if made != 1 || err != nil || got.Version != 1 {
			t.Fatalf("round %d: %d puts created the meter, now %+v, %v; want 1 and version 1", round, made, got, err)
		}
	}
}

// TestPutMeterNotifies: a committed change notifies MetersChannel with the
// meter's name; a rolled-back one and an unchanged one notify nothing.
func TestPutMeterNotifies(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	m := accounts.Meter{Name: "tokens_eu", Metric: "tokens", Aggregation: accounts.AggregationSum, Filter: map[string]string{"region": "eu"}}
	changed := m
	changed.Description = "EU tokens"
	tests := []struct {
		name     string
		existing *accounts.Meter // stored before listening
		put      accounts.Meter
		commit   bool
		notified bool
	}{
		{"created, committed", nil, m, true, true},
		{"created, rolled back", nil, m, false, false},
		{"changed, committed", &m, changed, true, true},
		{"changed, rolled back", &m, changed, false, false},
		{"unchanged, committed", &m, m, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			db := pgtest.New(t)
			if tt.existing != nil {
				if _, _, err := accounts.PutMeter(ctx, db.Pool, *tt.existing); err != nil {
					t.Fatal(err)
				}
			}
			listener := listenMeters(t, db.Pool)
			err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
				if _, _, err := accounts.PutMeter(ctx, tx, tt.put); err != nil {
					return err
				}
				if !tt.commit {
					return errRollBack
				}
				return nil
			})
			if err != nil && !errors.Is(err, errRollBack) {
				t.Fatalf("PutMeter: %v", err)
			}
			// Notifications arrive in commit order: the sentinel, sent after
			// the transaction ended, comes first unless the put notified.
			if _, err := db.Pool.Exec(ctx, `SELECT pg_notify($1, 'sentinel')`, accounts.MetersChannel); err != nil {
				t.Fatal(err)
			}
			var got []string
			for {
				wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				n, err := listener.WaitForNotification(wctx)
				cancel()
				if err != nil {
					t.Fatalf("waiting for notifications (got %q): %v", got, err)
				}
				got = append(got, n.Payload)
				if n.Payload == "sentinel" {
					break
				}
			}
			want := []string{"sentinel"}
			if tt.notified {
				want = []string{tt.put.Name, "sentinel"}
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("notifications on %s: got %q, want %q", accounts.MetersChannel, got, want)
			}
		})
	}
}

var errRollBack = errors.New("roll back")

// listenMeters returns a connection listening on MetersChannel.
func listenMeters(t *testing.T, pool *pgxpool.Pool) *pgx.Conn {
	t.Helper()
	ctx := context.Background()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = accounts.UnlistenMeters(ctx, conn)
		conn.Release()
	})
	if err := accounts.ListenMeters(ctx, conn); err != nil {
		t.Fatal(err)
	}
	return conn.Conn()
}

// TestPlansQuotingMetric: the plans with a quota of a metric, by name,
// and none for a metric no plan quotas.
func TestPlansQuotingMetric(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.New(t)
	st := accounts.New(db.Pool)
	limit := int64(10)
	for _, p := range []accounts.Plan{
		{Name: "pro", Quotas: []accounts.Quota{{Metric: "tokens", Limit: &limit, Period: "month", StripeEventName: "tokens"}}},
		{Name: "Free", Quotas: []accounts.Quota{{Metric: "tokens", Period: "day", StripeEventName: "tokens"}, {Metric: "api_calls", Period: "month", StripeEventName: "api_calls"}}},
		{Name: "empty"},
	} {
		if _, err := st.PutPlan(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		metric string
		want   []string
	}{
		{"tokens", []string{"Free", "pro"}},
		{"api_calls", []string{"Free"}},
		{"Tokens", nil},
		{"storage", nil},
	}
	for _, tt := range tests {
		got, err := accounts.PlansQuotingMetric(ctx, db.Pool, tt.metric)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(tt.want) || (len(got) > 0 && !reflect.DeepEqual(got, tt.want)) {
			t.Errorf("PlansQuotingMetric(%q) = %q, want %q", tt.metric, got, tt.want)
		}
	}
}
