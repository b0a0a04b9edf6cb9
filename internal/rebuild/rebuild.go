// Package rebuild recomputes usage windows from the Kafka log: it replays
// usage.events into a shadow schema with the same aggregation code the
// live consumer uses, compares the shadow windows with the live ones, and
// swaps the changed range in one transaction.
//
// Invariant: the swap happens only when the shadow has consumed exactly
// up to the live consumer's committed offsets, checked under a lock on
// those offsets, so no event is counted twice or lost by the swap; the
// live ledger (the dedup memory) is never touched. Held conflicts that an
// operator counted are added to the rebuilt windows (the log alone does
// not say so), under a lock that keeps new ones from slipping between.
//
// Time: the replay judges event times with the live aggregator's rule
// (the record timestamp clamped into [now - MaxLag, now]), so a rebuild
// covers only windows whose events the aggregator can still accept:
// From's month must start no earlier than now - MaxLag - Horizon
// (ErrTooOld). Older windows keep their live values; the ledger may have
// forgotten their ids, and their records' own timestamps are not trusted.
// A record the live aggregator dead-lettered stays uncounted (its verdict
// was given at the clock of its time, which the rebuild cannot replay).
package rebuild

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/metering/internal/kafkaauth"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/windows"
)

// Options of a rebuild.
type Options struct {
	DatabaseURL string
	Brokers     []string
	// Security is the brokers' TLS and SASL; nil is plaintext.
	Security *kafkaauth.Security
	Topic    string
	// Group is the live consumer group whose offsets bound the replay.
	Group string
	// From: windows starting at or after From's month are recomputed.
	From time.Time
	// Horizon: the log is replayed from From − Horizon so that ids seen
	// before From are remembered, as the live ledger remembers them.
	Horizon time.Duration
	// MaxLag is the aggregator's AGGREGATOR_MAX_LAG; 0 means the default.
	MaxLag time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// DryRun compares without swapping.
	DryRun bool
	Logger *slog.Logger
}

// ErrTooOld means the rebuild would recompute windows older than the
// aggregator can accept events for.
var ErrTooOld = errors.New("windows before the acceptance window cannot be rebuilt")

// Change is one window whose value differs between live and rebuilt.
type Change struct {
	Tenant, Metric, Granularity string
	Start                       time.Time
	Before, After               string // values; "" when the window is absent
	EventsBefore, EventsAfter   int64
}

// Report says what a rebuild found and did.
type Report struct {
	From     time.Time
	Records  int64
	Windows  int
	Changes  []Change
	Swapped  bool
	Offsets  map[int]int64
	Duration time.Duration
}

const maxCatchUps = 5

