// Package stripesync makes Stripe agree with Postgres: for each tenant,
// metric and month it sends the difference between the metered total and
// what was already claimed as one meter event, with retries, a client-side
// rate limit and a dead-letter queue, and it reconciles the result against
// Stripe's own summaries. A defined meter whose quota names a Stripe event
// is billed the same way per group (groups.go): each group's event name is
// the quota's with its {property} placeholders filled by the group's
// values, and its pushes, claimed totals and identifiers are its own.
//
// Invariant: idempotent all the way to Stripe, with any number of billers
// running at once. A push is recorded as an intent (with its deterministic
// identifier) before the call and marked with its outcome after; a crash
// in between, a retry or a DLQ replay within Stripe's 24-hour identifier
// memory re-sends the same identifier and Idempotency-Key, so Stripe
// counts it once. A delta is never claimed twice, even by two billers
// planning the same month at once (locks.go): pushes in flight or
// dead-lettered count as claimed until they are sent or cancelled (and
// pushes held on anomalies, holds.go, until approved and sent), so
// Stripe's running total never exceeds the metered total plus what a
// customer credit gave back (a decrease too old to cancel, credits.go). A push older
// than that memory is never re-sent as it is: Stripe's summary decides
// whether it landed, and only the shortfall is sent (landed.go).
package stripesync

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/time/rate"

	"github.com/usagemeter/metering/internal/billingcycle"
	"github.com/usagemeter/metering/internal/storage"
	"github.com/usagemeter/metering/internal/storage/billingdata"
	"github.com/usagemeter/metering/internal/storage/outbox"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/stripeapi"
	"github.com/usagemeter/metering/internal/topics"
)

// Stripe is the part of Stripe the biller uses.
type Stripe interface {
	SendMeterEvent(ctx context.Context, eventName, identifier, customer, value string, ts time.Time) error
	CancelMeterEvent(ctx context.Context, eventName, identifier string) error
	Meters(ctx context.Context) (map[string]string, error)
	Summary(ctx context.Context, meterID, customer string, start, end time.Time) (int64, error)
}

// Config of a Biller.
type Config struct {
	// RatePerSecond bounds calls to Stripe (client side); default 20.
	RatePerSecond float64
	// MaxAttempts of one push before it is dead-lettered; default 8.
	MaxAttempts int
	// BackoffMin and BackoffMax bound the full-jitter backoff; defaults 200ms, 30s.
	BackoffMin, BackoffMax time.Duration
	// Concurrency is how many pushes run at once; default 8.
	Concurrency int
	// SummaryLag is how long after a call Stripe's event summaries may
	// not show it yet; a group of pushes is checked against its summary
	// only when nothing of it was sent for that long. Default 10m.
	SummaryLag time.Duration
	// DefaultPlan bills tenants without a plan assignment in force
	// (DEFAULT_PLAN; "" for none: they are not billed).
	DefaultPlan string
	// Now is the clock; nil means time.Now.
	Now     func() time.Time
	Logger  *slog.Logger
	Metrics *Metrics
}

// Biller pushes and reconciles.
type Biller struct {
	pool    *pgxpool.Pool
	stripe  Stripe
	cfg     Config
	limiter *rate.Limiter
	// skipLandedCheck sends old pushes as they are, and noPlanningLocks
	// plans without the pair and group locks; tests set them to show what
	// the check and the locks prevent. afterPlanningRead, if set, runs in
	// planning between the re-read of a pair and its intent.
	skipLandedCheck, noPlanningLocks bool
	afterPlanningRead                func()
}

