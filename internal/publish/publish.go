// Package publish puts accepted events on Kafka for the ingest API with
// back-pressure: a bounded number of events in flight and a deadline per
// publish, so a slow or absent broker turns into fast 503s rather than
// unbounded memory and hung clients.
//
// The ingest API hands it events.Event values; the Kafka message each
// becomes (key = tenant, value = the canonical JSON, as events.Producer's
// Emit writes it) is built here, so kafka-go stays behind this package.
//
// Invariant: Publish returns nil only when the writer acknowledged every
// message; on error the caller must treat the whole request as not
// accepted (some messages may have been written; their ids make a resend
// safe).
package publish

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"
	"golang.org/x/sync/semaphore"

	"github.com/usagemeter/metering/events"
)

// Errors of Publish.
var (
	// ErrBusy means the in-flight bound is reached: Kafka is not keeping up.
	ErrBusy = errors.New("too many events waiting for Kafka")
	// ErrUnavailable means Kafka did not acknowledge in time.
	ErrUnavailable = errors.New("kafka did not acknowledge the events")
)

// Writer writes messages and returns once they are acknowledged;
// *events.Producer is one.
type Writer interface {
	WriteMessages(ctx context.Context, msgs []kafka.Message) error
}

// Publisher bounds and times publishes to a Writer.
type Publisher struct {
	w        Writer
	sem      *semaphore.Weighted
	capacity int64
	timeout  time.Duration
}

// New returns a Publisher allowing maxInFlight events at once, each
// publish bounded by timeout.
func New(w Writer, maxInFlight int, timeout time.Duration) *Publisher {
	return &Publisher{w: w, sem: semaphore.NewWeighted(int64(maxInFlight)), capacity: int64(maxInFlight), timeout: timeout}
}

// Publish writes evs (already validated by the caller), or fails at once
// with ErrBusy when they would exceed the in-flight bound, or with
// ErrUnavailable when the writer fails or the timeout passes.
func (p *Publisher) Publish(ctx context.Context, evs []events.Event) error {
	n := int64(len(evs))
	if n > p.capacity || !p.sem.TryAcquire(n) {
		return ErrBusy
	}
	defer p.sem.Release(n)
	msgs := make([]kafka.Message, len(evs))
	for i, e := range evs {
		msgs[i] = events.Message(e)
	}
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	if err := p.w.WriteMessages(ctx, msgs); err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return nil
}