// Run performs the rebuild.
func Run(ctx context.Context, pool *pgxpool.Pool, opt Options) (Report, error) {
	started := time.Now()
	rep := Report{From: windows.Month.Start(opt.From)}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.MaxLag <= 0 {
		opt.MaxLag = rollup.DefaultMaxLag
	}
	if oldest := rollup.OldestAcceptable(opt.Now(), opt.Horizon, opt.MaxLag); rep.From.Before(oldest) {
		return rep, fmt.Errorf("%w: --from's month starts %s, and events before %s (horizon %s plus AGGREGATOR_MAX_LAG %s) are dead letters now; rebuild from %s or later",
			ErrTooOld, rep.From.Format(time.RFC3339), oldest.UTC().Format(time.RFC3339), opt.Horizon, opt.MaxLag,
			windows.Month.End(windows.Month.Start(oldest)).Format(time.RFC3339))
	}
	schema := "rebuild_" + randomSuffix()
	if err := createShadow(ctx, pool, schema); err != nil {
		return rep, err
	}
	defer func() {
		if _, err := pool.Exec(context.WithoutCancel(ctx), "DROP SCHEMA IF EXISTS "+schema+" CASCADE"); err != nil {
			opt.Logger.Warn("dropping shadow schema", "schema", schema, "err", err)
		}
	}()
	shadowCfg, err := pgxpool.ParseConfig(opt.DatabaseURL)
	if err != nil {
		return rep, fmt.Errorf("DATABASE_URL: %w", err)
	}
	shadowCfg.ConnConfig.RuntimeParams["search_path"] = schema + ",public"
	shadowPool, err := pgxpool.NewWithConfig(ctx, shadowCfg)
	if err != nil {
		return rep, fmt.Errorf("connecting for the shadow schema: %w", err)
	}
	defer shadowPool.Close()
	agg := rollup.New(shadowPool, rollup.Config{
		Group: "rebuild", Topic: opt.Topic, Horizon: opt.Horizon, MaxLag: opt.MaxLag, Now: opt.Now, Logger: slog.New(slog.DiscardHandler),
	})

	positions := map[int]int64{} // next offset per partition in the shadow
	for attempt := 0; ; attempt++ {
		target, err := liveOffsets(ctx, pool, opt.Group, opt.Topic)
		if err != nil {
			return rep, err
		}
		n, err := replay(ctx, pool, opt, agg, positions, target, rep.From.Add(-opt.Horizon))
		if err != nil {
			return rep, err
		}
		rep.Records += n
		rep.Offsets = target
		changes, total, err := compare(ctx, pool, schema, rep.From)
		if err != nil {
			return rep, err
		}
		rep.Changes, rep.Windows = changes, total
		if opt.DryRun {
			break
		}
		swapped, err := swap(ctx, pool, schema, opt, rep.From, target)
		if err != nil {
			return rep, err
		}
		if swapped {
			rep.Swapped = true
			break
		}
		if attempt == maxCatchUps {
			return rep, errors.New("the live consumer kept moving; stop it or retry at a quieter time")
		}
		opt.Logger.InfoContext(ctx, "live offsets moved during the rebuild; catching up")
	}
	rep.Duration = time.Since(started)
	return rep, nil
}

func randomSuffix() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// createShadow makes a schema with empty copies of the tables one batch writes.
func createShadow(ctx context.Context, pool *pgxpool.Pool, schema string) error {
	stmts := []string{"CREATE SCHEMA " + schema}
	for _, t := range []string{"ledger", "ledger_conflicts", "usage_windows", "consumer_offsets", "usage_corrections", "quota_breaches", "outbox", "usage_dlq"} {
		stmts = append(stmts, fmt.Sprintf("CREATE TABLE %s.%s (LIKE public.%s INCLUDING ALL)", schema, t, t))
	}
	for _, s := range stmts {
		if _, err := pool.Exec(ctx, s); err != nil {
			return fmt.Errorf("creating the shadow schema: %w", err)
		}
	}
	return nil
}

// offsetsQuery selects a group's next offset per partition.
const offsetsQuery = `SELECT partition, next_offset FROM consumer_offsets WHERE consumer_group = $1 AND topic = $2`

// liveOffsets returns the live consumer's next offset per partition.
func liveOffsets(ctx context.Context, pool *pgxpool.Pool, group, topic string) (map[int]int64, error) {
	return queryOffsets(ctx, pool, offsetsQuery, group, topic)
}

// queryOffsets runs a (partition, next_offset) query on q.
func queryOffsets(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, sql string, args ...any) (map[int]int64, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("reading live offsets: %w", err)
	}
	out := map[int]int64{}
	for rows.Next() {
		var p int
		var o int64
		if err := rows.Scan(&p, &o); err != nil {
			rows.Close()
			return nil, fmt.Errorf("reading live offsets: %w", err)
		}
		out[p] = o
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading live offsets: %w", err)
	}
	return out, nil
}

