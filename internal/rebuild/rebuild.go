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
//
// Billing periods: a tenant's month windows are its billing periods, and
// the replay places each event by the tenant's billing schedule as it
// stands, as live counting did (a change of cycle is recorded at least
// billingcycle.ChangeMargin before it takes effect, so no counted event
// changes period). A period window that starts before From's month keeps
// its live value, like any window starting before it.
package rebuild

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/usagemeter/metering/internal/kafkaauth"
	"github.com/usagemeter/metering/internal/kafkalog"
	"github.com/usagemeter/metering/internal/recordsign"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/auditlog"
	"github.com/usagemeter/metering/internal/storage/deadletters"
	"github.com/usagemeter/metering/internal/storage/usagedata"
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
	// DefaultPlan is the aggregator's DEFAULT_PLAN: the rebuilt rollup
	// judges tenants without a plan assignment by it, as the live one.
	DefaultPlan string
	// AdjustmentSignatures is the aggregator's: adjustment records are
	// verified with the same keys as live, so signed ones are reproduced
	// and unverified ones stay dead letters.
	AdjustmentSignatures recordsign.Policy
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Meters, when not empty, limits the comparison and the swap to these
	// meters' windows (defined meters, or metrics' implicit meters): a new
	// or changed meter is backfilled from the log, every other meter's
	// windows stay as they are.
	Meters []string
	// DryRun compares without swapping.
	DryRun bool
	// Logger receives the rebuild's progress; nil discards it.
	Logger *slog.Logger
	// By audits a swap as windows.rebuild in its transaction (target
	// windows:<first month rebuilt>; after: the months' start, the meters
	// and how many windows changed); the zero By audits nothing.
	By auditlog.By
}

// ErrTooOld means the rebuild would recompute windows older than the
// aggregator can accept events for.
var ErrTooOld = errors.New("windows before the acceptance window cannot be rebuilt")

// Change is one window whose value differs between live and rebuilt.
type Change = usagedata.ShadowChange

// Report says what a rebuild found and did.
type Report struct {
	From time.Time
	// Meters are the meters rebuilt; empty for all.
	Meters   []string
	Records  int64
	Windows  int
	Changes  []Change
	Swapped  bool
	Offsets  map[int]int64
	Duration time.Duration
}

const maxCatchUps = 5

// replayBatch is how many records one shadow transaction applies.
const replayBatch = 10000

