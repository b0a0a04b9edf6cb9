// Package outbox publishes the messages other transactions wrote to the
// outbox table (quota breaches, dead letters, DLQ replays) to Kafka.
//
// Invariant: at-least-once. A row is marked published only after Kafka
// acknowledged it, in the transaction that locked it; a crash in between
// publishes it again, and every message carries a stable id (breach id,
// source offset) for consumers to deduplicate. Rows are published in id
// order per topic and key.
package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
)

// Channel is the Postgres NOTIFY channel that wakes the relay.
const Channel = "outbox"

// Writer publishes messages (a *kafka.Writer without a fixed topic).
type Writer interface {
	WriteMessages(ctx context.Context, msgs ...kafka.Message) error
}

// Relay moves outbox rows to Kafka.
type Relay struct {
	pool      *pgxpool.Pool
	w         Writer
	log       *slog.Logger
	batch     int
	poll      time.Duration
	published prometheus.Counter
	pending   prometheus.Gauge
}

// New returns a relay writing through w. reg may be nil.
func New(pool *pgxpool.Pool, w Writer, log *slog.Logger, reg prometheus.Registerer) *Relay {
	r := &Relay{pool: pool, w: w, log: log, batch: 500, poll: time.Second,
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "metering_outbox_published_total", Help: "Outbox messages published to Kafka.",
		}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "metering_outbox_pending", Help: "Outbox messages waiting to be published, at the last poll.",
		}),
	}
	if reg != nil {
		reg.MustRegister(r.published, r.pending)
	}
	return r
}

// NewWriter returns the Kafka writer the relay needs: topic per message,
// key-hash partitioning, acks from all replicas.
func NewWriter(brokers []string) *kafka.Writer {
	return &kafka.Writer{
		Addr: kafka.TCP(brokers...), Balancer: kafka.Murmur2Balancer{}, RequiredAcks: kafka.RequireAll,
		BatchTimeout: time.Millisecond, AllowAutoTopicCreation: true, MaxAttempts: 3,
	}
}

// Run publishes pending rows whenever a transaction notifies the channel,
// and at least every second, until ctx ends.
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
	if _, err := conn.Exec(ctx, "LISTEN "+Channel); err != nil {
		return fmt.Errorf("listening: %w", err)
	}
	defer func() { _, _ = conn.Exec(context.WithoutCancel(ctx), "UNLISTEN "+Channel) }()
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

// PublishPending publishes up to one batch of pending rows and returns how
// many it published.
func (r *Relay) PublishPending(ctx context.Context) (int, error) {
	n := 0
	err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT id, topic, msg_key, msg_value, headers FROM outbox
			WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED`, r.batch)
		if err != nil {
			return fmt.Errorf("reading outbox: %w", err)
		}
		var ids []int64
		var msgs []kafka.Message
		for rows.Next() {
			var id int64
			var m kafka.Message
			var headers []byte
			if err := rows.Scan(&id, &m.Topic, &m.Key, &m.Value, &headers); err != nil {
				rows.Close()
				return fmt.Errorf("reading outbox: %w", err)
			}
			var hs map[string]string
			if err := json.Unmarshal(headers, &hs); err != nil {
				rows.Close()
				return fmt.Errorf("outbox row %d headers: %w", id, err)
			}
			for _, k := range slices.Sorted(maps.Keys(hs)) {
				m.Headers = append(m.Headers, kafka.Header{Key: k, Value: []byte(hs[k])})
			}
			ids = append(ids, id)
			msgs = append(msgs, m)
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("reading outbox: %w", err)
		}
		if len(msgs) == 0 {
			return nil
		}
		if err := r.w.WriteMessages(ctx, msgs...); err != nil {
			return fmt.Errorf("publishing %d outbox messages: %w", len(msgs), err)
		}
		if _, err := tx.Exec(ctx, `UPDATE outbox SET published_at = now() WHERE id = ANY($1)`, ids); err != nil {
			return fmt.Errorf("marking outbox rows published: %w", err)
		}
		n = len(ids)
		return nil
	})
	if err != nil {
		return 0, err
	}
	r.published.Add(float64(n))
	var pending int64
	if err := r.pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE published_at IS NULL`).Scan(&pending); err == nil {
		r.pending.Set(float64(pending))
	}
	return n, nil
}

// Prune deletes rows published more than keep ago and returns how many.
func (r *Relay) Prune(ctx context.Context, keep time.Duration) (int64, error) {
	tag, err := r.pool.Exec(ctx, `DELETE FROM outbox WHERE published_at < now() - make_interval(secs => $1)`, keep.Seconds())
	if err != nil {
		return 0, fmt.Errorf("pruning outbox: %w", err)
	}
	return tag.RowsAffected(), nil
}
