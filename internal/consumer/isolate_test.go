package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

func TestClassify(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		err  error
		want failureKind
	}{
		{"serialization", &pgconn.PgError{Code: "40001"}, transient},
		{"deadlock", &pgconn.PgError{Code: "40P01"}, transient},
		{"admin shutdown", fmt.Errorf("wrapped: %w", &pgconn.PgError{Code: "57P01"}), transient},
		{"cannot connect now", &pgconn.PgError{Code: "57P03"}, transient},
		{"connection failure", &pgconn.PgError{Code: "08006"}, transient},
		{"too many connections", &pgconn.PgError{Code: "53300"}, transient},
		{"no SQLSTATE", errors.New("conn closed"), transient},
		{"check violation", &pgconn.PgError{Code: "23514"}, recordCaused},
		{"not null", &pgconn.PgError{Code: "23502"}, recordCaused},
		{"invalid byte sequence", &pgconn.PgError{Code: "22021"}, recordCaused},
		{"program limit", &pgconn.PgError{Code: "54000"}, recordCaused},
		{"undefined table", &pgconn.PgError{Code: "42P01"}, other},
		{"internal error", &pgconn.PgError{Code: "XX000"}, other},
	} {
		if got := classify(tt.err); got != tt.want {
			t.Errorf("%s: classify = %s, want %s", tt.name, got, tt.want)
		}
	}
}

func newTestConsumer(t *testing.T, pool *pgxpool.Pool, cfg Config) (*Consumer, *rollup.Metrics) {
	t.Helper()
	metrics := rollup.NewMetrics(prometheus.NewRegistry())
	agg := rollup.New(pool, rollup.Config{Group: "g", Topic: "usage.events", Metrics: metrics, Logger: slog.New(slog.DiscardHandler)})
	cfg.RetryInitial = 10 * time.Millisecond
	c := New(cfg, agg, slog.New(slog.DiscardHandler), metrics)
	c.members.Store(1)
	return c, metrics
}

// TestBisectionIsolatesRefusedRecords: records the database refuses (a
// trigger raises a check violation for them) are narrowed down by
// bisection and dead-lettered as unprocessable with the database's
// reason; every other record counts exactly once and the offset ends past
// the batch.
func TestBisectionIsolatesRefusedRecords(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name   string
		n      int
		poison []int
	}{
		{"one of one", 1, []int{0}},
		{"first and last", 16, []int{0, 15}},
		{"two in the middle", 37, []int{5, 13}},
		{"all", 4, []int{0, 1, 2, 3}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			db := pgtest.New(t)
			db.Exec(t, `CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
				BEGIN
					IF NEW.id_text LIKE 'poison%' THEN
						RAISE EXCEPTION 'refused % (with a NUL-free reason)', NEW.id_text USING ERRCODE = 'check_violation';
					END IF;
					RETURN NEW;
				END $$`)
			db.Exec(t, `CREATE TRIGGER refuse_poison BEFORE INSERT ON ledger FOR EACH ROW EXECUTE FUNCTION refuse_poison()`)
			c, metrics := newTestConsumer(t, db.Pool, Config{})
			now := time.Now().UTC()
			poison := map[int]bool{}
			for _, p := range tt.poison {
				poison[p] = true
			}
			var batch []rollup.Record
			var want int64
			for i := range tt.n {
				id := fmt.Sprint("ok-", i)
				if poison[i] {
					id = fmt.Sprint("poison-", i)
				} else {
					want += int64(i + 1)
				}
				e := events.Event{ID: id, Tenant: "acme", Metric: "api_calls", Value: int64(i + 1), Time: now}
				batch = append(batch, rollup.Record{Offset: 100 + int64(i), Key: []byte("acme"), Value: e.AppendJSON(nil), Time: now})
			}
			next, err := c.commit(context.Background(), 0, -1, batch)
			if err != nil {
				t.Fatal(err)
			}
			if next != 100+int64(tt.n) {
				t.Fatalf("next offset %d, want %d", next, 100+tt.n)
			}
			var stored, sum int64
			var dead int
			var reasons string
			ctx := context.Background()
			_ = db.Pool.QueryRow(ctx, `SELECT next_offset FROM consumer_offsets WHERE partition = 0`).Scan(&stored)
			_ = db.Pool.QueryRow(ctx, `SELECT coalesce(sum(value), 0)::bigint FROM usage_windows WHERE granularity = 'month'`).Scan(&sum)
			_ = db.Pool.QueryRow(ctx, `SELECT count(*), coalesce(string_agg(error, '|'), '') FROM usage_dlq WHERE error_class = 'unprocessable'`).Scan(&dead, &reasons)
			if stored != next || sum != want || dead != len(tt.poison) {
				t.Fatalf("stored offset %d, month total %d, %d unprocessable; want %d, %d, %d", stored, sum, dead, next, want, len(tt.poison))
			}
			if !strings.Contains(reasons, "refused poison-") || !strings.Contains(reasons, "23514") {
				t.Errorf("reasons %q lack the database's message", reasons)
			}
			if got := value(metrics.Isolated); got != float64(len(tt.poison)) {
				t.Errorf("isolated records metric %v, want %d", got, len(tt.poison))
			}
		})
	}
}

