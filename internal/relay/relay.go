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
// parked. A message Kafka refuses for good (see Permanent) is parked at
// once; one that failed in DefaultMaxAttempts rounds (see SetRetry) in
// which Kafka accepted other messages is parked then. Parked means set
// aside with its reason and attempt count, logged at error and counted in
// metering_outbox_parked, until on-call retries it (Unpark) or deletes it.
// A Kafka outage parks nothing.
//
// Order: relays in any number of processes take turns, one round at a time
// (a transaction-level advisory lock), and a round hands rows to Kafka in
// id order; a failed row holds back the later rows of its topic and key
// until it is published or parked. So per topic and key Kafka receives the
// rows in id order, except a parked row, which goes out (if retried) after
// the rows behind it, and the repeats of at-least-once. Ids are taken at
// insert, not at commit: the order holds for rows of a topic and key that
// one writer at a time commits (a tenant's breaches and dead letters come
// from the one consumer owning its partition).
package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/usagemeter/metering/internal/storage/outbox"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
)

// The round lock: a two-key transaction-level advisory lock ("outb", 1).
const (
	lockSpace int32 = 0x6f757462
	roundLock int32 = 1
)

// Defaults of SetRetry.
const (
	DefaultMaxAttempts = 10
	DefaultRetryDelay  = 2 * time.Second
)

// Writer publishes messages (a *kafka.Writer without a fixed topic).
type Writer interface {
	WriteMessages(ctx context.Context, msgs ...kafka.Message) error
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

// NewWriter returns the Kafka writer the relay needs: topic per message,
// key-hash partitioning, acks from all replicas.
func NewWriter(brokers []string) *kafka.Writer {
	return &kafka.Writer{
		Addr: kafka.TCP(brokers...), Balancer: kafka.Murmur2Balancer{}, RequiredAcks: kafka.RequireAll,
		BatchTimeout: time.Millisecond, AllowAutoTopicCreation: true, MaxAttempts: 3,
	}
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
	if _, err := conn.Exec(ctx, "LISTEN "+outbox.Channel); err != nil {
		return fmt.Errorf("listening: %w", err)
	}
	defer func() { _, _ = conn.Exec(context.WithoutCancel(ctx), "UNLISTEN "+outbox.Channel) }()
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

// PublishPending runs one round: it publishes up to one batch of pending
// rows and returns how many it published. It returns 0 at once when another
// relay is in a round. It parks the rows Kafka refuses for good, and counts
// a failed attempt on the others that failed. When Kafka accepted none of
// the batch and no row was parked (an outage, not a bad message), it
// counts no attempt and returns an error. Every failed row waits
// RetryDelay before its next attempt.
func (r *Relay) PublishPending(ctx context.Context) (int, error) {
	defer r.measure(ctx)
	n := 0
	var outage, retryErr error
	var parked []parking
	var retrying int
	err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		parked, retrying = nil, 0
		var mine bool
		if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock($1, $2)`, lockSpace, roundLock).Scan(&mine); err != nil {
			return fmt.Errorf("taking the outbox round lock: %w", err)
		}
		if !mine {
			return nil // another relay is in a round; it sees our rows next
		}
		rows, err := r.eligible(ctx, tx)
		if err != nil || len(rows) == 0 {
			return err
		}
		msgs := make([]kafka.Message, len(rows))
		for i, row := range rows {
			msgs[i] = row.msg
		}
		errs := r.write(ctx, msgs)
		var published, failedIDs []int64
		var failedErrs []string
		var lastErr error
		for i, row := range rows {
			switch err := errs[i]; {
			case err == nil:
				published = append(published, row.id)
			case Permanent(err):
				parked = append(parked, parking{row: row, reason: err.Error()})
			default:
				failedIDs, failedErrs, lastErr = append(failedIDs, row.id), append(failedErrs, err.Error()), err
			}
		}
		if len(published) == 0 && len(parked) == 0 {
			// An outage, not a bad message: no attempt counts, but the rows
			// wait their retry delay like any failed row.
			outage = fmt.Errorf("publishing %d outbox messages: %w", len(rows), lastErr)
			_, err := r.recordFailures(ctx, tx, failedIDs, failedErrs, false)
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE outbox SET published_at = now() WHERE id = ANY($1)`, published); err != nil {
			return fmt.Errorf("marking outbox rows published: %w", err)
		}
		for i := range parked {
			p := &parked[i]
			if _, err := tx.Exec(ctx, `UPDATE outbox SET attempts = attempts + 1, last_error = $2, parked_at = now() WHERE id = $1`,
				p.row.id, p.reason); err != nil {
				return fmt.Errorf("parking outbox row %d: %w", p.row.id, err)
			}
			p.row.attempts++
		}
		more, err := r.recordFailures(ctx, tx, failedIDs, failedErrs, true)
		if err != nil {
			return err
		}
		parked = append(parked, more...)
		retrying, retryErr = len(failedIDs)-len(more), lastErr
		n = len(published)
		return nil
	})
	if err != nil {
		return 0, err
	}
	if outage != nil {
		return 0, outage
	}
	r.published.Add(float64(n))
	for _, p := range parked {
		r.parkedTotal.Inc()
		r.log.ErrorContext(ctx, "outbox message parked: it no longer blocks the messages behind it; retry or delete it",
			"id", p.row.id, "topic", p.row.msg.Topic, "key", string(p.row.msg.Key), "bytes", len(p.row.msg.Value),
			"attempts", p.row.attempts, "reason", p.reason)
	}
	if retrying > 0 {
		r.log.WarnContext(ctx, "outbox messages failed; retrying them", "failed", retrying, "err", retryErr)
	}
	return n, nil
}

