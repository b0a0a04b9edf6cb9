package events

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/compress"
)

// Topic is the Kafka topic usage events are written to.
const Topic = "usage.events"

// ProducerConfig configures a Producer. Only Brokers is required.
type ProducerConfig struct {
	// Brokers are the bootstrap broker addresses, host:port.
	Brokers []string
	// Topic defaults to Topic ("usage.events").
	Topic string
	// BatchSize is the most messages sent in one request per partition;
	// default 1000.
	BatchSize int
	// Linger is how long a partly filled batch waits for more events before
	// it is sent; default 2ms. Emit waits at least this long.
	Linger time.Duration
	// Compression of batches on the wire: default Lz4.
	Compression compress.Compression
	// MaxAttempts bounds the tries of each event on retriable errors
	// (leader changes, connection loss, timeouts); default 5. Emit also
	// stops retrying when its context ends.
	MaxAttempts int
	// BackoffMin and BackoffMax bound the exponential backoff between tries;
	// defaults 50ms and 1s.
	BackoffMin, BackoffMax time.Duration
	// WriteTimeout bounds one produce request; default 10s.
	WriteTimeout time.Duration
	// Transport overrides the connection settings (TLS, SASL); nil uses
	// kafka-go's default transport.
	Transport kafka.RoundTripper
	// Validator checks each event before Emit sends anything; its zero
	// value uses the contract's defaults. A service that accepts events
	// under its own rules (a longer horizon) sets the same ones here.
	Validator Validator
	// Logger receives retry warnings; nil discards them.
	Logger *slog.Logger
}

func (c *ProducerConfig) applyDefaults() {
	if c.Topic == "" {
		c.Topic = Topic
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 1000
	}
	if c.Linger <= 0 {
		c.Linger = 2 * time.Millisecond
	}
	if c.Compression == 0 {
		c.Compression = compress.Lz4
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 5
	}
	if c.BackoffMin <= 0 {
		c.BackoffMin = 50 * time.Millisecond
	}
	if c.BackoffMax <= 0 {
		c.BackoffMax = time.Second
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Producer writes events to Kafka: key = tenant (murmur2 partitioning, as
// Java clients do), value = the canonical JSON, acks from all in-sync
// replicas. It is safe for concurrent use; concurrent Emit calls share
// batches.
type Producer struct {
	cfg ProducerConfig
	w   *kafka.Writer
}

// NewProducer returns a Producer for cfg. It does not connect until the
// first Emit.
func NewProducer(cfg ProducerConfig) (*Producer, error) {
	cfg.applyDefaults()
	if len(cfg.Brokers) == 0 {
		return nil, errors.New("events: ProducerConfig.Brokers is empty")
	}
	w := &kafka.Writer{
		Addr:         kafka.TCP(cfg.Brokers...),
		Topic:        cfg.Topic,
		Balancer:     kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll,
		Compression:  cfg.Compression,
		BatchSize:    cfg.BatchSize,
		BatchBytes:   16 << 20,
		BatchTimeout: cfg.Linger,
		WriteTimeout: cfg.WriteTimeout,
		// Retries happen in Emit, per message, with backoff and the
		// caller's context; the writer tries each batch once.
		MaxAttempts: 1,
		Transport:   cfg.Transport,
	}
	return &Producer{cfg: cfg, w: w}, nil
}

// message returns the Kafka message Emit writes for e.
func message(e Event) kafka.Message {
	return kafka.Message{Key: []byte(e.Tenant), Value: e.AppendJSON(make([]byte, 0, 192))}
}

// Emit validates evs and writes them, returning nil only once Kafka
// acknowledged every one. Invalid events make it return a
// *ValidationError before anything is sent. On a retriable failure it
// resends only the events not yet acknowledged, with backoff, until
// MaxAttempts or ctx ends. When Emit fails some events may have been
// written: call it again with the same events (the same ids) and each
// counts exactly once.
func (p *Producer) Emit(ctx context.Context, evs ...Event) error {
	if len(evs) == 0 {
		return nil
	}
	var errs []FieldError
	for i, e := range evs {
		errs = append(errs, p.cfg.Validator.Validate(i, e)...)
	}
	if len(errs) > 0 {
		return &ValidationError{Errors: errs}
	}
	msgs := make([]kafka.Message, len(evs))
	for i, e := range evs {
		msgs[i] = message(e)
	}
	return p.writeMessages(ctx, msgs)
}

// writeMessages writes encoded messages with Emit's retry policy.
func (p *Producer) writeMessages(ctx context.Context, msgs []kafka.Message) error {
	pending := msgs
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = p.cfg.BackoffMin
	bo.MaxInterval = p.cfg.BackoffMax
	_, err := backoff.Retry(ctx, func() (struct{}, error) {
		err := p.w.WriteMessages(ctx, pending...)
		if err == nil {
			return struct{}{}, nil
		}
		var werrs kafka.WriteErrors
		if errors.As(err, &werrs) && len(werrs) == len(pending) {
			failed := pending[:0:0]
			var first error
			for i, e := range werrs {
				if e == nil {
					continue
				}
				if !Retriable(e) {
					return struct{}{}, backoff.Permanent(fmt.Errorf("events: writing to %s: %w", p.cfg.Topic, e))
				}
				if first == nil {
					first = e
				}
				failed = append(failed, pending[i])
			}
			p.cfg.Logger.WarnContext(ctx, "kafka write failed, retrying",
				"topic", p.cfg.Topic, "failed", len(failed), "of", len(pending), "err", first)
			pending = failed
			return struct{}{}, fmt.Errorf("events: writing %d messages to %s: %w", len(failed), p.cfg.Topic, first)
		}
		if ctx.Err() != nil || !Retriable(err) {
			return struct{}{}, backoff.Permanent(fmt.Errorf("events: writing to %s: %w", p.cfg.Topic, err))
		}
		p.cfg.Logger.WarnContext(ctx, "kafka write failed, retrying", "topic", p.cfg.Topic, "err", err)
		return struct{}{}, fmt.Errorf("events: writing to %s: %w", p.cfg.Topic, err)
	}, backoff.WithBackOff(bo), backoff.WithMaxTries(uint(p.cfg.MaxAttempts)), backoff.WithMaxElapsedTime(0))
	return err
}

// Retriable reports whether a Kafka write error may succeed when retried:
// broker-side temporary errors, timeouts and lost connections.
func Retriable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var kerr kafka.Error
	if errors.As(err, &kerr) {
		return kerr.Temporary() || kerr == kafka.UnknownTopicOrPartition || kerr == kafka.LeaderNotAvailable ||
			kerr == kafka.NotLeaderForPartition || kerr == kafka.NotEnoughReplicas ||
			kerr == kafka.NotEnoughReplicasAfterAppend || kerr == kafka.RequestTimedOut
	}
	var mtl kafka.MessageTooLargeError
	if errors.As(err, &mtl) {
		return false
	}
	var nerr net.Error
	if errors.As(err, &nerr) {
		return true
	}
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed)
}

// Close flushes pending batches and releases connections.
func (p *Producer) Close() error {
	if err := p.w.Close(); err != nil {
		return fmt.Errorf("events: closing producer: %w", err)
	}
	return nil
}
