// Package publish puts accepted events on Kafka for the ingest API with
// back-pressure: a bounded number of events in flight and a deadline per
// publish, so a slow or absent broker turns into fast 503s rather than
// unbounded memory and hung clients.
//
// The ingest API hands it events.Event values and it hands them to an
// Emitter (events.Producer, which encodes and writes them), so it knows
// nothing of Kafka's client.
//
// Invariant: Publish returns nil only when the emitter acknowledged every
// event; on error the caller must treat the whole request as not
// accepted (some events may have been written; their ids make a resend
// safe).
package publish

import (
	"context"
	"errors"
	"fmt"
	"time"

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

// Emitter writes events and returns nil only once Kafka acknowledged
// every one; *events.Producer is one. It may check the events again: it
// should accept what the caller validated (events.ProducerConfig's
// Validator set as the ingest's Decoder's).
type Emitter interface {
	Emit(ctx context.Context, evs ...events.Event) error
}

// Publisher bounds and times publishes to an Emitter.
type Publisher struct {
	e        Emitter
	sem      *semaphore.Weighted
	capacity int64
	timeout  time.Duration
}

// New returns a Publisher allowing maxInFlight events at once, each
// publish bounded by timeout.
func New(e Emitter, maxInFlight int, timeout time.Duration) *Publisher {
	return &Publisher{e: e, sem: semaphore.NewWeighted(int64(maxInFlight)), capacity: int64(maxInFlight), timeout: timeout}
}

// Publish writes evs (already validated by the caller), or fails at once
// with ErrBusy when they would exceed the in-flight bound, or with
// ErrUnavailable when the emitter fails or the timeout passes.
func (p *Publisher) Publish(ctx context.Context, evs []events.Event) error {
	n := int64(len(evs))
	if n > p.capacity || !p.sem.TryAcquire(n) {
		return ErrBusy
	}
	defer p.sem.Release(n)
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	if err := p.e.Emit(ctx, evs...); err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return nil
}