// row is one pending outbox row.
type row struct {
	id       int64
	attempts int
	msg      kafka.Message
}

type parking struct {
	row    row
	reason string
}

// eligible reads up to one batch of the rows to send now, in id order:
// pending, not waiting for a retry, and with no earlier row of their topic
// and key waiting. Held rows are left out in SQL, so that a failing key
// never fills the batch and hides the other keys.
func (r *Relay) eligible(ctx context.Context, tx pgx.Tx) ([]row, error) {
	rows, err := tx.Query(ctx, `SELECT o.id, o.topic, o.msg_key, o.msg_value, o.headers, o.attempts
		FROM outbox o
		WHERE o.published_at IS NULL AND o.parked_at IS NULL
		AND NOT EXISTS (SELECT 1 FROM outbox w
			WHERE w.published_at IS NULL AND w.parked_at IS NULL AND w.retry_at > now()
			AND w.topic = o.topic AND w.msg_key IS NOT DISTINCT FROM o.msg_key AND w.id <= o.id)
		ORDER BY o.id LIMIT $1 FOR UPDATE OF o`, r.batch)
	if err != nil {
		return nil, fmt.Errorf("reading outbox: %w", err)
	}
	defer rows.Close()
	var out []row
	for rows.Next() {
		var rw row
		var headers []byte
		if err := rows.Scan(&rw.id, &rw.msg.Topic, &rw.msg.Key, &rw.msg.Value, &headers, &rw.attempts); err != nil {
			return nil, fmt.Errorf("reading outbox: %w", err)
		}
		var hs map[string]string
		if err := json.Unmarshal(headers, &hs); err != nil {
			return nil, fmt.Errorf("outbox row %d headers: %w", rw.id, err)
		}
		for _, k := range slices.Sorted(maps.Keys(hs)) {
			rw.msg.Headers = append(rw.msg.Headers, kafka.Header{Key: k, Value: []byte(hs[k])})
		}
		out = append(out, rw)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading outbox: %w", err)
	}
	return out, nil
}

// write publishes msgs, one call per topic, and returns each message's
// error. A message that failed for good in a write of several is written
// again alone, so that only the message at fault is parked: a broker
// refuses a whole partition's batch for one record over its limit.
func (r *Relay) write(ctx context.Context, msgs []kafka.Message) []error {
	errs := make([]error, len(msgs))
	byTopic := map[string][]int{}
	var topics []string
	for i, m := range msgs {
		if byTopic[m.Topic] == nil {
			topics = append(topics, m.Topic)
		}
		byTopic[m.Topic] = append(byTopic[m.Topic], i)
	}
	for _, t := range topics {
		idx := byTopic[t]
		group := make([]kafka.Message, len(idx))
		for j, i := range idx {
			group[j] = msgs[i]
		}
		err := r.w.WriteMessages(ctx, group...)
		var werrs kafka.WriteErrors
		switch {
		case err == nil:
			continue
		case errors.As(err, &werrs) && len(werrs) == len(group):
			for j, i := range idx {
				errs[i] = werrs[j]
			}
		default:
			for _, i := range idx {
				errs[i] = err
			}
		}
		if len(group) == 1 {
			continue
		}
		for _, i := range idx {
			if Permanent(errs[i]) {
				errs[i] = r.w.WriteMessages(ctx, msgs[i])
			}
		}
	}
	return errs
}

