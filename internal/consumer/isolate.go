package consumer

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/usagemeter/metering/internal/rollup"
)

// applier commits batches; *rollup.Aggregator is one.
type applier interface {
	Apply(ctx context.Context, partition int, from int64, recs []rollup.Record) (rollup.Result, error)
	DeadLetter(ctx context.Context, partition int, from int64, rec rollup.Record, class, reason string) (rollup.Result, error)
}

var _ applier = (*rollup.Aggregator)(nil)

// failureKind says what to do about a failed batch.
type failureKind int

const (
	// transient: the database or the network is away (connection
	// errors, Postgres restarting, serialization failures, deadlocks).
	// Retried with backoff, however long it takes.
	transient failureKind = iota
	// recordCaused: the database refused data (SQLSTATE classes 22 data
	// exception, 23 integrity constraint, 54 program limit): some record
	// of the batch causes it. The batch is bisected to the record.
	recordCaused
	// other: any other database error, such as a missing table or an
	// internal error. It is not a record's fault, so no record is
	// dead-lettered for it; it is retried with backoff, and the stall
	// shows in /readyz and metrics.
	other
)

func (k failureKind) String() string {
	return [...]string{"transient", "record", "other"}[k]
}

// classify tells outages from errors a record causes.
func classify(err error) failureKind {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		code := pgErr.Code
		switch {
		case code == "40001", code == "40P01", code == "55P03", code == "55006",
			strings.HasPrefix(code, "08"), strings.HasPrefix(code, "53"), strings.HasPrefix(code, "57"):
			return transient
		case strings.HasPrefix(code, "22"), strings.HasPrefix(code, "23"), strings.HasPrefix(code, "54"):
			return recordCaused
		}
		return other
	}
	// Errors without a SQLSTATE come from the connection or the driver
	// (refused, reset, EOF, timeouts, a closed pool): retrying is safe,
	// dead-lettering a record for them is not.
	return transient
}

// stalls tracks partitions that cannot make progress.
type stalls struct {
	after    time.Duration // failing this long means stalled
	attempts int           // or this many failures at one offset
	mu       sync.Mutex
	parts    map[int]*stall
}

type stall struct {
	since    time.Time
	offset   int64
	failures int
	reason   string
	stalled  bool
}

func newStalls(after time.Duration, attempts int) *stalls {
	return &stalls{after: after, attempts: attempts, parts: map[int]*stall{}}
}

// failed records a failed attempt at offset and reports whether the
// partition just became stalled.
func (s *stalls) failed(partition int, offset int64, reason string, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.parts[partition]
	if st == nil {
		st = &stall{since: now, offset: offset}
		s.parts[partition] = st
	}
	if st.offset != offset {
		st.offset, st.failures = offset, 0
	}
	st.failures++
	st.reason = reason
	was := st.stalled
	st.stalled = now.Sub(st.since) >= s.after || st.failures >= s.attempts
	return st.stalled && !was
}

// clear forgets the partition's failures and reports whether it was stalled.
func (s *stalls) clear(partition int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.parts[partition]
	delete(s.parts, partition)
	return st != nil && st.stalled
}

