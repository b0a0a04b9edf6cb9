// Package relay publishes to Kafka the messages other transactions queued
// in the outbox (internal/storage/outbox)
// (quota breaches, dead letters, DLQ replays, billing dead letters).
//
// Invariant: outbox.Enqueue is the only way in. It writes the rows and notifies
// outbox.Channel, in the caller's transaction, so a message is published if and
// only if the transaction that queued it commits.
//
// Invariant: at-least-once. A row is marked published only after Kafka
// acknowledged it, in the transaction that locked it; a crash in between
// publishes it again, and every message carries a stable id (breach id,
// source offset) for consumers to deduplicate.
//
// Invariant: a message Kafka cannot take never blocks the messages of other
// keys, and holds back those of its own topic and key only until it is
// parked. A message Kafka refuses for good (see kafkalog.Permanent) is
// parked at once; one that failed in DefaultMaxAttempts rounds (see
// SetRetry) in which Kafka accepted other messages is parked then. Parked
// means set aside with its reason and attempt count, logged at error and
// counted in metering_outbox_parked, until on-call retries it (Unpark) or
// deletes it. A Kafka outage parks nothing.
//
// Order: relays in any number of processes take turns, one round at a time
// (outbox.LockRound, a transaction-level advisory lock), and a round hands
// rows to Kafka in id order; a failed row holds back the later rows of its
// topic and key until it is published or parked. So per topic and key
// Kafka receives the rows in id order, except a parked row, which goes
// out (if retried) after the rows behind it, and the repeats of
// at-least-once. Ids are taken at insert, not at commit: the order holds
// for rows of a topic and key that one writer at a time commits (a
// tenant's breaches and dead letters come from the one consumer owning
// its partition).
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/usagemeter/metering/internal/kafkalog"
	"github.com/usagemeter/metering/internal/record"
	"github.com/usagemeter/metering/internal/storage/outbox"
)

// Defaults of SetRetry.
const (
	DefaultMaxAttempts = 10
	DefaultRetryDelay  = 2 * time.Second
)

// Writer writes records, each to the topic it names, and returns nil once
// Kafka acknowledged every one; *kafkalog.Writer is one. When Kafka
// answered for each record, its error is one kafkalog.PerRecord splits;
// kafkalog.Permanent tells the errors Kafka would repeat for good.
type Writer interface {
	Write(ctx context.Context, recs ...record.Record) error
}

// Relay moves outbox rows to Kafka.
type Relay struct {
	pool        *pgxpool.Pool
	w           Writer
	log         *slog.Logger
	batch       int
	poll        time.Duration
	maxAttempts int
	retryDelay  time.Duration
	published   prometheus.Counter
	pending     prometheus.Gauge
	parked      prometheus.Gauge
	parkedTotal prometheus.Counter
}

// New returns a relay writing through w. reg may be nil.
func New(pool *pgxpool.Pool, w Writer, log *slog.Logger, reg prometheus.Registerer) *Relay {
	r := &Relay{pool: pool, w: w, log: log, batch: 500, poll: time.Second,
		maxAttempts: DefaultMaxAttempts, retryDelay: DefaultRetryDelay,
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "metering_outbox_published_total", Help: "Outbox messages published to Kafka.",
		}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "metering_outbox_pending", Help: "Outbox messages waiting to be published (parked ones excluded), after the last round.",
		}),
		parked: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "metering_outbox_parked", Help: "Outbox messages set aside because Kafka refused them, after the last round; alert when above 0.",
		}),
		parkedTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "metering_outbox_parked_total", Help: "Outbox messages this process parked.",
		}),
	}
	if reg != nil {
		reg.MustRegister(r.published, r.pending, r.parked, r.parkedTotal)
	}
	return r
}

// SetRetry sets how many failed rounds park a message (at least 1) and how
// long a failed message, and the later ones of its topic and key, wait
// before the next attempt.
func (r *Relay) SetRetry(maxAttempts int, delay time.Duration) {
	r.maxAttempts, r.retryDelay = max(maxAttempts, 1), delay
}

// Name is the relay's name as a service.
func (r *Relay) Name() string { return "outbox-relay" }

// Run publishes pending rows whenever a transaction notifies the channel,
// and at least every second, until ctx ends; it returns nil then.
func (r *Relay) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		if err := r.listen(ctx); err != nil && ctx.Err() == nil {
			r.log.WarnContext(ctx, "outbox relay", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
	return nil
}

func (r *Relay) listen(ctx context.Context) error {
	conn, err := r.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("connecting: %w", err)
	}
	defer conn.Release()
	if err := outbox.Listen(ctx, conn); err != nil {
		return err
	}
	defer func() { _ = outbox.Unlisten(context.WithoutCancel(ctx), conn) }()
	for {
		for {
			n, err := r.PublishPending(ctx)
			if err != nil {
				return err
			}
			if n < r.batch {
				break
			}
		}
		wctx, cancel := context.WithTimeout(ctx, r.poll)
		_, err := conn.Conn().WaitForNotification(wctx)
		cancel()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("waiting for notification: %w", err)
		}
	}
}

// round is what one round of PublishPending did.
type round struct {
	published int
	parked    []outbox.Failed
	retrying  int
	retryErr  error // the last error of the rows retrying
	outage    error // set when Kafka took nothing and nothing was parked
}