// recordFailures makes each row of ids, and the later rows of its topic
// and key, wait RetryDelay. When count is set (Kafka accepted other
// messages in the round, so the failure is the row's own) it counts a
// failed attempt and parks the rows that reached MaxAttempts, which it
// returns.
func (r *Relay) recordFailures(ctx context.Context, tx pgx.Tx, ids []int64, reasons []string, count bool) ([]parking, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	rows, err := tx.Query(ctx, `UPDATE outbox o SET attempts = o.attempts + $5::int, last_error = f.reason,
			retry_at = now() + make_interval(secs => $3),
			parked_at = CASE WHEN $5::int = 1 AND o.attempts + 1 >= $4 THEN now() END
		FROM unnest($1::bigint[], $2::text[]) AS f(id, reason)
		WHERE o.id = f.id
		RETURNING o.id, o.topic, o.msg_key, octet_length(o.msg_value), o.attempts, f.reason, o.parked_at IS NOT NULL`,
		ids, reasons, r.retryDelay.Seconds(), r.maxAttempts, boolInt(count))
	if err != nil {
		return nil, fmt.Errorf("recording failed outbox attempts: %w", err)
	}
	defer rows.Close()
	var parked []parking
	for rows.Next() {
		var p parking
		var size int
		var isParked bool
		if err := rows.Scan(&p.row.id, &p.row.msg.Topic, &p.row.msg.Key, &size, &p.row.attempts, &p.reason, &isParked); err != nil {
			return nil, fmt.Errorf("recording failed outbox attempts: %w", err)
		}
		if isParked {
			p.row.msg.Value = make([]byte, size)
			p.reason = fmt.Sprintf("failed %d attempts, the last: %s", p.row.attempts, p.reason)
			parked = append(parked, p)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("recording failed outbox attempts: %w", err)
	}
	return parked, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Permanent reports whether Kafka will never accept the message that got
// err as it is: it is too large for the writer or the broker, or its topic
// or record is invalid. Any other error may pass (a broker or partition
// leader away, a timeout, missing rights) and counts as a failed attempt.
func Permanent(err error) bool {
	var werrs kafka.WriteErrors
	if errors.As(err, &werrs) {
		n := 0
		for _, e := range werrs {
			if e != nil {
				if !Permanent(e) {
					return false
				}
				n++
			}
		}
		return n > 0
	}
	var tooLarge kafka.MessageTooLargeError
	if errors.As(err, &tooLarge) {
		return true
	}
	var kerr kafka.Error
	if errors.As(err, &kerr) {
		switch kerr {
		case kafka.MessageSizeTooLarge, kafka.RecordListTooLarge, kafka.InvalidTopic, kafka.InvalidTimestamp, kafka.InvalidRecord:
			return true
		}
	}
	return false
}

// measure sets the pending and parked gauges from the table.
func (r *Relay) measure(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	var pending, parked int64
	if err := r.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE parked_at IS NULL), count(*) FILTER (WHERE parked_at IS NOT NULL)
		FROM outbox WHERE published_at IS NULL`).Scan(&pending, &parked); err == nil {
		r.pending.Set(float64(pending))
		r.parked.Set(float64(parked))
	}
}

// ParkedMessage is a row the relay set aside.
type ParkedMessage struct {
	ID        int64
	Topic     string
	Key       []byte
	Bytes     int
	Attempts  int
	LastError string
	ParkedAt  time.Time
}

// Parked lists the parked rows, oldest first.
func Parked(ctx context.Context, pool *pgxpool.Pool) ([]ParkedMessage, error) {
	rows, err := pool.Query(ctx, `SELECT id, topic, msg_key, octet_length(msg_value), attempts, coalesce(last_error, ''), parked_at
		FROM outbox WHERE published_at IS NULL AND parked_at IS NOT NULL ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("listing parked outbox rows: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (ParkedMessage, error) {
		var p ParkedMessage
		err := row.Scan(&p.ID, &p.Topic, &p.Key, &p.Bytes, &p.Attempts, &p.LastError, &p.ParkedAt)
		return p, err
	})
	if err != nil {
		return nil, fmt.Errorf("listing parked outbox rows: %w", err)
	}
	return out, nil
}

// Unpark puts the parked rows ids (every parked row when ids is empty)
// back in line with no attempts counted, wakes the relays, and returns how
// many it put back. They go out ahead of later rows of their key.
func Unpark(ctx context.Context, pool *pgxpool.Pool, ids ...int64) (int64, error) {
	var n int64
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE outbox SET parked_at = NULL, attempts = 0, retry_at = NULL
			WHERE published_at IS NULL AND parked_at IS NOT NULL AND (coalesce(cardinality($1::bigint[]), 0) = 0 OR id = ANY($1))`, ids)
		if err != nil {
			return fmt.Errorf("unparking outbox rows: %w", err)
		}
		n = tag.RowsAffected()
		return outbox.Wake(ctx, tx)
	})
	return n, err
}

// Prune deletes rows published more than keep ago and returns how many.
func (r *Relay) Prune(ctx context.Context, keep time.Duration) (int64, error) {
	tag, err := r.pool.Exec(ctx, `DELETE FROM outbox WHERE published_at < now() - make_interval(secs => $1)`, keep.Seconds())
	if err != nil {
		return 0, fmt.Errorf("pruning outbox: %w", err)
	}
	return tag.RowsAffected(), nil
}