// replay applies every partition's records from positions (or from the
// first record at scanFrom) up to target into the shadow.
func replay(ctx context.Context, live *pgxpool.Pool, opt Options, agg *rollup.Aggregator, positions, target map[int]int64, scanFrom time.Time) (int64, error) {
	var total int64
	for p, end := range target {
		start, seen := positions[p]
		if !seen {
			var err error
			if start, err = offsetAt(ctx, opt, p, scanFrom); err != nil {
				return total, err
			}
			positions[p] = start
		}
		if start >= end {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: opt.Brokers, Dialer: opt.Security.Dialer(), Topic: opt.Topic, Partition: p, MinBytes: 1, MaxBytes: 16 << 20, MaxWait: 100 * time.Millisecond})
		if err := r.SetOffset(start); err != nil {
			r.Close()
			return total, fmt.Errorf("seeking partition %d: %w", p, err)
		}
		from := start // where the shadow's stored offset is
		if !seen {
			from = -1 // nothing stored yet
		}
		var batch []rollup.Record
		flush := func() error {
			if len(batch) == 0 {
				return nil
			}
			n := int64(len(batch))
			if err := dropRefused(ctx, live, opt.Topic, p, &batch); err != nil {
				return err
			}
			res, err := agg.Apply(ctx, p, from, batch)
			if err != nil {
				return fmt.Errorf("replaying partition %d: %w", p, err)
			}
			from = res.NextOffset
			total += n
			batch = batch[:0]
			return nil
		}
		next := start
		for next < end {
			m, err := r.FetchMessage(ctx)
			if err != nil {
				r.Close()
				return total, fmt.Errorf("reading partition %d at %d: %w", p, next, err)
			}
			if m.Offset >= end {
				break
			}
			batch = append(batch, rollup.Record{Partition: m.Partition, Offset: m.Offset, Key: m.Key, Value: m.Value, Time: m.Time})
			next = m.Offset + 1
			if len(batch) == 10000 {
				if err := flush(); err != nil {
					r.Close()
					return total, err
				}
			}
		}
		err := flush()
		r.Close()
		if err != nil {
			return total, err
		}
		positions[p] = end
	}
	return total, nil
}

// dropRefused removes from batch the records the live aggregator
// dead-lettered: its verdict at the time stands (a record timestamp a
// producer set in the future would pass the rebuild's later clock).
func dropRefused(ctx context.Context, live *pgxpool.Pool, topic string, p int, batch *[]rollup.Record) error {
	b := *batch
	rows, err := live.Query(ctx, `SELECT source_offset FROM usage_dlq
		WHERE source_topic = $1 AND source_partition = $2 AND source_offset BETWEEN $3 AND $4`, topic, p, b[0].Offset, b[len(b)-1].Offset)
	if err != nil {
		return fmt.Errorf("reading the live dead letters of partition %d: %w", p, err)
	}
	refused := map[int64]bool{}
	for rows.Next() {
		var o int64
		if err := rows.Scan(&o); err != nil {
			rows.Close()
			return fmt.Errorf("reading the live dead letters of partition %d: %w", p, err)
		}
		refused[o] = true
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("reading the live dead letters of partition %d: %w", p, err)
	}
	if len(refused) > 0 {
		*batch = slices.DeleteFunc(b, func(r rollup.Record) bool { return refused[r.Offset] })
	}
	return nil
}

// offsetAt returns the first offset of partition p at or after t.
func offsetAt(ctx context.Context, opt Options, p int, t time.Time) (int64, error) {
	conn, err := opt.Security.Dialer().DialLeader(ctx, "tcp", opt.Brokers[0], opt.Topic, p)
	if err != nil {
		return 0, fmt.Errorf("dialing partition %d: %w", p, err)
	}
	defer conn.Close()
	first, err := conn.ReadFirstOffset()
	if err != nil {
		return 0, fmt.Errorf("first offset of partition %d: %w", p, err)
	}
	off, err := conn.ReadOffset(t)
	if err != nil {
		return first, nil //nolint:nilerr // no record at or after t: start at the first one
	}
	return max(off, first), nil
}