// PublishPending runs one round: it publishes up to one batch of pending
// rows and returns how many it published. It returns 0 at once when another
// relay is in a round. It parks the rows Kafka refuses for good, and counts
// a failed attempt on the others that failed. When Kafka accepted none of
// the batch and no row was parked (an outage, not a bad message), it
// counts no attempt and returns an error. Every failed row waits
// RetryDelay before its next attempt.
func (r *Relay) PublishPending(ctx context.Context) (int, error) {
	defer r.measure(ctx)
	var res round
	err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		res = round{}
		mine, err := outbox.LockRound(ctx, tx)
		if err != nil || !mine {
			return err // not mine: another relay is in a round; it sees our rows next
		}
		rows, err := outbox.Eligible(ctx, tx, r.batch)
		if err != nil || len(rows) == 0 {
			return err
		}
		res, err = r.settle(ctx, tx, rows, r.write(ctx, rows))
		return err
	})
	if err != nil {
		return 0, err
	}
	if res.outage != nil {
		return 0, res.outage
	}
	r.published.Add(float64(res.published))
	for _, p := range res.parked {
		r.parkedTotal.Inc()
		r.log.ErrorContext(ctx, "outbox message parked: it no longer blocks the messages behind it; retry or delete it",
			"id", p.ID, "topic", p.Topic, "key", string(p.Key), "bytes", p.Bytes, "attempts", p.Attempts, "reason", p.Reason)
	}
	if res.retrying > 0 {
		r.log.WarnContext(ctx, "outbox messages failed; retrying them", "failed", res.retrying, "err", res.retryErr)
	}
	return res.published, nil
}

// settle records in tx what Kafka made of rows (errs[i] the error of
// rows[i]): it marks the published rows, parks those refused for good, and
// makes the others wait, counting an attempt unless the round was an
// outage.
func (r *Relay) settle(ctx context.Context, tx pgx.Tx, rows []outbox.Pending, errs []error) (round, error) {
	var res round
	var published, failedIDs []int64
	var failedErrs []string
	for i, row := range rows {
		switch err := errs[i]; {
		case err == nil:
			published = append(published, row.ID)
		case kafkalog.Permanent(err):
			res.parked = append(res.parked, outbox.Failed{ID: row.ID, Topic: row.Record.Topic, Key: row.Record.Key,
				Bytes: len(row.Record.Value), Attempts: row.Attempts + 1, Reason: err.Error()})
		default:
			failedIDs, failedErrs, res.retryErr = append(failedIDs, row.ID), append(failedErrs, err.Error()), err
		}
	}
	if len(published) == 0 && len(res.parked) == 0 {
		// An outage, not a bad message: no attempt counts, but the rows
		// wait their retry delay like any failed row.
		res.outage = fmt.Errorf("publishing %d outbox messages: %w", len(rows), res.retryErr)
		_, err := outbox.RecordFailures(ctx, tx, failedIDs, failedErrs, r.retryDelay, r.maxAttempts, false)
		return res, err
	}
	if err := outbox.MarkPublished(ctx, tx, published); err != nil {
		return res, err
	}
	for _, p := range res.parked {
		if err := outbox.Park(ctx, tx, p.ID, p.Reason); err != nil {
			return res, err
		}
	}
	more, err := outbox.RecordFailures(ctx, tx, failedIDs, failedErrs, r.retryDelay, r.maxAttempts, true)
	if err != nil {
		return res, err
	}
	res.parked = append(res.parked, more...)
	res.retrying, res.published = len(failedIDs)-len(more), len(published)
	return res, nil
}

// write publishes the rows' records, one call per topic, and returns each
// record's error. A record that failed for good in a write of several is
// written again alone, so that only the record at fault is parked: a
// broker refuses a whole partition's batch for one record over its limit.
func (r *Relay) write(ctx context.Context, rows []outbox.Pending) []error {
	errs := make([]error, len(rows))
	byTopic := map[string][]int{}
	var topics []string
	for i, row := range rows {
		if byTopic[row.Record.Topic] == nil {
			topics = append(topics, row.Record.Topic)
		}
		byTopic[row.Record.Topic] = append(byTopic[row.Record.Topic], i)
	}
	for _, t := range topics {
		idx := byTopic[t]
		group := make([]record.Record, len(idx))
		for j, i := range idx {
			group[j] = rows[i].Record
		}
		err := r.w.Write(ctx, group...)
		if err == nil {
			continue
		}
		for j, e := range kafkalog.PerRecord(err, len(group)) {
			errs[idx[j]] = e
		}
		if len(group) == 1 {
			continue
		}
		for _, i := range idx {
			if kafkalog.Permanent(errs[i]) {
				errs[i] = r.w.Write(ctx, rows[i].Record)
			}
		}
	}
	return errs
}

// measure sets the pending and parked gauges from the table.
func (r *Relay) measure(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	if pending, parked, err := outbox.Counts(ctx, r.pool); err == nil {
		r.pending.Set(float64(pending))
		r.parked.Set(float64(parked))
	}
}

// Unpark puts the parked rows ids (every parked row when ids is empty)
// back in line with no attempts counted, wakes the relays, and returns how
// many it put back. They go out ahead of later rows of their key.
func Unpark(ctx context.Context, pool *pgxpool.Pool, ids ...int64) (int64, error) {
	var n int64
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		var err error
		if n, err = outbox.Unpark(ctx, tx, ids...); err != nil {
			return err
		}
		return outbox.Wake(ctx, tx)
	})
	return n, err
}

// Prune deletes rows published more than keep ago and returns how many.
func (r *Relay) Prune(ctx context.Context, keep time.Duration) (int64, error) {
	return outbox.Prune(ctx, r.pool, keep)
}