// New returns a Biller.
func New(pool *pgxpool.Pool, st Stripe, cfg Config) *Biller {
	if cfg.RatePerSecond <= 0 {
		cfg.RatePerSecond = 20
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 8
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = 200 * time.Millisecond
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = 30 * time.Second
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 8
	}
	if cfg.SummaryLag <= 0 {
		cfg.SummaryLag = aggregationGrace
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Biller{pool: pool, stripe: st, cfg: cfg, limiter: rate.NewLimiter(rate.Limit(cfg.RatePerSecond), max(1, int(cfg.RatePerSecond)))}
}

// Identifier is the meter event identifier (and Idempotency-Key) of the
// push that brings (tenant, metric, period) to cumulative; generation
// counts earlier pushes to the same total that were cancelled.
func Identifier(tenant, metric string, period time.Time, cumulative string, generation int) string {
	h := sha256.Sum256(fmt.Appendf(nil, "%s\x00%s\x00%s\x00%s\x00%d", tenant, metric, period.UTC().Format(time.RFC3339), cumulative, generation))
	return "mu_" + hex.EncodeToString(h[:24])
}

// GroupIdentifier is Identifier of one group of a meter: groupKey as
// usage_windows stores it. The empty group's is Identifier's, so pushes
// of implicit meters keep the identifiers they always had.
func GroupIdentifier(tenant, meter, groupKey string, period time.Time, cumulative string, generation int) string {
	if groupKey == "" {
		return Identifier(tenant, meter, period, cumulative, generation)
	}
	h := sha256.Sum256(fmt.Appendf(nil, "group\x00%s\x00%s\x00%s\x00%s\x00%d\x00%s", tenant, meter, period.UTC().Format(time.RFC3339), cumulative, generation, groupKey))
	return "mu_" + hex.EncodeToString(h[:24])
}

// SyncResult counts what one Sync did.
type SyncResult struct {
	Intents, Sent, Dead, Carried, Cancelled int
	// Held counts the intents held for approval (holds.go), of Intents.
	Held int
	// Credited counts the customer credits sent for decreases that could
	// no longer be cancelled (credits.go).
	Credited int
	// Landed, Replaced and Waiting count old open pushes checked against
	// Stripe's summaries; see SendResult.
	Landed, Replaced, Waiting int
	// Unmapped lists what was not billed: "tenant/metric" (no customer
	// or no Stripe meter), or "tenant/meter[group]: reason" for a group
	// of a defined meter whose event name could not be made.
	Unmapped []string
}

// CountOpenPushes reports how many pushes are intents and how many are
// dead-lettered, and sets the DLQ depth gauge from the latter.
func (b *Biller) CountOpenPushes(ctx context.Context) (intents, dead int, err error) {
	intents, dead, err = billingdata.CountOpen(ctx, b.pool)
	if err != nil {
		return 0, 0, fmt.Errorf("counting open pushes: %w", err)
	}
	if b.cfg.Metrics != nil {
		b.cfg.Metrics.DLQDepth.Set(float64(dead))
	}
	return intents, dead, nil
}

// Sync records an intent for every (tenant, metric, month) whose metered
// total exceeds what was claimed, then sends every open intent.
func (b *Biller) Sync(ctx context.Context) (SyncResult, error) {
	var res SyncResult
	meters, err := b.meters(ctx)
	if err != nil {
		return res, err
	}
	if res.Cancelled, err = b.fixOverReporting(ctx); err != nil {
		return res, err
	}
	if res.Credited, err = b.creditDecreases(ctx); err != nil {
		return res, err
	}
	if err := b.planIntents(ctx, meters, &res); err != nil {
		return res, err
	}
	sent, err := b.send(ctx, meters, billingdata.Intents)
	res.Sent, res.Dead, res.Landed, res.Replaced, res.Waiting = sent.Sent, sent.Dead, sent.Landed, sent.Replaced, sent.Waiting
	return res, err
}

func (b *Biller) meters(ctx context.Context) (map[string]string, error) {
	var meters map[string]string
	err := b.call(ctx, func() error {
		var err error
		meters, err = b.stripe.Meters(ctx)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listing Stripe meters: %w", err)
	}
	return meters, nil
}

// planIntents writes an intent for each delta.
func (b *Biller) planIntents(ctx context.Context, meters map[string]string, res *SyncResult) error {
	now := b.cfg.Now().UTC()
	periods, err := b.periods(ctx)
	if err != nil {
		return err
	}
	plans, err := b.deltas(ctx, oldestPeriod(periods, now))
	if err != nil {
		return err
	}
	for _, p := range plans {
		// A period not begun yet (usage a little ahead of the clock, an
		// adjustment of the period a month names) is planned once it
		// has: its meter events are stamped inside it.
		if p.skip || p.period.After(now) {
			continue
		}
		if p.unmapped != "" {
			res.Unmapped = append(res.Unmapped, fmt.Sprintf("%s/%s%s: %s", p.tenant, p.metric, p.group, p.unmapped))
			continue
		}
		if p.customer == "" || meters[p.eventName] == "" {
			res.Unmapped = append(res.Unmapped, p.tenant+"/"+p.metric+p.group)
			continue
		}
		if err := b.planOne(ctx, p, periods.Of(p.tenant), now, res); err != nil {
			return err
		}
	}
	if len(res.Unmapped) > 0 {
		b.cfg.Logger.WarnContext(ctx, "usage not billed: tenant without stripe_customer_id, or no Stripe meter for the event name",
			"count", len(res.Unmapped), "first", res.Unmapped[0])
	}
	b.cfg.Metrics.unmapped(len(res.Unmapped))
	return nil
}

// delta is a (tenant, metric, group, month) whose metered total exceeds
// what its pushes claim. metric is the meter billed; groupKey its group as
// stored ("" for none) and group the key itself; defined is set for a
// defined meter. unmapped says why a group is not billed; skip is set for
// a group a filter quota does not bill.
type delta struct {
	tenant, metric, customer, eventName string
	groupKey, group                     string
	defined, skip                       bool
	unmapped                            string
	period                              time.Time
	metered, claimed                    *big.Int
	generation                          int
	final                               bool
	// hold is the billed plan version's hold on anomalies (nil: none).
	hold *holdRule
}

// deltas reads every delta of the months from oldest on.
func (b *Biller) deltas(ctx context.Context, oldest time.Time) ([]delta, error) {
	ds, err := billingdata.Deltas(ctx, b.pool, oldest, b.cfg.DefaultPlan)
	if err != nil {
		return nil, fmt.Errorf("finding deltas: %w", err)
	}
	plans := make([]delta, 0, len(ds))
	for _, d := range ds {
		p := delta{tenant: d.Tenant, metric: d.Metric, customer: d.Customer, eventName: d.EventName, period: d.Period,
			groupKey: d.GroupKey, group: d.Group, defined: d.Meter != "",
			metered: usagedata.NumericInt(d.Metered), claimed: usagedata.NumericInt(d.Claimed), generation: d.Cancelled, final: d.Final}
		if p.defined {
			m := groupMapping(d.EventName, d.Aggregation, d.GroupBy, d.Filter, d.Group)
			p.eventName, p.skip, p.unmapped = m.eventName, m.skip, m.unmapped
		}
		if p.hold, err = parseHold(d.HoldOnAnomaly); err != nil {
			// A hold the plan cannot state holds every push with history:
			// nothing goes out on a rule nobody can read.
			b.cfg.Logger.ErrorContext(ctx, "unreadable hold_on_anomaly: pushes with history are held", "tenant", d.Tenant, "err", err)
			p.hold = &holdRule{factor: new(big.Rat), window: DefaultHoldWindow, text: "0 (unreadable rule)"}
		}
		plans = append(plans, p)
	}
	return plans, nil
}

// stamp decides where usage of the metered billing period starting at
// period (of a tenant whose periods are sched) goes at now: the event
// timestamp, the billed period, and whether it is carried into the
// current period (the invoice is final, or Stripe no longer takes events
// for the period). The timestamp is inside the billed period's summary
// window (summaryWindow). The period must have begun (planIntents waits
// for it).
func stamp(sched billingcycle.Schedule, period, now time.Time, final bool) (ts, billed time.Time, carried bool) {
	_, to := summaryWindow(period, sched.End(period))
	current := func(carried bool) (time.Time, time.Time, bool) {
		cs, ce := sched.Span(now)
		cf, ct := summaryWindow(cs, ce)
		return stampIn(now, cf, ct), cs, carried
	}
	switch {
	case now.Before(sched.End(period)):
		return current(false) // the open period: stamp it now
	case final || to.Add(-time.Second).Before(now.Add(-35*24*time.Hour+time.Hour)):
		return current(true)
	default:
		return to.Add(-time.Second), period, false
	}
}

// planOne records the intent that brings p's (tenant, metric, group,
// period) to its metered total, under the pair's and then the group's
// lock, re-reading the claimed total and the metered one inside: a biller
// planning the same pair at the same time waits, then finds nothing left
// to claim.
func (b *Biller) planOne(ctx context.Context, p delta, sched billingcycle.Schedule, now time.Time, res *SyncResult) error {
	tenant, metric, customer, eventName, period := p.tenant, p.metric, p.customer, p.eventName, p.period
	ts, billed, carried := stamp(sched, period, now, p.final)
	var delta *big.Int
	inserted, held := false, false
	err := pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
		// One round trip: the locks, pair first, then the re-read.
		totals, err := billingdata.LockAndReadPair(ctx, tx, billingdata.Pair{Tenant: tenant, Metric: metric, GroupKey: p.groupKey, Period: period,
			Customer: customer, EventName: eventName, Billed: billed}, !b.noPlanningLocks)
		if err != nil {
			return fmt.Errorf("locking and re-reading the claimed total: %w", err)
		}
		if b.afterPlanningRead != nil {
			b.afterPlanningRead()
		}
		m, c := usagedata.NumericInt(totals.Metered), usagedata.NumericInt(totals.Claimed)
		if m.Cmp(c) <= 0 {
			return nil // another biller claimed it first
		}
		delta = new(big.Int).Sub(m, c)
		cumulative := m.String()
		id := GroupIdentifier(tenant, metric, p.groupKey, period, cumulative, totals.Cancelled)
		// The intent, and late usage the aggregator recorded for this
		// month marked as on its way if the intent was recorded.
		inserted, err = billingdata.InsertIntent(ctx, tx, billingdata.Intent{Tenant: tenant, Metric: metric, GroupKey: p.groupKey, Period: period, Billed: billed,
			Customer: customer, EventName: eventName, Cumulative: cumulative, Delta: delta.String(), Identifier: id,
			EventTime: ts, Carried: carried, CreatedAt: now, Snapshot: totals.Snapshot})
		if err != nil || !inserted {
			return err
		}
		if held, err = b.holdIfUnusual(ctx, tx, p, delta, id); err != nil {
			return err
		}
		if p.defined {
			return nil // corrections are recorded of implicit meters only
		}
		err = usagedata.MarkReconciled(ctx, tx, tenant, metric, period)
		return err
	})
	if err != nil {
		return fmt.Errorf("recording intent for %s/%s%s: %w", tenant, metric, p.group, err)
	}
	if inserted {
		res.Intents++
		if held {
			res.Held++
			b.cfg.Logger.WarnContext(ctx, "push held for approval: delta beyond the plan's hold_on_anomaly factor",
				"tenant", tenant, "metric", metric, "group", p.group, "period", period.Format("2006-01"), "value", delta.String())
		}
		if carried {
			res.Carried++
			b.cfg.Logger.WarnContext(ctx, "late usage for a closed period carried into the current one",
				"tenant", tenant, "metric", metric, "group", p.group, "period", period.Format("2006-01"), "value", delta.String())
		}
	}
	return nil
}

