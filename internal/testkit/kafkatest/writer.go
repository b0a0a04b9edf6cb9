package kafkatest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/compress"

	"github.com/usagemeter/metering/internal/record"
)

// Writer writes records to one topic byte for byte, as events.Producer
// writes events (key-hash partitioning, LZ4, batches up to 16 MiB, acks
// from all replicas) but without checking them: for tests that need
// records no producer sends (invalid or huge values, forged timestamps).
type Writer struct {
	w *kafka.Writer
}

// NewWriter returns a Writer to topic on brokers; the caller closes it.
func NewWriter(brokers []string, topic string) *Writer {
	return &Writer{w: &kafka.Writer{
		Addr: kafka.TCP(brokers...), Topic: topic, Balancer: kafka.Murmur2Balancer{}, RequiredAcks: kafka.RequireAll,
		Compression: compress.Lz4, BatchSize: 1000, BatchBytes: 16 << 20, BatchTimeout: 2 * time.Millisecond,
	}}
}

// Write writes recs, in order, and returns once the broker acknowledged
// them all. A record's key, value, headers and time (when not zero) go out
// as they are; its topic, partition and offset are ignored.
func (w *Writer) Write(ctx context.Context, recs ...record.Record) error {
	msgs := make([]kafka.Message, len(recs))
	for i, r := range recs {
		msgs[i] = kafka.Message{Key: r.Key, Value: r.Value, Time: r.Time}
		for _, h := range r.Headers {
			msgs[i].Headers = append(msgs[i].Headers, kafka.Header{Key: h.Key, Value: h.Value})
		}
	}
	if err := w.w.WriteMessages(ctx, msgs...); err != nil {
		return fmt.Errorf("kafkatest: writing to %s: %w", w.w.Topic, err)
	}
	return nil
}

// Close flushes and releases the connections.
func (w *Writer) Close() error {
	if err := w.w.Close(); err != nil {
		return fmt.Errorf("kafkatest: closing the writer of %s: %w", w.w.Topic, err)
	}
	return nil
}

// Write writes recs to topic with a Writer of its own and fails tb when
// the broker does not acknowledge them.
func (c *Cluster) Write(tb testing.TB, topic string, recs ...record.Record) {
	tb.Helper()
	w := NewWriter(c.Brokers(), topic)
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.Write(ctx, recs...); err != nil {
		tb.Fatal(err)
	}
}