// Run performs the rebuild.
func Run(ctx context.Context, pool *pgxpool.Pool, opt Options) (Report, error) {
	started := time.Now()
	rep := Report{From: windows.Month.Start(opt.From), Meters: opt.Meters}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.MaxLag <= 0 {
		opt.MaxLag = rollup.DefaultMaxLag
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if oldest := rollup.OldestAcceptable(opt.Now(), opt.Horizon, opt.MaxLag); rep.From.Before(oldest) {
		return rep, fmt.Errorf("%w: --from's month starts %s, and events before %s (horizon %s plus AGGREGATOR_MAX_LAG %s) are dead letters now; rebuild from %s or later",
			ErrTooOld, rep.From.Format(time.RFC3339), oldest.UTC().Format(time.RFC3339), opt.Horizon, opt.MaxLag,
			windows.Month.End(windows.Month.Start(oldest)).Format(time.RFC3339))
	}
	if err := checkMeters(ctx, pool, opt.Meters); err != nil {
		return rep, err
	}
	sh, err := openShadow(ctx, pool, opt)
	if err != nil {
		return rep, err
	}
	defer sh.close(ctx)
	positions := map[int]int64{} // next offset per partition in the shadow
	for attempt := 0; ; attempt++ {
		done, err := sh.round(ctx, opt, &rep, positions)
		if err != nil {
			return rep, err
		}
		if done {
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

// ErrUnknownMeter means --meter names neither a defined meter nor a
// metric with counted usage.
var ErrUnknownMeter = errors.New("unknown meter")

// checkMeters refuses a name that is neither a defined meter nor the
// implicit meter of a metric with counted usage: a typo would rebuild
// nothing and say so only by an empty report.
func checkMeters(ctx context.Context, pool *pgxpool.Pool, names []string) error {
	for _, name := range names {
		_, err := accounts.GetMeter(ctx, pool, name)
		if err == nil {
			continue
		}
		if !errors.Is(err, accounts.ErrNotFound) {
			return err
		}
		counted, err := usagedata.ImplicitMeterCounted(ctx, pool, name)
		if err != nil {
			return err
		}
		if !counted {
			return fmt.Errorf("%w %q: no meter of that name is defined (GET /v1/admin/meters lists them) and no metric of that name was counted", ErrUnknownMeter, name)
		}
	}
	return nil
}

// shadow is a rebuild's scratch schema and the aggregator that counts
// into it.
type shadow struct {
	schema string
	live   *pgxpool.Pool
	pool   *pgxpool.Pool // connections with the schema first on the search_path
	agg    *rollup.Aggregator
	log    *slog.Logger
}

// openShadow creates a shadow schema and connects an aggregator to it.
func openShadow(ctx context.Context, live *pgxpool.Pool, opt Options) (*shadow, error) {
	sh := &shadow{schema: "rebuild_" + randomSuffix(), live: live, log: opt.Logger}
	if err := usagedata.CreateShadow(ctx, live, sh.schema); err != nil {
		sh.close(ctx)
		return nil, err
	}
	cfg, err := pgxpool.ParseConfig(opt.DatabaseURL)
	if err != nil {
		sh.close(ctx)
		return nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = sh.schema + ",public"
	if sh.pool, err = pgxpool.NewWithConfig(ctx, cfg); err != nil {
		sh.close(ctx)
		return nil, fmt.Errorf("connecting for the shadow schema: %w", err)
	}
	sh.agg = rollup.New(sh.pool, rollup.Config{
		Group: "rebuild", Topic: opt.Topic, Horizon: opt.Horizon, MaxLag: opt.MaxLag, DefaultPlan: opt.DefaultPlan, Now: opt.Now,
		AdjustmentSignatures: opt.AdjustmentSignatures, Logger: slog.New(slog.DiscardHandler),
	})
	return sh, nil
}

// close disconnects from the shadow schema and drops it.
func (sh *shadow) close(ctx context.Context) {
	if sh.pool != nil {
		sh.pool.Close()
	}
	if err := usagedata.DropShadow(context.WithoutCancel(ctx), sh.live, sh.schema); err != nil {
		sh.log.Warn("dropping shadow schema", "schema", sh.schema, "err", err)
	}
}

// round replays up to the live consumer's offsets, compares, and swaps
// unless it is a dry run. It reports whether the rebuild is done: a dry
// run is after one round, a rebuild once it swapped (the live offsets had
// not moved since the round read them).
func (sh *shadow) round(ctx context.Context, opt Options, rep *Report, positions map[int]int64) (bool, error) {
	target, err := usagedata.Offsets(ctx, sh.live, opt.Group, opt.Topic)
	if err != nil {
		return false, err
	}
	n, err := sh.replay(ctx, opt, positions, target, rep.From.Add(-opt.Horizon))
	if err != nil {
		return false, err
	}
	rep.Records += n
	rep.Offsets = target
	changes, total, err := usagedata.CompareShadowWith(ctx, sh.live, sh.schema, rep.From, usagedata.ShadowOptions{Meters: opt.Meters})
	if err != nil {
		return false, err
	}
	rep.Changes, rep.Windows = changes, total
	if opt.DryRun {
		return true, nil
	}
	rep.Swapped, err = sh.swap(ctx, opt, rep.From, target, len(changes))
	return rep.Swapped, err
}

func randomSuffix() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// replay applies every partition's records from positions (or from the
// first record at scanFrom) up to target into the shadow.
func (sh *shadow) replay(ctx context.Context, opt Options, positions, target map[int]int64, scanFrom time.Time) (int64, error) {
	cluster := kafkalog.Cluster{Brokers: opt.Brokers, Security: opt.Security}
	var total int64
	for p, end := range target {
		start, seen := positions[p]
		if !seen {
			var err error
			if start, err = cluster.OffsetAt(ctx, opt.Topic, p, scanFrom); err != nil {
				return total, err
			}
			positions[p] = start
		}
		if start >= end {
			continue
		}
		from := start // where the shadow's stored offset is
		if !seen {
			from = -1 // nothing stored yet
		}
		n, err := sh.replayPartition(ctx, cluster, opt.Topic, p, from, start, end)
		total += n
		if err != nil {
			return total, err
		}
		positions[p] = end
	}
	return total, nil
}

// replayPartition applies partition p's records from start up to end into
// the shadow, whose stored offset for p is from (-1: none yet), and
// returns how many records it applied or left out. The records the live
// aggregator dead-lettered are left out: its verdict at the time stands (a
// record timestamp a producer set in the future would pass the rebuild's
// later clock). They are read once for the whole range.
func (sh *shadow) replayPartition(ctx context.Context, cluster kafkalog.Cluster, topic string, p int, from, start, end int64) (int64, error) {
	refused, err := deadletters.RefusedOffsets(ctx, sh.live, topic, p, start, end-1)
	if err != nil {
		return 0, fmt.Errorf("reading the live dead letters: %w", err)
	}
	var n int64
	err = cluster.Read(ctx, topic, p, kafkalog.ReadOptions{From: start, End: end, BatchSize: replayBatch}, func(b kafkalog.Batch) error {
		recs := b.Records
		if len(refused) > 0 {
			recs = slices.DeleteFunc(recs, func(r rollup.Record) bool { return refused[r.Offset] })
		}
		res, err := sh.agg.Apply(ctx, p, from, recs)
		if err != nil {
			return fmt.Errorf("replaying partition %d: %w", p, err)
		}
		from = res.NextOffset
		n += int64(len(b.Records))
		return nil
	})
	return n, err
}

// swap replaces live windows from from on with the shadow's, if the live
// offsets still equal target; it reports whether it swapped.
func (sh *shadow) swap(ctx context.Context, opt Options, from time.Time, target map[int]int64, changed int) (bool, error) {
	swapped := false
	err := pgx.BeginFunc(ctx, sh.live, func(tx pgx.Tx) error {
		// Locking the offsets stops live batches of this group from
		// committing until the swap is done.
		now, err := usagedata.LockOffsets(ctx, tx, opt.Group, opt.Topic)
		if err != nil || !maps.Equal(now, target) {
			return err
		}
		if err := usagedata.SwapShadowWith(ctx, tx, sh.schema, from, usagedata.ShadowOptions{Meters: opt.Meters}); err != nil {
			return err
		}
		swapped = true
		if !opt.By.Audited() {
			return nil
		}
		meters := opt.Meters
		if meters == nil {
			meters = []string{} // every meter
		}
		after, err := auditlog.JSON(map[string]any{"from": from.UTC(), "meters": meters, "windows_changed": changed})
		if err != nil {
			return err
		}
		_, err = auditlog.Append(ctx, tx, auditlog.Entry{Actor: opt.By.Actor, Action: "windows.rebuild",
			Target: "windows:" + from.UTC().Format("2006-01"), After: after, Note: opt.By.Note})
		return err
	})
	return swapped, err
}