// flaky fails Apply with err until healed.
type flaky struct {
	applier
	err    error
	healed atomic.Bool
	calls  atomic.Int32
}

func (f *flaky) Apply(ctx context.Context, partition int, from int64, recs []rollup.Record) (rollup.Result, error) {
	f.calls.Add(1)
	if !f.healed.Load() {
		return rollup.Result{}, f.err
	}
	return f.applier.Apply(ctx, partition, from, recs)
}

// TestOutageRetriedAndStallReported: an outage (or an error that is no
// record's fault) is retried with backoff, never bisected; once the same
// offset has failed StallAttempts times the consumer is not ready, naming
// the partition and the reason, and the stalled gauge is 1; both clear
// when the batch commits.
func TestOutageRetriedAndStallReported(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		err  error
	}{
		{"postgres restarting", &pgconn.PgError{Code: "57P01", Message: "terminating connection due to administrator command"}},
		{"connection refused", errors.New("failed to connect: connection refused")},
		{"missing table", &pgconn.PgError{Code: "42P01", Message: `relation "ledger" does not exist`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			db := pgtest.New(t)
			c, metrics := newTestConsumer(t, db.Pool, Config{StallAttempts: 3, StallAfter: time.Hour})
			f := &flaky{applier: c.apply, err: tt.err}
			c.apply = f
			now := time.Now().UTC()
			e := events.Event{ID: "a", Tenant: "acme", Metric: "api_calls", Value: 1, Time: now}
			batch := []rollup.Record{{Partition: 2, Offset: 0, Key: []byte("acme"), Value: e.AppendJSON(nil), Time: now}}
			done := make(chan error, 1)
			go func() {
				_, err := c.commit(context.Background(), 2, -1, batch)
				done <- err
			}()
			deadline := time.Now().Add(20 * time.Second)
			for c.Ready(context.Background()) == nil {
				if time.Now().After(deadline) {
					t.Fatal("still ready after 20s of failures")
				}
				time.Sleep(5 * time.Millisecond)
			}
			err := c.Ready(context.Background())
			if !strings.Contains(err.Error(), "partition 2 stalled") || !strings.Contains(err.Error(), tt.err.Error()) {
				t.Errorf("Ready = %v, want it to name partition 2 and the reason", err)
			}
			if g := value(metrics.Stalled.WithLabelValues("2")); g != 1 {
				t.Errorf("stalled gauge %v while stalled", g)
			}
			f.healed.Store(true)
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if err := c.Ready(context.Background()); err != nil {
				t.Errorf("not ready after the batch committed: %v", err)
			}
			if g := value(metrics.Stalled.WithLabelValues("2")); g != 0 {
				t.Errorf("stalled gauge %v after recovery", g)
			}
			if n := value(metrics.Isolated); n != 0 {
				t.Errorf("%v records isolated for an error that is no record's fault", n)
			}
			var dead int
			_ = db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM usage_dlq`).Scan(&dead)
			if dead != 0 || f.calls.Load() < 4 {
				t.Errorf("%d dead letters after %d attempts; want 0 after at least 4", dead, f.calls.Load())
			}
		})
	}
}

// TestDatabaseDownStalls: with Postgres unreachable for longer than
// StallAfter, the partition is reported stalled with the connection error.
func TestDatabaseDownStalls(t *testing.T) {
	t.Parallel()
	pool, err := pgxpool.New(context.Background(), "postgres://nobody@127.0.0.1:1/none?sslmode=disable&connect_timeout=1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	c, metrics := newTestConsumer(t, pool, Config{StallAfter: 300 * time.Millisecond, StallAttempts: 1000})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := c.commit(ctx, 5, 10, []rollup.Record{{Partition: 5, Offset: 10, Value: []byte("{}")}})
		done <- err
	}()
	deadline := time.Now().Add(20 * time.Second)
	for c.Ready(ctx) == nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	err = c.Ready(ctx)
	cancel()
	<-done
	if err == nil || !strings.Contains(err.Error(), "partition 5 stalled at offset 10") || !strings.Contains(err.Error(), "transient") {
		t.Fatalf("Ready = %v, want partition 5 stalled by a transient error", err)
	}
	if n := value(metrics.Retries.WithLabelValues("transient")); n < 2 {
		t.Errorf("transient retries metric %v", n)
	}
}

// value reads a counter or gauge.
func value(c prometheus.Metric) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}
