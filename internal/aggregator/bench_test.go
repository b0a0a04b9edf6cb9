package aggregator_test

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/consumer"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/testkit/kafkatest"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/topics"
	"github.com/usagemeter/metering/internal/windows"
)

const benchBatch = 10000

// benchEvents returns n distinct events over 1000 tenants and two metrics
// in the last two hours, as records of partition 0 from offset from.
func benchEvents(rng *rand.Rand, n int, from int64) ([]events.Event, []rollup.Record) {
	return benchEventsOf(rng, n, from, "tenant-")
}

// benchEventsOf is benchEvents with tenant names starting with prefix, so
// that concurrent workers can own disjoint tenants, as Kafka partitions do.
func benchEventsOf(rng *rand.Rand, n int, from int64, prefix string) ([]events.Event, []rollup.Record) {
	return benchEventsWith(rng, n, from, prefix, noProperties)
}

// propertyShape is whether bench events carry properties: a project of
// 1,000 distinct values and a user of 10,000, drawn uniformly for every
// tenant, so that nearly every event of a batch is a new group and a new
// unique value in each of its windows (the costliest case for meters).
type propertyShape bool

const (
	noProperties     propertyShape = false
	sparseProperties propertyShape = true
)

func (p propertyShape) draw(rng *rand.Rand) map[string]string {
	if !p {
		return nil
	}
	return map[string]string{"project": fmt.Sprint("p", rng.IntN(1000)), "user": fmt.Sprint("u", rng.IntN(10000))}
}

// benchEventsWith is benchEventsOf with properties of shape props.
func benchEventsWith(rng *rand.Rand, n int, from int64, prefix string, props propertyShape) ([]events.Event, []rollup.Record) {
	base := time.Now().UTC().Add(-2 * time.Hour)
	evs := make([]events.Event, n)
	recs := make([]rollup.Record, n)
	for i := range evs {
		evs[i] = events.Event{ID: events.NewID(), Tenant: fmt.Sprint(prefix, rng.IntN(1000)), Metric: []string{"api_calls", "tokens"}[i%2],
			Value: rng.Int64N(1000), Time: base.Add(time.Duration(rng.IntN(7200)) * time.Second), Properties: props.draw(rng)}
		recs[i] = rollup.Record{Partition: 0, Offset: from + int64(i), Key: []byte(evs[i].Tenant), Value: evs[i].AppendJSON(nil), Time: time.Now()}
	}
	return evs, recs
}

const benchWorkers = 4

// inWorkers pre-generates b.N batches, a quarter per worker with its own
// tenants, then times benchWorkers goroutines applying them with fn, and
// returns how many events they processed.
func inWorkers(b *testing.B, rng *rand.Rand, fn func(worker int, recs []rollup.Record, evs []events.Event) error) int {
	return inWorkersWith(b, rng, noProperties, fn)
}

