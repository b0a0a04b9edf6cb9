package kafkalog

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/metering/internal/record"
)

// Writer writes records, each to the topic it names: partition by key
// hash (murmur2, as Java clients do), acks from all in-sync replicas,
// topics created on first use. It is safe for concurrent use.
type Writer struct {
	w *kafka.Writer
}

// WriterOption changes a Writer's defaults.
type WriterOption struct{ set func(*kafka.Writer) }

// MaxBatchBytes bounds the bytes of one produce request per partition
// (kafka-go's default, 1 MiB, otherwise). A record over it is refused
// before it reaches the broker (see Permanent).
func MaxBatchBytes(n int64) WriterOption {
	return WriterOption{func(w *kafka.Writer) { w.BatchBytes = n }}
}

// NewWriter returns a Writer to brokers through transport (the service's
// kafkaauth.Security Transport; nil is kafka-go's plaintext default). It
// connects on the first Write; the caller closes it.
func NewWriter(brokers []string, transport kafka.RoundTripper, opts ...WriterOption) *Writer {
	w := &kafka.Writer{
		Addr: kafka.TCP(brokers...), Balancer: kafka.Murmur2Balancer{}, RequiredAcks: kafka.RequireAll,
		BatchTimeout: time.Millisecond, AllowAutoTopicCreation: true, MaxAttempts: 3,
		Transport: transport,
	}
	for _, o := range opts {
		o.set(w)
	}
	return &Writer{w: w}
}

// Write writes recs and returns nil once Kafka acknowledged every one.
// Each record's topic, key, value and headers go out as they are; its
// partition, offset and time are ignored. When Kafka answered for each
// record, the error holds those answers: PerRecord splits it.
func (w *Writer) Write(ctx context.Context, recs ...record.Record) error {
	msgs := make([]kafka.Message, len(recs))
	n := 0
	for _, r := range recs {
		n += len(r.Headers)
	}
	headers := make([]kafka.Header, 0, n) // one allocation for every record's headers
	for i, r := range recs {
		start := len(headers)
		for _, h := range r.Headers {
			headers = append(headers, kafka.Header{Key: h.Key, Value: h.Value})
		}
		msgs[i] = kafka.Message{Topic: r.Topic, Key: r.Key, Value: r.Value}
		if len(headers) > start {
			msgs[i].Headers = headers[start:len(headers):len(headers)]
		}
	}
	if err := w.w.WriteMessages(ctx, msgs...); err != nil {
		return fmt.Errorf("writing to kafka: %w", err)
	}
	return nil
}

// Close flushes pending batches and releases the connections.
func (w *Writer) Close() error {
	if err := w.w.Close(); err != nil {
		return fmt.Errorf("kafkalog: closing writer: %w", err)
	}
	return nil
}

// PerRecord returns one error per record of a Write of n records that
// returned err: Kafka's answer for each (nil where it took the record)
// when it answered per record, else err for every record. A nil err gives
// n nils.
func PerRecord(err error, n int) []error {
	errs := make([]error, n)
	if err == nil {
		return errs
	}
	var werrs kafka.WriteErrors
	if errors.As(err, &werrs) && len(werrs) == n {
		copy(errs, werrs)
		return errs
	}
	for i := range errs {
		errs[i] = err
	}
	return errs
}

// Permanent reports whether Kafka will never accept the record that got
// err as it is: it is too large for the writer or the broker, or its
// topic or record is invalid. Any other error may pass (a broker or
// partition leader away, a timeout, missing rights). An error of several
// records is permanent when every failed one is.
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