type push struct {
	id                                  int64
	tenant, metric, customer, eventName string
	groupKey                            string
	identifier, delta, cumulative       string
	status                              string
	period, billed                      time.Time
	ts, created                         time.Time
	attempts                            int
}

// pushReader reads the pushes a round of sending sends.
type pushReader func(ctx context.Context, q storage.Executor) ([]billingdata.Push, error)

// intentsByID reads the pushes ids that are still intents.
func intentsByID(ids []int64) pushReader {
	return func(ctx context.Context, q storage.Executor) ([]billingdata.Push, error) {
		return billingdata.IntentsByID(ctx, q, ids)
	}
}

// SendOpen sends every intent (and, with dead, every dead-lettered push)
// and returns how many were sent and dead-lettered.
func (b *Biller) SendOpen(ctx context.Context, dead bool) (int, int, error) {
	res, err := b.sendOpen(ctx, dead)
	return res.Sent, res.Dead, err
}

func (b *Biller) sendOpen(ctx context.Context, dead bool) (SendResult, error) {
	return b.send(ctx, nil, func(ctx context.Context, q storage.Executor) ([]billingdata.Push, error) {
		return billingdata.OpenPushes(ctx, q, dead)
	})
}

// send sends the pushes read selects. Pushes created more than
// DedupHorizon ago are not sent as they are: their groups are checked
// against Stripe's summaries first (landed.go), and only the shortfall
// goes out, as new pushes, in the same round.
func (b *Biller) send(ctx context.Context, meters map[string]string, read pushReader) (SendResult, error) {
	var res SendResult
	pushes, err := b.readPushes(ctx, read)
	if err != nil {
		return res, err
	}
	horizon := b.cfg.Now().Add(-DedupHorizon)
	var fresh []push
	var groups []group
	seen := map[group]bool{}
	for _, p := range pushes {
		if !p.created.Before(horizon) || b.skipLandedCheck {
			fresh = append(fresh, p)
			continue
		}
		if g := (group{customer: p.customer, eventName: p.eventName, billed: p.billed}); !seen[g] {
			seen[g] = true
			groups = append(groups, g)
		}
	}
	if len(groups) > 0 {
		if meters == nil {
			if meters, err = b.meters(ctx); err != nil {
				return res, err
			}
		}
		if fresh, err = b.settleOld(ctx, meters, groups, fresh, &res); err != nil {
			return res, err
		}
	}
	return res, b.pushAll(ctx, fresh, &res)
}