// inWorkersWith is inWorkers with events made by benchEventsWith.
func inWorkersWith(b *testing.B, rng *rand.Rand, props propertyShape, fn func(worker int, recs []rollup.Record, evs []events.Event) error) int {
	per := (b.N + benchWorkers - 1) / benchWorkers
	type batch struct {
		recs []rollup.Record
		evs  []events.Event
	}
	work := make([][]batch, benchWorkers)
	for w := range work {
		for range per {
			evs, recs := benchEventsWith(rng, benchBatch, 0, fmt.Sprintf("w%d-tenant-", w), props)
			work[w] = append(work[w], batch{recs, evs})
		}
	}
	b.ResetTimer()
	var wg sync.WaitGroup
	for w := range work {
		wg.Go(func() {
			for _, bt := range work[w] {
				if err := fn(w, bt.recs, bt.evs); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	return per * benchWorkers * benchBatch
}

func perSecond(b *testing.B, events int) {
	b.ReportMetric(float64(events)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkAggregate measures exactly-once aggregation beside the raw
// Postgres ceiling (COPY + ledger insert + window upsert, no Kafka, no
// decoding, no quotas) and the naive design (one transaction per event).
func BenchmarkAggregate(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	ctx := context.Background()

	// The ceiling and Apply run 4 workers with disjoint tenants, as the
	// pipeline runs 4 partitions keyed by tenant.
	b.Run("ceiling-postgres-copy", func(b *testing.B) {
		db := pgtest.New(b)
		processed := inWorkers(b, rng, func(w int, recs []rollup.Record, evs []events.Event) error {
			return ceilingBatch(ctx, db, evs)
		})
		perSecond(b, processed)
	})

	b.Run("naive-tx-per-event", func(b *testing.B) {
		db := pgtest.New(b)
		evs, _ := benchEvents(rng, 2000, 0)
		var seq atomic.Int64
		b.SetParallelism(2)
		b.ResetTimer() // the database's creation is not the baseline's work
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				i := seq.Add(1)
				e := evs[i%int64(len(evs))]
				e.ID = fmt.Sprint(e.ID, "-", i)
				if err := naiveEvent(ctx, db, e); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.StopTimer()
		perSecond(b, b.N)
	})

	b.Run("apply-no-kafka", func(b *testing.B) {
		db := pgtest.New(b)
		perSecond(b, applyInWorkers(b, rng, db, noProperties))
	})

	// Meters: the same events with two properties, counted in their
	// implicit meter only (the baseline), then also in defined meters: a
	// plain sum, a sum grouped by a property of 1,000 distinct values and
	// a unique count of another (three defined meters, four per event);
	// then the grouped sum and the unique count only (three meters per
	// event, the implicit meter being the plain sum).
	b.Run("apply-properties-implicit-meter", func(b *testing.B) {
		db := pgtest.New(b)
		perSecond(b, applyInWorkers(b, rng, db, sparseProperties))
	})
	b.Run("apply-properties-3-meters", func(b *testing.B) {
		db := pgtest.New(b)
		defineBenchMeters(b, db, true)
		perSecond(b, applyInWorkers(b, rng, db, sparseProperties))
	})
	b.Run("apply-properties-grouped-and-unique", func(b *testing.B) {
		db := pgtest.New(b)
		defineBenchMeters(b, db, false)
		perSecond(b, applyInWorkers(b, rng, db, sparseProperties))
	})

	// The Postgres ceiling of the 3-meter path: ceilingBatch's work plus,
	// in the same statement, the rows the three defined meters of
	// apply-properties-3-meters need (a plain sum, a sum by project, a
	// unique count of users; hour, day and month windows each), in SQL
	// alone. Its ratio to ceiling-postgres-copy, measured beside it, is
	// the most the 3-meter ratio can be while each meter's windows are
	// Postgres rows written in the counting transaction.
	b.Run("ceiling-postgres-copy-sparse", func(b *testing.B) {
		db := pgtest.New(b)
		processed := inWorkersWith(b, rng, sparseProperties, func(w int, recs []rollup.Record, evs []events.Event) error {
			return ceilingBatch(ctx, db, evs)
		})
		perSecond(b, processed)
	})
	b.Run("ceiling-postgres-copy-3-meters", func(b *testing.B) {
		db := pgtest.New(b)
		processed := inWorkersWith(b, rng, sparseProperties, func(w int, recs []rollup.Record, evs []events.Event) error {
			return ceilingMetersBatch(ctx, db, evs)
		})
		perSecond(b, processed)
	})

	b.Run("pipeline-kafka", func(b *testing.B) {
		db := pgtest.New(b)
		kc := kafkatest.Start(b, kfake.GroupMinSessionTimeout(100*time.Millisecond))
		kc.CreateTopic(b, topics.UsageEvents, 4)
		w := kafkatest.NewWriter(kc.Brokers(), topics.UsageEvents)
		defer w.Close()
		total := b.N * benchBatch
		for sent := 0; sent < total; sent += benchBatch {
			_, recs := benchEvents(rng, benchBatch, 0)
			if err := w.Write(ctx, recs...); err != nil {
				b.Fatal(err)
			}
		}
		agg := rollup.New(db.Pool, rollup.Config{Group: "bench", Topic: topics.UsageEvents})
		c := consumer.New(consumer.Config{Brokers: kc.Brokers(), Topic: topics.UsageEvents, Group: "bench",
			BatchSize: benchBatch, BatchWait: 100 * time.Millisecond, SessionTimeout: time.Second}, agg, slog.New(slog.DiscardHandler), nil)
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		b.ResetTimer()
		go func() { _ = c.Run(cctx) }()
		for {
			var consumed int
			if err := db.Pool.QueryRow(ctx, `SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets`).Scan(&consumed); err != nil {
				b.Fatal(err)
			}
			if consumed >= total {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		b.StopTimer()
		perSecond(b, total)
	})
}

// defineBenchMeters defines, for each bench metric, a sum grouped by
// project, a unique count of users and, with plain, a plain sum.
func defineBenchMeters(b *testing.B, db *pgtest.DB, plain bool) {
	for _, metric := range []string{"api_calls", "tokens"} {
		ms := []accounts.Meter{
			{Name: metric + "_by_project", Metric: metric, Aggregation: "sum", GroupBy: []string{"project"}},
			{Name: metric + "_users", Metric: metric, Aggregation: "unique_count", Property: "user"},
		}
		if plain {
			ms = append(ms, accounts.Meter{Name: metric + "_total", Metric: metric, Aggregation: "sum"})
		}
		for _, m := range ms {
			if _, _, err := accounts.PutMeter(context.Background(), db.Pool, m); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// applyInWorkers applies b.N batches with rollup.Apply in benchWorkers
// goroutines, each on its own partition and tenants, and returns how many
// events they applied.
func applyInWorkers(b *testing.B, rng *rand.Rand, db *pgtest.DB, props propertyShape) int {
	ctx := context.Background()
	agg := rollup.New(db.Pool, rollup.Config{Group: "bench", Topic: topics.UsageEvents})
	next := make([]int64, benchWorkers)
	for i := range next {
		next[i] = -1
	}
	return inWorkersWith(b, rng, props, func(w int, recs []rollup.Record, _ []events.Event) error {
		for i := range recs {
			recs[i].Partition, recs[i].Offset = w, max(next[w], 0)+int64(i)
		}
		res, err := agg.Apply(ctx, w, next[w], recs)
		next[w] = res.NextOffset
		return err
	})
}

// naiveEvent is the design without batching: one transaction per event,
// a ledger insert and a counter update.
func naiveEvent(ctx context.Context, db *pgtest.DB, e events.Event) error {
	return pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO ledger_names (tenant, metric) VALUES ($1, $2) ON CONFLICT DO NOTHING`, e.Tenant, e.Metric); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `INSERT INTO ledger (id, id_text, ref, payload_hash, value, event_time, src_partition, src_offset)
			SELECT ledger_key($1, $2), ledger_id_text($2), n.ref, 0, $4, $5, 0, 0 FROM ledger_names n WHERE n.tenant = $1 AND n.metric = $3
			ON CONFLICT DO NOTHING`, e.Tenant, e.ID, e.Metric, e.Value, e.Time)
		if err != nil || tag.RowsAffected() == 0 {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO usage_windows (tenant, meter, granularity, window_start, value, events) VALUES ($1, $2, 'hour', $3, $4, 1)
			ON CONFLICT (tenant, meter, group_key, granularity, window_start) DO UPDATE SET value = usage_windows.value + EXCLUDED.value, events = usage_windows.events + 1`,
			e.Tenant, e.Metric, windows.Hour.Start(e.Time), e.Value)
		return err
	})
}

// ceilingBatch is the least work exactly-once needs: COPY the batch in,
// insert the new ids into the ledger, upsert windows of the new events.
func ceilingBatch(ctx context.Context, db *pgtest.DB, evs []events.Event) error {
	return pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `CREATE TEMP TABLE IF NOT EXISTS staging (tenant text, event_id text, metric text, value bigint, event_time timestamptz) ON COMMIT DELETE ROWS`); err != nil {
			return err
		}
		rows := make([][]any, len(evs))
		for i, e := range evs {
			rows[i] = []any{e.Tenant, e.ID, e.Metric, e.Value, e.Time}
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"staging"}, []string{"tenant", "event_id", "metric", "value", "event_time"}, pgx.CopyFromRows(rows)); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO ledger_names (tenant, metric) SELECT DISTINCT tenant, metric FROM staging
				ORDER BY 1, 2 ON CONFLICT DO NOTHING`); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `WITH new AS (
				INSERT INTO ledger (id, id_text, ref, payload_hash, value, event_time, src_partition, src_offset)
				SELECT ledger_key(s.tenant, s.event_id), ledger_id_text(s.event_id), n.ref, 0, s.value, s.event_time, 0, 0
				FROM staging s JOIN ledger_names n ON n.tenant = s.tenant AND n.metric = s.metric
				ON CONFLICT DO NOTHING RETURNING ref, value, event_time)
			INSERT INTO usage_windows (tenant, meter, granularity, window_start, value, events)
			SELECT n.tenant, n.metric, g, CASE g WHEN 'minute' THEN date_trunc('minute', event_time) WHEN 'hour' THEN date_trunc('hour', event_time)
				WHEN 'day' THEN date_trunc('day', event_time) ELSE date_trunc('month', event_time) END AS ws, sum(value), count(*)
			FROM new JOIN ledger_names n ON n.ref = new.ref,
				unnest(ARRAY['minute', 'hour', 'day', 'month']) AS g GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
			ON CONFLICT (tenant, meter, group_key, granularity, window_start) DO UPDATE
			SET value = usage_windows.value + EXCLUDED.value, events = usage_windows.events + EXCLUDED.events`)
		return err
	})
}

// ceilingMetersBatch is ceilingBatch plus the rows of three defined
// meters per metric in the same statement: a plain sum (<metric>_total),
// a sum by project (<metric>_by_project) and a unique count of users
// (<metric>_users: the batch's new (window, user) rows in meter_uniques,
// then each window's count of them), hour, day and month windows each.
func ceilingMetersBatch(ctx context.Context, db *pgtest.DB, evs []events.Event) error {
	return pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `CREATE TEMP TABLE IF NOT EXISTS staging_m (n bigint, tenant text, event_id text, metric text, value bigint, event_time timestamptz, project text, usr text) ON COMMIT DELETE ROWS`); err != nil {
			return err
		}
		rows := make([][]any, len(evs))
		for i, e := range evs {
			rows[i] = []any{int64(i), e.Tenant, e.ID, e.Metric, e.Value, e.Time, e.Properties["project"], e.Properties["user"]}
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"staging_m"}, []string{"n", "tenant", "event_id", "metric", "value", "event_time", "project", "usr"}, pgx.CopyFromRows(rows)); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO ledger_names (tenant, metric) SELECT DISTINCT tenant, metric FROM staging_m
				ORDER BY 1, 2 ON CONFLICT DO NOTHING`); err != nil {
			return err
		}
		const trunc = `CASE g WHEN 'minute' THEN date_trunc('minute', event_time) WHEN 'hour' THEN date_trunc('hour', event_time)
				WHEN 'day' THEN date_trunc('day', event_time) ELSE date_trunc('month', event_time) END`
		const upsert = ` ON CONFLICT (tenant, meter, group_key, granularity, window_start) DO UPDATE
			SET value = usage_windows.value + EXCLUDED.value, events = usage_windows.events + EXCLUDED.events RETURNING 1`
		_, err := tx.Exec(ctx, `WITH new AS (
				INSERT INTO ledger (id, id_text, ref, payload_hash, value, event_time, src_partition, src_offset)
				SELECT ledger_key(s.tenant, s.event_id), ledger_id_text(s.event_id), n.ref, 0, s.value, s.event_time, 0, s.n
				FROM staging_m s JOIN ledger_names n ON n.tenant = s.tenant AND n.metric = s.metric
				ON CONFLICT DO NOTHING RETURNING src_offset),
			c AS (SELECT s.* FROM new JOIN staging_m s ON s.n = new.src_offset),
			implicit AS (INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events)
				SELECT tenant, metric, '', g, `+trunc+` AS ws, sum(value), count(*)
				FROM c, unnest(ARRAY['minute', 'hour', 'day', 'month']) AS g GROUP BY 1, 2, 4, 5 ORDER BY 1, 2, 4, 5`+upsert+`),
			plain AS (INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events)
				SELECT tenant, metric || '_total', '', g, `+trunc+` AS ws, sum(value), count(*)
				FROM c, unnest(ARRAY['hour', 'day', 'month']) AS g GROUP BY 1, 2, 4, 5 ORDER BY 1, 2, 4, 5`+upsert+`),
			grouped AS (INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events)
				SELECT tenant, metric || '_by_project', '["' || project || '"]', g, `+trunc+` AS ws, sum(value), count(*)
				FROM c, unnest(ARRAY['hour', 'day', 'month']) AS g GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 4, 5, 3`+upsert+`),
			uw AS (SELECT tenant, metric || '_users' AS meter, g, `+trunc+` AS ws, usr, count(*) AS e
				FROM c, unnest(ARRAY['hour', 'day', 'month']) AS g GROUP BY 1, 2, 3, 4, 5),
			uq AS (INSERT INTO meter_uniques (tenant, meter, group_key, granularity, window_start, value)
				SELECT tenant, meter, '', g, ws, usr FROM uw ORDER BY 1, 2, 4, 5, 6
				ON CONFLICT DO NOTHING RETURNING tenant, meter, granularity, window_start),
			added AS (SELECT tenant, meter, granularity, window_start, count(*) AS n FROM uq GROUP BY 1, 2, 3, 4),
			users AS (INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events)
				SELECT w.tenant, w.meter, '', w.g, w.ws, coalesce(a.n, 0), w.e
				FROM (SELECT tenant, meter, g, ws, sum(e) AS e FROM uw GROUP BY 1, 2, 3, 4) w
				LEFT JOIN added a ON (a.tenant, a.meter, a.granularity, a.window_start) = (w.tenant, w.meter, w.g, w.ws)
				ORDER BY 1, 2, 4, 5`+upsert+`)
			SELECT (SELECT count(*) FROM implicit), (SELECT count(*) FROM plain), (SELECT count(*) FROM grouped), (SELECT count(*) FROM users)`)
		return err
	})
}

// BenchmarkCeilingLikePipeline is the Postgres ceiling (ceilingBatch: COPY
// + ledger + window upsert, 4 workers with disjoint tenants) on the events
// and batch sizes of the pipeline benchmark rather than the aggregator's:
// BENCH_PIPELINE_TENANTS tenants (default 100,000, a quarter per worker, as
// Kafka spreads them over 4 partitions), events at the current time, in
// batches of BENCH_PIPELINE_BATCH events (default 1,000; the pipeline
// benchmark passes the mean batch its aggregator committed). b.N counts
// batches. With many tenants nearly every event of a batch is its tenant's
// only one, so each brings its own minute, hour, day and month window rows:
// the same work per event the pipeline's Postgres does, which the 1,000
// tenants of ceiling-postgres-copy fold away.
func BenchmarkCeilingLikePipeline(b *testing.B) {
	batch := envInt(b, "BENCH_PIPELINE_BATCH", 1000)
	tenants := envInt(b, "BENCH_PIPELINE_TENANTS", 100000)
	rng := rand.New(rand.NewPCG(5, 6))
	ctx := context.Background()
	db := pgtest.New(b)
	per := (b.N + benchWorkers - 1) / benchWorkers
	work := make([][][]events.Event, benchWorkers)
	for w := range work {
		for range per {
			evs := make([]events.Event, batch)
			for i := range evs {
				evs[i] = events.Event{ID: events.NewID(), Tenant: fmt.Sprintf("w%d-tenant-%d", w, rng.IntN(max(tenants/benchWorkers, 1))),
					Metric: []string{"api_calls", "tokens"}[i%2], Value: 1 + rng.Int64N(100), Time: time.Now().UTC()}
			}
			work[w] = append(work[w], evs)
		}
	}
	b.ResetTimer()
	var wg sync.WaitGroup
	for w := range work {
		wg.Go(func() {
			for _, evs := range work[w] {
				if err := ceilingBatch(ctx, db, evs); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	perSecond(b, per*benchWorkers*batch)
	b.ReportMetric(float64(batch), "events/batch")
}

// envInt is the positive integer in the environment variable name, or def.
func envInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// BenchmarkBreachLatency offers 20k events/s to a running aggregator, with
// 2000 tenants on a plan whose limit each crosses, and reports the time
// from emitting the event that crosses a threshold to the breach row.
// Run it with -benchtime 1x.
func BenchmarkBreachLatency(b *testing.B) {
	for b.Loop() {
		benchBreachLatency(b)
	}
}

func benchBreachLatency(b *testing.B) {
	ctx := context.Background()
	db := pgtest.New(b)
	kc := kafkatest.Start(b, kfake.GroupMinSessionTimeout(100*time.Millisecond))
	for _, topic := range topics.All {
		kc.CreateTopic(b, topic, 4)
	}
	const tenants, limit, rate, seconds = 2000, 10, 20000, 5
	db.Exec(b, `INSERT INTO plans (name) VALUES ('bench')`)
	db.Exec(b, `INSERT INTO plan_quotas (plan, metric, quota_limit, period, burst_percent, hard, stripe_event_name) VALUES ('bench', 'api_calls', $1, 'month', 0, true, 'api_calls')`, limit)
	db.Exec(b, `INSERT INTO tenants (tenant, plan) SELECT 'tenant-' || g, 'bench' FROM generate_series(0, $1 - 1) g`, tenants)
	agg := rollup.New(db.Pool, rollup.Config{Group: "bench", Topic: topics.UsageEvents})
	c := consumer.New(consumer.Config{Brokers: kc.Brokers(), Topic: topics.UsageEvents, Group: "bench",
		BatchWait: 50 * time.Millisecond, SessionTimeout: time.Second}, agg, slog.New(slog.DiscardHandler), nil)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { _ = c.Run(cctx) }()
	p, err := events.NewProducer(events.ProducerConfig{Brokers: kc.Brokers(), Linger: time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	// Warm up: wait for the group to form.
	if err := p.Emit(ctx, events.New("warmup", "api_calls", 1)); err != nil {
		b.Fatal(err)
	}
	for {
		var n int
		_ = db.Pool.QueryRow(ctx, `SELECT count(*) FROM ledger`).Scan(&n)
		if n == 1 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The k-th event of a tenant crosses: 8th warning, 10th exceeded, 11th blocked.
	crossing := map[int]string{8: "warning", 10: "exceeded", 11: "blocked"}
	emitted := map[string]time.Time{} // tenant/threshold → when the crossing event was acknowledged
	count := make([]int, tenants)
	const tick = 10 * time.Millisecond
	perTick := rate * int(tick) / int(time.Second)
	t := time.NewTicker(tick)
	defer t.Stop()
	next := 0
	for range seconds * int(time.Second/tick) {
		<-t.C
		evs := make([]events.Event, perTick)
		for i := range evs {
			tenant := next % tenants
			next++
			evs[i] = events.New(fmt.Sprint("tenant-", tenant), "api_calls", 1)
		}
		sent := time.Now()
		if err := p.Emit(ctx, evs...); err != nil {
			b.Fatal(err)
		}
		for _, e := range evs {
			var i int
			_, _ = fmt.Sscanf(e.Tenant, "tenant-%d", &i)
			count[i]++
			if th, ok := crossing[count[i]]; ok {
				emitted[e.Tenant+"/"+th] = sent
			}
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int
		_ = db.Pool.QueryRow(ctx, `SELECT count(*) FROM quota_breaches`).Scan(&n)
		if n >= len(emitted) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	rows, err := db.Pool.Query(ctx, `SELECT tenant || '/' || threshold, detected_at FROM quota_breaches`)
	if err != nil {
		b.Fatal(err)
	}
	var lat []time.Duration
	for rows.Next() {
		var k string
		var at time.Time
		if err := rows.Scan(&k, &at); err != nil {
			b.Fatal(err)
		}
		if sent, ok := emitted[k]; ok {
			lat = append(lat, max(at.Sub(sent), 0))
		}
	}
	rows.Close()
	if len(lat) < len(emitted) {
		b.Fatalf("%d of %d breaches detected", len(lat), len(emitted))
	}
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(pct(0.5), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(float64(len(lat)), "breaches")
	b.ReportMetric(rate, "offered-events/s")
}

// BenchmarkMeterStorage reports the rows and bytes each meter kind adds to
// Postgres per event (usage_windows, meter_uniques, meter_group_keys, heap
// and indexes), beside the implicit meter alone, from the same events
// (two properties: a project of 1,000 values, a user of 10,000).
func BenchmarkMeterStorage(b *testing.B) {
	rng := rand.New(rand.NewPCG(3, 4))
	ctx := context.Background()
	kinds := []struct {
		name  string
		meter *accounts.Meter
	}{
		{"implicit-only", nil},
		{"sum", &accounts.Meter{Aggregation: "sum"}},
		{"sum-by-project", &accounts.Meter{Aggregation: "sum", GroupBy: []string{"project"}}},
		{"count", &accounts.Meter{Aggregation: "count"}},
		{"max", &accounts.Meter{Aggregation: "max"}},
		{"latest", &accounts.Meter{Aggregation: "latest"}},
		{"unique_count-users", &accounts.Meter{Aggregation: "unique_count", Property: "user"}},
	}
	for _, k := range kinds {
		b.Run(k.name, func(b *testing.B) {
			db := pgtest.New(b)
			if k.meter != nil {
				for _, metric := range []string{"api_calls", "tokens"} {
					m := *k.meter
					m.Name, m.Metric = metric+"_m", metric
					if _, _, err := accounts.PutMeter(ctx, db.Pool, m); err != nil {
						b.Fatal(err)
					}
				}
			}
			processed := applyInWorkers(b, rng, db, sparseProperties)
			var rows, bytes, ledgerBytes int64
			if err := db.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM usage_windows) + (SELECT count(*) FROM meter_uniques) + (SELECT count(*) FROM meter_group_keys),
					pg_total_relation_size('usage_windows') + pg_total_relation_size('meter_uniques') + pg_total_relation_size('meter_group_keys'),
					pg_total_relation_size('ledger') + pg_total_relation_size('ledger_overflow') +
						pg_total_relation_size('ledger_batches') + pg_total_relation_size('ledger_recorded')`).Scan(&rows, &bytes, &ledgerBytes); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(rows)/float64(processed), "rows/event")
			b.ReportMetric(float64(bytes)/float64(processed), "bytes/event")
			// The dedup ledger (heap, primary key and BRIN index, its
			// overflow, its batch rows and recorded_at side rows), the same
			// for every meter kind: one row per counted event. Its (tenant,
			// metric) names, one row per pair, are not per event.
			b.ReportMetric(float64(ledgerBytes)/float64(processed), "ledger-bytes/event")
			perSecond(b, processed)
		})
	}
}