// err names every stalled partition and why, or returns nil.
func (s *stalls) err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var msgs []string
	for p, st := range s.parts {
		if st.stalled {
			msgs = append(msgs, fmt.Sprintf("partition %d stalled at offset %d for %s after %d failures: %s",
				p, st.offset, time.Since(st.since).Round(time.Second), st.failures, st.reason))
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	return errors.New(strings.Join(msgs, "; "))
}

func (c *Consumer) setStalled(partition int, v float64) {
	if c.metrics != nil {
		c.metrics.Stalled.WithLabelValues(strconv.Itoa(partition)).Set(v)
	}
}

// commit applies batch at offset from and returns where the partition
// resumes. Outages are retried with backoff until the batch commits; a
// record the database refuses is isolated by bisection and dead-lettered
// as unprocessable, so the rest of the batch counts. Each sub-batch is its
// own transaction with the offset compare-and-set, applied in offset
// order, so exactly-once holds throughout.
func (c *Consumer) commit(ctx context.Context, partition int, from int64, batch []rollup.Record) (int64, error) {
	res, err := c.retry(ctx, partition, from, len(batch), func() (rollup.Result, error) {
		return c.apply.Apply(ctx, partition, from, batch)
	})
	if err == nil {
		return res.NextOffset, nil
	}
	if classify(err) != recordCaused || errors.Is(err, rollup.ErrFenced) || ctx.Err() != nil {
		return 0, err
	}
	if len(batch) == 1 {
		return c.deadLetter(ctx, partition, from, batch[0], err)
	}
	c.log.WarnContext(ctx, "a record of the batch is refused by the database; bisecting",
		"partition", partition, "from", from, "records", len(batch), "err", rollup.Sanitize(err.Error()))
	mid := len(batch) / 2
	next, err := c.commit(ctx, partition, from, batch[:mid])
	if err != nil {
		return 0, err
	}
	return c.commit(ctx, partition, next, batch[mid:])
}

func (c *Consumer) deadLetter(ctx context.Context, partition int, from int64, rec rollup.Record, cause error) (int64, error) {
	reason := "the database refused the record: " + rollup.Sanitize(cause.Error())
	c.log.ErrorContext(ctx, "isolated a record the database refuses; dead-lettering it", "partition", partition,
		"offset", rec.Offset, "class", rollup.ClassUnprocessable, "reason", reason)
	res, err := c.retry(ctx, partition, from, 1, func() (rollup.Result, error) {
		res, err := c.apply.DeadLetter(ctx, partition, from, rec, rollup.ClassUnprocessable, reason)
		if err != nil && classify(err) == recordCaused {
			// Not the record's bytes (they go to bytea): keep retrying.
			err = fmt.Errorf("dead-lettering offset %d: %w", rec.Offset, errors.Join(errDeadLetter, err))
		}
		return res, err
	})
	if err != nil {
		return 0, err
	}
	if c.metrics != nil {
		c.metrics.Isolated.Inc()
	}
	return res.NextOffset, nil
}

// errDeadLetter marks a failed dead-letter transaction, which is retried
// whatever the database said.
var errDeadLetter = errors.New("writing an unprocessable record's dead letter failed")

// retry runs op until it succeeds, the partition is fenced, ctx ends, or
// op fails for a record's sake (returned, for the caller to bisect).
// Every failure is logged and counted; a partition failing too long or
// too often is reported stalled until op succeeds.
func (c *Consumer) retry(ctx context.Context, partition int, from int64, records int, op func() (rollup.Result, error)) (rollup.Result, error) {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = c.cfg.RetryInitial
	bo.MaxInterval = 5 * time.Second
	for {
		res, err := op()
		if err == nil {
			if c.stalls.clear(partition) {
				c.setStalled(partition, 0)
				c.log.InfoContext(ctx, "partition moves again", "partition", partition, "offset", res.NextOffset)
			}
			return res, nil
		}
		if errors.Is(err, rollup.ErrFenced) || ctx.Err() != nil {
			return res, err
		}
		kind := classify(err)
		if errors.Is(err, errDeadLetter) {
			kind = other
		}
		if c.metrics != nil {
			c.metrics.BatchErrors.Inc()
			c.metrics.Retries.WithLabelValues(kind.String()).Inc()
		}
		if kind == recordCaused {
			return res, err
		}
		reason := rollup.Sanitize(err.Error())
		c.log.WarnContext(ctx, "batch failed, retrying", "kind", kind.String(), "partition", partition, "from", from,
			"records", records, "err", reason)
		if c.stalls.failed(partition, from, kind.String()+": "+reason, time.Now()) {
			c.setStalled(partition, 1)
			c.log.ErrorContext(ctx, "partition stalled: it cannot make progress", "partition", partition, "offset", from,
				"kind", kind.String(), "err", reason)
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(bo.NextBackOff()):
		}
	}
}