// rebuilt selects the rebuilt windows: the shadow's, plus the held
// conflicts operators counted (live), in every granularity. Counted
// conflicts follow the live rule: per (tenant, id, metric, event time)
// the maximum of the copies counted there, over the shadow's counted
// event when it has that metric and time (adding the difference, no
// event), else on their own (adding the maximum and one event); never
// their sum. The replay raises the shadow's counted event by resends of
// its metric and time, so a counted conflict recorded before resolutions
// existed is not added twice.
func rebuilt(schema string) string {
	return fmt.Sprintf(`(SELECT tenant, metric, granularity, window_start, sum(value) AS value, sum(events)::bigint AS events, max(updated_at) AS updated_at
		FROM (SELECT tenant, metric, granularity, window_start, value, events, updated_at FROM %[1]s.usage_windows
			UNION ALL
			SELECT c.tenant, c.metric, g.g, date_trunc(g.g, c.event_time AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', c.value, c.events, now()
			FROM (SELECT k.tenant, k.metric, k.event_time, greatest(max(k.value) - coalesce(l.value, 0), 0) AS value,
					CASE WHEN l.value IS NULL THEN 1 ELSE 0 END AS events
				FROM public.ledger_conflicts k
				LEFT JOIN %[1]s.ledger l ON l.tenant = k.tenant AND l.event_id = k.event_id AND l.metric = k.metric AND l.event_time = k.event_time
				WHERE k.resolution = 'counted'
				GROUP BY k.tenant, k.event_id, k.metric, k.event_time, l.value) c
			CROSS JOIN (VALUES ('minute'), ('hour'), ('day'), ('month')) AS g(g)
			WHERE c.value > 0 OR c.events > 0) u
		GROUP BY tenant, metric, granularity, window_start)`, schema)
}

// compare returns the windows that differ between live and shadow from
// from on, and how many windows it compared.
func compare(ctx context.Context, pool *pgxpool.Pool, schema string, from time.Time) ([]Change, int, error) {
	rows, err := pool.Query(ctx, fmt.Sprintf(`SELECT coalesce(l.tenant, s.tenant), coalesce(l.metric, s.metric), coalesce(l.granularity, s.granularity),
			coalesce(l.window_start, s.window_start), coalesce(l.value::text, ''), coalesce(s.value::text, ''),
			coalesce(l.events, 0), coalesce(s.events, 0), (l.value IS DISTINCT FROM s.value OR l.events IS DISTINCT FROM s.events)
		FROM (SELECT * FROM public.usage_windows WHERE window_start >= $1) l
		FULL JOIN (SELECT * FROM %s r WHERE window_start >= $1) s
			USING (tenant, metric, granularity, window_start)
		ORDER BY 1, 2, 3, 4`, rebuilt(schema)), from)
	if err != nil {
		return nil, 0, fmt.Errorf("comparing windows: %w", err)
	}
	var changes []Change
	total := 0
	for rows.Next() {
		var c Change
		var differs bool
		if err := rows.Scan(&c.Tenant, &c.Metric, &c.Granularity, &c.Start, &c.Before, &c.After, &c.EventsBefore, &c.EventsAfter, &differs); err != nil {
			rows.Close()
			return nil, 0, fmt.Errorf("comparing windows: %w", err)
		}
		total++
		if differs {
			changes = append(changes, c)
		}
	}
	return changes, total, rows.Err()
}

// swap replaces live windows from from on with the shadow's, if the live
// offsets still equal target; it reports whether it swapped.
func swap(ctx context.Context, pool *pgxpool.Pool, schema string, opt Options, from time.Time, target map[int]int64) (bool, error) {
	swapped := false
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		// Locking the offsets stops live batches of this group from
		// committing until the swap is done.
		now, err := queryOffsets(ctx, tx, offsetsQuery+" FOR UPDATE", opt.Group, opt.Topic)
		if err != nil {
			return err
		}
		if len(now) != len(target) {
			return nil
		}
		for p, o := range now {
			if target[p] != o {
				return nil
			}
		}
		// No conflict may be counted between the comparison's read of
		// counted conflicts and the swap.
		if _, err := tx.Exec(ctx, `LOCK TABLE public.ledger_conflicts IN EXCLUSIVE MODE`); err != nil {
			return fmt.Errorf("locking conflicts for the swap: %w", err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM public.usage_windows WHERE window_start >= $1`, from); err != nil {
			return fmt.Errorf("swapping windows: %w", err)
		}
		if _, err := tx.Exec(ctx, fmt.Sprintf(`INSERT INTO public.usage_windows (tenant, metric, granularity, window_start, value, events, updated_at)
			SELECT tenant, metric, granularity, window_start, value, events, updated_at FROM %s r WHERE window_start >= $1`, rebuilt(schema)), from); err != nil {
			return fmt.Errorf("swapping windows: %w", err)
		}
		swapped = true
		return nil
	})
	return swapped, err
}
