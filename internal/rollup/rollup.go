// Package rollup applies batches of usage.events records to Postgres:
// dedup ledger, usage windows, consumer offset, quota breaches, spend
// thresholds reached by the projected bill (spend_breaches, for tenants
// whose plan sets spend thresholds), dead letters and outbox rows, all in
// ONE transaction per batch.
//
// Invariant: a record's effects are committed exactly once, together with
// the offset after it. The offset update is a compare-and-set on the
// offset the batch started from, so a member that lost its partition in a
// rebalance cannot commit over the new owner (ErrFenced), and the ledger's
// key on (tenant, id) makes a resent event count once whatever path it
// took. No record's bytes can fail a batch: a record that cannot be
// counted (null, not UTF-8, NUL or control characters anywhere, huge)
// becomes a dead letter that keeps its key, value and headers byte for
// byte, with only sanitised text in text columns, and the partition moves
// on (TestApplyHostileRecordsProperty, FuzzApplyHostileRecords).
//
// Every countable event counts in its metric's implicit meter and in each
// defined meter it matches (meterset: the definitions this transaction
// sees), per group (TestMetersMatchGroundTruth,
// TestMeterChangesApplyToLaterBatches).
//
// A resend of a counted (tenant, id) with another payload never lowers
// usage: when only the value differs, the counted value becomes the
// larger of the two, the difference added once under the ledger row's
// lock (TestRaisesAreExactlyOnceWhateverTheBatches,
// TestConcurrentRaisesOfOneEvent); otherwise it is held, counted only
// when an operator says so (TestHeldConflictsWaitForAnOperator). Event
// times are judged at the record timestamp clamped into [now - MaxLag,
// now], never at a producer's timestamp alone
// (TestEventTimeJudgedByATrustedClock), and LedgerCutoff is before every
// event time that clock can accept (TestLedgerCutoffIsBeforeEveryAcceptableEvent).
//
// An adjustment record (header kind: adjustment) is applied only when its
// HMAC signature verifies under Config.AdjustmentSignatures, before its
// value is decoded; any other is a dead letter of class unverified, also
// when replayed from the dead-letter queue, and never changes a window
// (TestUnverifiedAdjustmentsAreDeadLetters).
//
// The records the rollup could not count wait in the usage dead-letter
// queue, which on-call lists, replays or discards through DeadLetters
// (deadletters.go), as the biller's queue is administered in stripesync.
package rollup

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"math/bits"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/billingcycle"
	"github.com/usagemeter/metering/internal/meterset"
	"github.com/usagemeter/metering/internal/quota"
	"github.com/usagemeter/metering/internal/record"
	"github.com/usagemeter/metering/internal/recordsign"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/windows"
)

// ErrFenced means the partition's stored offset is not where this batch
// started: another consumer owns the partition now.
var ErrFenced = errors.New("partition offset moved: another consumer owns this partition")

// Record is one record of usage.events. Key, Value and Headers may hold
// any bytes at all; a nil Value is a tombstone.
type Record = record.Record

// Header is one record header, kept byte for byte in dead letters.
type Header = record.Header

// Config of an Aggregator.
type Config struct {
	// Group names the consumer (offsets are stored per group).
	Group string
	// Topic is the source topic, usage.events.
	Topic string
	// Horizon is the dedup horizon: older events are dead letters.
	Horizon time.Duration
	// MaxLag bounds how far back a record's timestamp is trusted (see
	// clocks); 0 means DefaultMaxLag.
	MaxLag time.Duration
	// ConflictAlertThreshold: held and raised conflicts of a tenant in one
	// UTC day beyond which an alert is raised; 0 means the default.
	ConflictAlertThreshold int
	// DefaultPlan limits tenants without a plan assignment in force
	// (unknown ones included); "" for none: they are unlimited.
	DefaultPlan string
	// AdjustmentSignatures decides which adjustment records are applied:
	// those signed by one of its keys (and, in development, unsigned ones
	// when it allows them). The zero policy applies none: every
	// adjustment record is a dead letter of class ClassUnverified.
	AdjustmentSignatures recordsign.Policy
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Metrics may be nil.
	Metrics *Metrics
	Logger  *slog.Logger
}

// Aggregator applies batches.
type Aggregator struct {
	pool   *pgxpool.Pool
	cfg    Config
	meters *meterset.Loader
}