// readPushes reads the pushes read selects, in id order.
func (b *Biller) readPushes(ctx context.Context, read pushReader) ([]push, error) {
	rows, err := read(ctx, b.pool)
	if err != nil {
		return nil, fmt.Errorf("reading open pushes: %w", err)
	}
	pushes := make([]push, len(rows))
	for i, r := range rows {
		pushes[i] = push{id: r.ID, tenant: r.Tenant, metric: r.Metric, groupKey: r.GroupKey, customer: r.Customer, eventName: r.EventName,
			identifier: r.Identifier, delta: r.Delta, cumulative: r.Cumulative, status: r.Status,
			period: r.Period, billed: r.Billed, ts: r.EventTime, created: r.Created, attempts: r.Attempts}
	}
	return pushes, nil
}

// settleOld checks each group of old open pushes against Stripe's summary
// (resolveGroup) and sends the pushes created for its shortfall. It
// returns fresh without the pushes of groups that wait.
func (b *Biller) settleOld(ctx context.Context, meters map[string]string, groups []group, fresh []push, res *SendResult) ([]push, error) {
	var created []int64
	waiting := map[group]bool{}
	for _, g := range groups {
		if meters[g.eventName] == "" {
			b.cfg.Logger.WarnContext(ctx, "old open pushes wait: no active Stripe meter for their event name", "group", g.String())
			res.Waiting++
			waiting[g] = true
			continue
		}
		ids, err := b.resolveGroup(ctx, g, meters[g.eventName], res)
		switch {
		case errors.Is(err, errWait):
			res.Waiting++
			waiting[g] = true
			b.cfg.Logger.InfoContext(ctx, "old open pushes wait until Stripe's summary settles", "group", g.String(), "lag", b.cfg.SummaryLag)
		case err != nil:
			return nil, fmt.Errorf("checking old pushes of %s against Stripe: %w", g, err)
		}
		created = append(created, ids...)
	}
	// New pushes of a waiting group are held back too: sending them
	// would keep the group busy, and its summary untrusted, for as
	// long as usage flows. They stay intents, and the check settles
	// them with the old ones once the group is quiet.
	kept := fresh[:0]
	for _, p := range fresh {
		if !waiting[group{customer: p.customer, eventName: p.eventName, billed: p.billed}] {
			kept = append(kept, p)
		}
	}
	fresh = kept
	if len(created) > 0 {
		more, err := b.send(ctx, meters, intentsByID(created))
		res.add(more)
		if err != nil {
			return nil, err
		}
	}
	return fresh, nil
}