// New returns an Aggregator on pool.
func New(pool *pgxpool.Pool, cfg Config) *Aggregator {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Horizon <= 0 {
		cfg.Horizon = events.DefaultHorizon
	}
	if cfg.MaxLag <= 0 {
		cfg.MaxLag = DefaultMaxLag
	}
	if cfg.ConflictAlertThreshold <= 0 {
		cfg.ConflictAlertThreshold = DefaultConflictAlertThreshold
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Aggregator{pool: pool, cfg: cfg, meters: meterset.NewLoader()}
}

// ListenForMeters reads the meter definitions whenever one changes, until
// ctx ends, so that no batch waits for the read (see meterset.Loader).
func (a *Aggregator) ListenForMeters(ctx context.Context) error {
	return a.meters.Listen(ctx, a.pool, a.cfg.Logger)
}

// Result says what one batch did.
type Result struct {
	Counted, Duplicates, Conflicts, DeadLettered, Late int
	// Raised, Kept and Held split Conflicts by resolution.
	Raised, Kept, Held int
	Breaches           []quota.Breach
	// Alerts are the tenants this batch pushed over the conflict alert
	// threshold (each once per UTC day).
	Alerts []ConflictAlert
	// Adjusted is how many adjustments the batch applied (adjustments.go).
	Adjusted   int
	NextOffset int64
}

// Error classes of dead letters (header error-class).
const (
	ClassUndecodable = "undecodable"
	ClassInvalid     = "invalid"
	ClassTooOld      = "too_old"
	// ClassUnprocessable is a record the database refused (a constraint
	// or data error) that the consumer isolated from its batch.
	ClassUnprocessable = "unprocessable"
	// ClassUnverified is an adjustment record whose signature is missing,
	// malformed, wrong or made by a key the aggregator does not know.
	ClassUnverified = "unverified"
)

// NextOffset returns where partition resumes: the stored offset, or -1
// when the group has never committed one.
func (a *Aggregator) NextOffset(ctx context.Context, partition int) (int64, error) {
	return usagedata.NextOffset(ctx, a.pool, a.cfg.Group, a.cfg.Topic, partition)
}

// decoded is one record after decoding, or the reason it is a dead letter.
type decoded struct {
	rec   Record
	ev    events.Event
	hash  []byte
	class string // non-empty: dead letter
	err   string
}

// clocks returns the instants a record's event time is judged against.
// The record's timestamp is the broker's log-append time or a producer's
// CreateTime, which kafka-go cannot tell apart, so it is trusted only
// inside [now - MaxLag, now]: a lagging consumer, a restart or a rebuild
// within MaxLag reaches the verdict the record got when appended, and a
// forged timestamp moves no limit beyond what the clock allows. The age
// limit is judged at the timestamp clamped into that range; the future
// limit at min(timestamp, now).
func (a *Aggregator) clocks(rec Record, now time.Time) (age, future time.Time) {
	t := rec.Time
	if t.IsZero() || t.After(now) {
		t = now
	}
	age, future = t, t
	if oldest := now.Add(-a.cfg.MaxLag); age.Before(oldest) {
		age = oldest
	}
	return age, future
}

// OldestAcceptable is the oldest event time an aggregator with horizon
// and maxLag can count at now, whatever a record's timestamp says.
func OldestAcceptable(now time.Time, horizon, maxLag time.Duration) time.Time {
	return now.Add(-maxLag - horizon)
}

// LedgerCutoff is the event time before which the ledger may forget ids
// at now: a day before OldestAcceptable, so that no id retention forgets
// can be counted again.
func LedgerCutoff(now time.Time, horizon, maxLag time.Duration) time.Time {
	return OldestAcceptable(now, horizon, maxLag).Add(-24 * time.Hour)
}

func (a *Aggregator) decode(rec Record, now time.Time) decoded {
	d := decoded{rec: rec}
	if rec.Value == nil {
		d.class, d.err = ClassUndecodable, "the record has a null value (a tombstone)"
		return d
	}
	if !utf8.Valid(rec.Value) {
		d.class, d.err = ClassUndecodable, "the record is not valid UTF-8"
		return d
	}
	if err := d.ev.UnmarshalJSON(rec.Value); err != nil {
		// JSON that is not an event object is undecodable; an object
		// with wrong fields is an invalid event.
		d.class, d.err = ClassInvalid, Sanitize(err.Error())
		if ve, ok := events.AsValidationError(err); !ok || slices.ContainsFunc(ve.Errors, func(fe events.FieldError) bool { return fe.Field == "" }) {
			d.class = ClassUndecodable
		}
		return d
	}
	age, future := a.clocks(rec, now)
	v := events.Validator{Horizon: a.cfg.Horizon, Now: func() time.Time { return future }}
	if errs := v.Validate(0, d.ev); len(errs) > 0 {
		d.class, d.err = ClassInvalid, Sanitize((&events.ValidationError{Errors: errs}).Error())
		for _, fe := range errs {
			if fe.Field == "time" && d.ev.Time.Before(age.Add(-a.cfg.Horizon)) {
				d.class = ClassTooOld
			}
		}
		return d
	}
	if oldest := age.Add(-a.cfg.Horizon); d.ev.Time.Before(oldest) {
		d.class = ClassTooOld
		d.err = fmt.Sprintf("time: %s is older than the horizon of %s: events from %s on are counted",
			d.ev.Time.UTC().Format(time.RFC3339Nano), a.cfg.Horizon, oldest.UTC().Format(time.RFC3339))
		return d
	}
	d.hash = payloadHash(d.ev)
	return d
}

// payloadHash is the ledger's hash of an event: the first
// usagedata.LedgerHashSize bytes of the SHA-256 of its canonical JSON. ev
// is a copy, so a caller may hash it with another value.
func payloadHash(ev events.Event) []byte {
	sum := sha256.Sum256(ev.AppendJSON(nil))
	return sum[:usagedata.LedgerHashSize]
}

// sum128 adds non-negative int64 values without overflow.
type sum128 struct{ hi, lo uint64 }

func (s *sum128) add(v int64) {
	var c uint64
	s.lo, c = bits.Add64(s.lo, uint64(v), 0)
	s.hi += c
}

func (s sum128) String() string {
	if s.hi == 0 {
		return fmt.Sprint(s.lo)
	}
	n := new(big.Int).Lsh(new(big.Int).SetUint64(s.hi), 64)
	return n.Add(n, new(big.Int).SetUint64(s.lo)).String()
}

type windowKey struct {
	tenant, metric string
	g              windows.Granularity
	start          time.Time
}

type amount struct {
	value  sum128
	events int64
}

// Apply applies recs, which must all come from partition, in offset order,
// the first at offset from (the partition's stored next offset, or any
// offset when none is stored yet). It commits everything or nothing.
func (a *Aggregator) Apply(ctx context.Context, partition int, from int64, recs []Record) (Result, error) {
	if len(recs) == 0 {
		return Result{NextOffset: from}, nil
	}
	start := time.Now()
	now := a.cfg.Now().UTC()
	res := Result{NextOffset: recs[len(recs)-1].Offset + 1}

	batch, adjs := a.decodeAll(recs, now)

	tx, err := a.pool.Begin(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("beginning batch transaction: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()

	// The fence first: it also takes the partition's row lock, so a
	// second owner waits here and then fails, before doing any work.
	if err := a.advanceOffsetTo(ctx, tx, partition, from, res.NextOffset, watermark(recs, now)); err != nil {
		return Result{}, err
	}
	// The meters in force when this transaction reads them count the
	// batch: a change committed before that counts every event after it.
	meters, err := a.meters.Current(ctx, tx)
	if err != nil {
		return Result{}, err
	}
	refuseShadowedMetrics(batch, meters)
	incs, err := a.dedup(ctx, tx, batch, now, &res)
	if err != nil {
		return Result{}, err
	}
	// The billing periods of the batch's tenants, as this transaction sees
	// them: their month windows (a change of cycle is recorded at least
	// billingcycle.ChangeMargin before it takes effect, so no counted event
	// ever moves).
	periods, err := readPeriods(ctx, tx, incs, adjs)
	if err != nil {
		return Result{}, err
	}
	if err := a.deadLetters(ctx, tx, batch, now, &res); err != nil {
		return Result{}, err
	}
	// The implicit meters' windows, then the defined meters': every batch
	// locks windows in that order.
	if err := addToWindows(ctx, tx, periods, incs); err != nil {
		return Result{}, err
	}
	if err := addToMeters(ctx, tx, meters, periods, incs); err != nil {
		return Result{}, err
	}
	if err := corrections(ctx, tx, periods, incs, now, &res); err != nil {
		return Result{}, err
	}
	adjusted, err := a.applyAdjustments(ctx, tx, meters, periods, adjs, incs, now, &res)
	if err != nil {
		return Result{}, err
	}
	breaches, err := evaluateMeterQuotas(ctx, tx, meters, periods, append(incs, adjusted...), now, a.cfg.DefaultPlan)
	if err != nil {
		return Result{}, err
	}
	res.Breaches = breaches
	if err := tx.Commit(ctx); err != nil {
		return Result{}, fmt.Errorf("committing batch of partition %d at offset %d: %w", partition, from, err)
	}
	a.cfg.Metrics.observe(res, len(recs), time.Since(start))
	a.logAlerts(ctx, res.Alerts)
	return res, nil
}

func (a *Aggregator) advanceOffset(ctx context.Context, tx pgx.Tx, partition int, from, next int64) error {
	return a.advanceOffsetTo(ctx, tx, partition, from, next, time.Time{})
}

// advanceOffsetTo is advanceOffset that also moves the partition's
// watermark up to wm (zero: leaves it), in the same statement.
func (a *Aggregator) advanceOffsetTo(ctx context.Context, tx pgx.Tx, partition int, from, next int64, wm time.Time) error {
	moved, err := usagedata.AdvanceOffsetTo(ctx, tx, a.cfg.Group, a.cfg.Topic, partition, from, next, wm)
	if err != nil {
		return err
	}
	if !moved {
		return fmt.Errorf("partition %d from offset %d: %w", partition, from, ErrFenced)
	}
	return nil
}

// watermark is the partition's watermark after recs: the greatest record
// timestamp (the broker's append time on a topic with LogAppendTime),
// never after now, so a forged future timestamp cannot declare time that
// has not passed; zero when no record has one.
func watermark(recs []Record, now time.Time) time.Time {
	var wm time.Time
	for _, r := range recs {
		if r.Time.After(wm) {
			wm = r.Time
		}
	}
	if wm.After(now) {
		wm = now
	}
	return wm
}

// CaughtUp records that this consumer read partition up to its high-water
// mark end at the instant at, taken before the read: when the stored
// offset has reached end, the partition's watermark moves up to at (see
// usagedata.CaughtUp; empty says the log holds no record at all). It
// reports whether the watermark moved.
func (a *Aggregator) CaughtUp(ctx context.Context, partition int, end int64, at time.Time, empty bool) (bool, error) {
	return usagedata.CaughtUp(ctx, a.pool, a.cfg.Group, a.cfg.Topic, partition, end, at, empty)
}

type idKey struct{ tenant, id string }

// increment is usage to add to windows: a newly counted event (events 1)
// or the raise of a counted one (events 0, value the difference).
type increment struct {
	tenant, metric string
	at             time.Time
	value          int64
	events         int64
	// ev is the event, for its defined meters; nil for usage that counts
	// in the implicit meter only (a held conflict an operator counted).
	ev *events.Event
	// raise: a resend raised a counted event; counted is when that event
	// was counted (its ledger row's recorded_at), zero when this batch
	// counted it.
	raise   bool
	counted time.Time
	// offset is the source record's offset.
	offset int64
}

func (d *decoded) increment() increment {
	return increment{tenant: d.ev.Tenant, metric: d.ev.Metric, at: d.ev.Time, value: d.ev.Value, events: 1, ev: &d.ev, offset: d.rec.Offset}
}

// ledgerRow is a (tenant, id) as counted, as this batch sees it.
type ledgerRow struct {
	metric  string
	at      time.Time
	value   int64
	hash    []byte
	changed bool // raised by this batch
	// recorded is when the event was counted; zero when by this batch.
	recorded time.Time
}

// dedup inserts the batch's events into the ledger and returns what to
// count: first occurrences of their (tenant, id), and the raises of
// counted events by conflicting resends (see resolve).
func (a *Aggregator) dedup(ctx context.Context, tx pgx.Tx, batch []decoded, now time.Time, res *Result) ([]increment, error) {
	first, candidates, repeats := firstOccurrences(batch)
	inserted, err := insertLedger(ctx, tx, candidates)
	if err != nil {
		return nil, err
	}
	incs := make([]increment, 0, len(inserted))
	state := make(map[idKey]*ledgerRow, len(inserted))
	var known []idKey // already in the ledger before this batch
	for _, d := range candidates {
		k := idKey{d.ev.Tenant, d.ev.ID}
		if inserted[k] {
			incs = append(incs, d.increment())
			state[k] = &ledgerRow{metric: d.ev.Metric, at: d.ev.Time, value: d.ev.Value, hash: d.hash}
		} else {
			known = append(known, k)
		}
	}
	res.Counted = len(incs)
	if len(known) == 0 && repeats == 0 {
		return incs, nil // the common case: every event new
	}
	if err := readLedger(ctx, tx, known, false, state); err != nil {
		return nil, err
	}
	// A key whose payload differs from the counted one may be raised: lock
	// its row first (in key order, so batches cannot deadlock) and read it
	// again, so that a concurrent batch's raise is seen, not overwritten.
	if err := readLedger(ctx, tx, differingKeys(batch, inserted, state), true, state); err != nil {
		return nil, err
	}
	incs, conflicts, err := resolveResends(batch, first, inserted, state, incs, res)
	if err != nil {
		return nil, err
	}
	if err := updateLedger(ctx, tx, state); err != nil {
		return nil, err
	}
	if err := a.recordConflicts(ctx, tx, conflicts, now, res); err != nil {
		return nil, err
	}
	return incs, nil
}

// firstOccurrences returns, for the countable events of batch, the first
// occurrence of each (tenant, id), those occurrences in batch order, and
// how many later occurrences within the batch repeat one of them.
func firstOccurrences(batch []decoded) (first map[idKey]*decoded, candidates []*decoded, repeats int) {
	first = make(map[idKey]*decoded, len(batch))
	for i := range batch {
		d := &batch[i]
		if d.class != "" {
			continue
		}
		k := idKey{d.ev.Tenant, d.ev.ID}
		if _, seen := first[k]; seen {
			repeats++
			continue
		}
		first[k] = d
		candidates = append(candidates, d)
	}
	return first, candidates, repeats
}

// insertLedger inserts candidates into the ledger in one statement and
// returns the keys it inserted: those not counted before.
func insertLedger(ctx context.Context, tx pgx.Tx, candidates []*decoded) (map[idKey]bool, error) {
	n := len(candidates)
	tenants, ids, metrics := make([]string, n), make([]string, n), make([]string, n)
	hashes := make([][]byte, n)
	values, offsets := make([]int64, n), make([]int64, n)
	times := make([]time.Time, n)
	parts := make([]int32, n)
	for i, d := range candidates {
		tenants[i], ids[i], metrics[i], hashes[i] = d.ev.Tenant, d.ev.ID, d.ev.Metric, d.hash
		values[i], times[i], parts[i], offsets[i] = d.ev.Value, d.ev.Time, int32(d.rec.Partition), d.rec.Offset
	}
	inserted := make(map[idKey]bool, n)
	err := usagedata.InsertLedger(ctx, tx, &usagedata.LedgerInsert{
		Tenants: tenants, IDs: ids, Metrics: metrics, Hashes: hashes, Values: values, Times: times, Partitions: parts, Offsets: offsets,
	}, func(tenant, id string) { inserted[idKey{tenant, id}] = true })
	if err != nil {
		return nil, err
	}
	return inserted, nil
}

// differingKeys returns, once each and in batch order, the keys counted
// before this batch that an event of the batch resends with another
// payload: the rows a raise may change.
func differingKeys(batch []decoded, inserted map[idKey]bool, state map[idKey]*ledgerRow) []idKey {
	var lock []idKey
	locking := map[idKey]bool{}
	for i := range batch {
		d := &batch[i]
		if d.class != "" {
			continue
		}
		k := idKey{d.ev.Tenant, d.ev.ID}
		if row := state[k]; row != nil && !inserted[k] && !locking[k] && string(row.hash) != string(d.hash) {
			locking[k] = true
			lock = append(lock, k)
		}
	}
	return lock
}

// resolveResends goes through every countable event of batch that was not
// counted by the insert: an identical resend is a duplicate, any other is
// resolved against its ledger row (see resolve), appending a raise to incs
// and returning the conflicts to record.
func resolveResends(batch []decoded, first map[idKey]*decoded, inserted map[idKey]bool, state map[idKey]*ledgerRow,
	incs []increment, res *Result) ([]increment, []conflict, error) {
	var conflicts []conflict
	for i := range batch {
		d := &batch[i]
		if d.class != "" {
			continue
		}
		k := idKey{d.ev.Tenant, d.ev.ID}
		if first[k] == d && inserted[k] {
			continue // counted by the insert
		}
		row := state[k]
		if row == nil {
			// Retention deleted the row between the insert and the read;
			// the retried batch counts the event as new.
			return nil, nil, fmt.Errorf("ledger row of tenant %q id %q vanished during the batch", k.tenant, k.id)
		}
		if string(row.hash) == string(d.hash) {
			res.Duplicates++
			continue
		}
		c, inc := resolve(row, d)
		inc.offset = d.rec.Offset
		if inc.value > 0 {
			incs = append(incs, inc)
		}
		conflicts = append(conflicts, c)
	}
	return incs, conflicts, nil
}

// readLedger reads the ledger rows of keys into state; with lock, it
// locks them in key order and replaces what state held.
func readLedger(ctx context.Context, tx pgx.Tx, keys []idKey, lock bool, state map[idKey]*ledgerRow) error {
	if len(keys) == 0 {
		return nil
	}
	kt, ki := make([]string, len(keys)), make([]string, len(keys))
	for i, k := range keys {
		kt[i], ki[i] = k.tenant, k.id
	}
	return usagedata.ReadLedger(ctx, tx, kt, ki, lock, func(tenant, id string, r usagedata.LedgerRow) {
		state[idKey{tenant, id}] = &ledgerRow{metric: r.Metric, at: r.At, value: r.Value, hash: r.Hash, recorded: r.Recorded}
	})
}

// updateLedger writes the raised rows of state: their value and hash
// become the raising event's, so each raise is added once.
func updateLedger(ctx context.Context, tx pgx.Tx, state map[idKey]*ledgerRow) error {
	var kt, ki []string
	var vs []int64
	var hs [][]byte
	for k, r := range state {
		if r.changed {
			kt, ki, vs, hs = append(kt, k.tenant), append(ki, k.id), append(vs, r.value), append(hs, r.hash)
		}
	}
	return usagedata.RaiseLedger(ctx, tx, kt, ki, vs, hs)
}

// readPeriods reads the billing schedules of the tenants of incs and
// adjs, in one statement.
func readPeriods(ctx context.Context, tx pgx.Tx, incs []increment, adjs []adjRecord) (billingcycle.Schedules, error) {
	seen := map[string]bool{}
	var tenants []string
	add := func(t string) {
		if !seen[t] {
			seen[t] = true
			tenants = append(tenants, t)
		}
	}
	for i := range incs {
		add(incs[i].tenant)
	}
	for i := range adjs {
		if adjs[i].err == "" {
			add(adjs[i].adj.Tenant)
		}
	}
	return accounts.Schedules(ctx, tx, tenants)
}

// addToWindows adds incs to their implicit meters' windows of every
// granularity; a month window is the tenant's billing period in periods.
func addToWindows(ctx context.Context, tx pgx.Tx, periods billingcycle.Schedules, incs []increment) error {
	if len(incs) == 0 {
		return nil
	}
	agg := make(map[windowKey]*amount, len(incs))
	for _, in := range incs {
		sched := periods.Of(in.tenant)
		for _, g := range windows.All {
			k := windowKey{in.tenant, in.metric, g, g.StartIn(sched, in.at)}
			am := agg[k]
			if am == nil {
				am = &amount{}
				agg[k] = am
			}
			am.value.add(in.value)
			am.events += in.events
		}
	}
	n := len(agg)
	tenants, metrics, grans, vals := make([]string, 0, n), make([]string, 0, n), make([]string, 0, n), make([]string, 0, n)
	starts, counts := make([]time.Time, 0, n), make([]int64, 0, n)
	for k, am := range agg {
		tenants, metrics, grans, starts = append(tenants, k.tenant), append(metrics, k.metric), append(grans, string(k.g)), append(starts, k.start)
		vals, counts = append(vals, am.value.String()), append(counts, am.events)
	}
	// AddWindows sorts the rows by key, so concurrent batches lock
	// windows in the same order.
	return usagedata.AddWindows(ctx, tx, &usagedata.WindowAdds{
		Tenants: tenants, Meters: metrics, Granularities: grans, Starts: starts, Values: vals, Events: counts,
	})
}