// pushAll sends fresh with cfg.Concurrency workers, counting what was sent
// and dead-lettered in res, and returns the first error.
func (b *Biller) pushAll(ctx context.Context, fresh []push, res *SendResult) error {
	var mu sync.Mutex
	var firstErr error
	work := make(chan push)
	var wg sync.WaitGroup
	for range b.cfg.Concurrency {
		wg.Go(func() {
			for p := range work {
				ok, err := b.pushOne(ctx, p)
				mu.Lock()
				switch {
				case err != nil && firstErr == nil:
					firstErr = err
				case ok:
					res.Sent++
				case err == nil:
					res.Dead++
				}
				mu.Unlock()
			}
		})
	}
	for _, p := range fresh {
		if ctx.Err() != nil {
			break
		}
		work <- p
	}
	close(work)
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	return firstErr
}

// errGone says a push left the status it was read with (another biller
// sent, resolved or dead-lettered it) before a call.
var errGone = errors.New("the push is no longer open")

// pushOne sends p with retries. It returns true when sent, false with a
// nil error when dead-lettered or taken over by another biller, and an
// error when it could not record the outcome (the push stays open and is
// retried by the next sync).
//
// Before every call it stamps sent_at, conditional on the push still
// having the status it was read with: a push another biller has settled
// meanwhile is not sent, and the stamp tells the check of old pushes
// (landed.go) that Stripe's summary may not show this call yet. Outcomes
// are recorded under the same condition, so a slower biller never turns a
// sent push back into a dead letter.
func (b *Biller) pushOne(ctx context.Context, p push) (bool, error) {
	attempts := 0
	err := b.call(ctx, func() error {
		stamped, err := billingdata.StampSending(ctx, b.pool, p.id, p.status, b.cfg.Now().UTC())
		if err != nil {
			return fmt.Errorf("stamping push %s before the call: %w", p.identifier, err)
		}
		if !stamped {
			return errGone
		}
		attempts++
		return b.stripe.SendMeterEvent(ctx, p.eventName, p.identifier, p.customer, p.delta, p.ts)
	})
	if errors.Is(err, errGone) {
		return false, nil
	}
	var se *stripeapi.Error
	if errors.As(err, &se) && se.Class == stripeapi.ClassDuplicate {
		err = nil // Stripe has it already: a crash after the call, a replay, or another biller.
	}
	if err != nil && !errors.As(err, &se) && ctx.Err() == nil {
		return false, err // Postgres failed before a call: the push stays open
	}
	b.cfg.Metrics.push(err, attempts)
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	out := context.WithoutCancel(ctx)
	if err == nil {
		if uerr := billingdata.MarkSent(out, b.pool, p.id, p.status, b.cfg.Now().UTC(), attempts); uerr != nil {
			return false, fmt.Errorf("recording push %s as sent: %w", p.identifier, uerr)
		}
		return true, nil
	}
	b.cfg.Logger.WarnContext(ctx, "push dead-lettered", "tenant", p.tenant, "metric", p.metric, "identifier", p.identifier, "attempts", attempts, "err", err)
	msg, _ := json.Marshal(map[string]any{
		"tenant": p.tenant, "metric": p.metric, "period": p.period.Format("2006-01"), "value": json.Number(p.delta),
		"cumulative_total": json.Number(p.cumulative), "identifier": p.identifier, "attempts": p.attempts + attempts, "last_error": err.Error(),
		"event_name": p.eventName, "stripe_customer_id": p.customer, "group_key": p.groupKey,
	})
	txErr := pgx.BeginFunc(out, b.pool, func(tx pgx.Tx) error {
		moved, err := billingdata.MarkDead(out, tx, p.id, p.status, attempts, err.Error())
		if err != nil || !moved {
			return err // settled by another biller meanwhile: no dead letter
		}
		return outbox.Enqueue(out, tx, outbox.Message{Topic: topics.BillingDLQ, Key: []byte(p.tenant), Value: msg,
			Headers: map[string]string{"identifier": p.identifier}})
	})
	if txErr != nil {
		return false, fmt.Errorf("dead-lettering push %s: %w", p.identifier, txErr)
	}
	return false, nil
}

// call runs fn under the client-side rate limit, retrying retriable
// Stripe errors with full-jitter exponential backoff, waiting at least
// Stripe's Retry-After, up to MaxAttempts.
func (b *Biller) call(ctx context.Context, fn func() error) error {
	bo := &fullJitter{min: b.cfg.BackoffMin, max: b.cfg.BackoffMax}
	_, err := backoff.Retry(ctx, func() (struct{}, error) {
		if err := b.limiter.Wait(ctx); err != nil {
			return struct{}{}, backoff.Permanent(err)
		}
		err := fn()
		if err == nil {
			return struct{}{}, nil
		}
		var se *stripeapi.Error
		if !errors.As(err, &se) {
			return struct{}{}, backoff.Permanent(err)
		}
		b.cfg.Metrics.failure(se.Class)
		if !se.Retriable {
			return struct{}{}, backoff.Permanent(err)
		}
		bo.atLeast = se.RetryAfter
		return struct{}{}, err
	}, backoff.WithBackOff(bo), backoff.WithMaxTries(uint(b.cfg.MaxAttempts)), backoff.WithMaxElapsedTime(0))
	return err
}

// fullJitter waits a uniformly random time in [0, min(max, min·2^n)), or
// atLeast when the server asked for longer.
type fullJitter struct {
	min, max, atLeast time.Duration
	n                 int
}

func (f *fullJitter) Reset() { f.n = 0 }

func (f *fullJitter) NextBackOff() time.Duration {
	ceiling := f.min << min(f.n, 30)
	if ceiling > f.max || ceiling <= 0 {
		ceiling = f.max
	}
	f.n++
	wait := time.Duration(rand.Int64N(int64(ceiling)))
	wait, f.atLeast = max(wait, f.atLeast), 0
	return wait
}
