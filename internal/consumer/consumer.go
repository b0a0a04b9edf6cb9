// Package consumer runs the aggregator's Kafka consumer-group membership:
// for each partition assigned to this member it reads usage.events from
// the offset stored in Postgres (never Kafka's committed offset), cuts
// batches by size and time (internal/kafkalog's reader loop, which rebuild
// shares), and hands them to the rollup package.
//
// After each Postgres commit the new offset is also committed to the
// group in Kafka, at most once a second per partition and never waited
// for: that copy is informational, for `kafka-consumer-groups.sh
// --describe` and lag exporters, and is never read back.
//
// Each batch's transaction moves its partition's watermark to the batch's
// greatest record timestamp (rollup); while a partition owned here is read
// to its log end, the watermark follows the clock, a look at the log ends
// every SessionTimeout/4 (caughtUp), so that billing periods are known
// complete without new records.
//
// Invariant: every record is applied or dead-lettered, exactly once, and
// the reader position advances only after a commit. An outage is retried
// with backoff until the batch commits (TestOutageRetriedAndStallReported);
// a record the database refuses is isolated by bisecting the batch into
// sub-batches, each its own transaction with the offset compare-and-set,
// and dead-lettered as unprocessable (TestBisectionIsolatesRefusedRecords);
// a partition that cannot make progress fails Ready, naming itself and the
// reason. A partition reader that fails is restarted with backoff within
// the generation (TestFailedReaderRestartsWithinTheGeneration), and a
// partition of another member that has records waiting but does not move
// for SessionTimeout + 5 s makes this member rejoin, so the group rebalances
// (TestPartitionsConsumedAgainAfterMembersAreKilled). A member that lost
// its partition is fenced by the offset compare-and-set.
package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"

	"github.com/usagemeter/metering/internal/kafkaauth"
	"github.com/usagemeter/metering/internal/kafkalog"
	"github.com/usagemeter/metering/internal/rollup"
)

// Config of a consumer.
type Config struct {
	Brokers []string
	// Security is the brokers' TLS and SASL; nil is plaintext.
	Security *kafkaauth.Security
	Topic    string
	Group    string
	// BatchSize and BatchWait cut batches: at most BatchSize records, and
	// a batch is committed at most BatchWait after its first record.
	BatchSize int
	BatchWait time.Duration
	// SessionTimeout of the group membership; default 10s.
	SessionTimeout time.Duration
	// CommitInterval is how often the offsets committed to Postgres are
	// copied to the group's offsets in Kafka; default 1s.
	CommitInterval time.Duration
	// StallAfter and StallAttempts say when a partition that cannot commit
	// counts as stalled (Ready fails, the stalled gauge is 1): failing for
	// StallAfter (default 30s), or StallAttempts times at one offset
	// (default 10).
	StallAfter    time.Duration
	StallAttempts int
	// RetryInitial is the first backoff after a failed batch; default 500ms.
	RetryInitial time.Duration
}

// Consumer consumes the topic as a member of the group.
type Consumer struct {
	cfg     Config
	agg     *rollup.Aggregator
	apply   applier
	stalls  *stalls
	log     *slog.Logger
	metrics *rollup.Metrics
	members atomic.Int32 // partitions currently assigned, -1 before joining
}

// New returns a consumer applying batches with agg. metrics may be nil.
func New(cfg Config, agg *rollup.Aggregator, log *slog.Logger, metrics *rollup.Metrics) *Consumer {
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 10000
	}
	if cfg.BatchWait <= 0 {
		cfg.BatchWait = 100 * time.Millisecond
	}
	if cfg.SessionTimeout <= 0 {
		cfg.SessionTimeout = 10 * time.Second
	}
	if cfg.CommitInterval <= 0 {
		cfg.CommitInterval = time.Second
	}
	if cfg.StallAfter <= 0 {
		cfg.StallAfter = 30 * time.Second
	}
	if cfg.StallAttempts <= 0 {
		cfg.StallAttempts = 10
	}
	if cfg.RetryInitial <= 0 {
		cfg.RetryInitial = 500 * time.Millisecond
	}
	c := &Consumer{cfg: cfg, agg: agg, apply: agg, stalls: newStalls(cfg.StallAfter, cfg.StallAttempts), log: log, metrics: metrics}
	c.members.Store(-1)
	return c
}

// Ready reports whether the consumer is a member of a group generation
// and every partition it owns makes progress; the error names each
// stalled partition and why.
func (c *Consumer) Ready(context.Context) error {
	if c.members.Load() < 0 {
		return errors.New("not a member of the consumer group yet")
	}
	return c.stalls.err()
}

// Run joins the group and consumes until ctx ends.
func (c *Consumer) Run(ctx context.Context) error {
	group, err := c.cluster().JoinGroup(c.cfg.Group, c.cfg.Topic, c.cfg.SessionTimeout, c.log)
	if err != nil {
		return err
	}
	defer group.Close()
	for {
		gen, err := group.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			c.members.Store(-1)
			c.log.WarnContext(ctx, "joining consumer group", "group", c.cfg.Group, "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Second):
			}
			continue
		}
		parts := gen.Partitions
		c.members.Store(int32(len(parts)))
		if c.metrics != nil {
			c.metrics.Rebalances.Inc()
			c.metrics.Assigned.Set(float64(len(parts)))
		}
		c.log.InfoContext(ctx, "joined generation", "generation", gen.ID, "member", gen.MemberID, "partitions", parts)
		committed := newOffsets()
		gen.Start(func(ctx context.Context) { c.copyOffsets(ctx, gen, committed) })
		owned := make(map[int]bool, len(parts))
		for _, p := range parts {
			owned[p] = true
		}
		gen.Start(func(ctx context.Context) { c.watchIdle(ctx, owned) })
		for _, partition := range parts {
			gen.Start(func(ctx context.Context) { c.runPartition(ctx, partition, committed) })
		}
	}
}

// cluster is the brokers the consumer reads.
func (c *Consumer) cluster() kafkalog.Cluster {
	return kafkalog.Cluster{Brokers: c.cfg.Brokers, Security: c.cfg.Security}
}

// runPartition consumes partition for as long as the generation lasts.
// A reader that fails is restarted with backoff: kafka-go ends the whole
// generation of this member as soon as any function given to
// Generation.Start returns, so returning on a reader error would stop
// every partition of the member and force a group rebalance. Only a
// fence (another member owns the partition now) ends the generation on
// purpose, so the member rejoins with a fresh assignment.
func (c *Consumer) runPartition(ctx context.Context, partition int, committed *offsets) {
	defer func() {
		if c.stalls.clear(partition) {
			c.setStalled(partition, 0)
		}
	}()
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = c.cfg.RetryInitial
	bo.MaxInterval = 5 * time.Second
	for {
		err := c.consumePartition(ctx, partition, committed)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, rollup.ErrFenced) {
			c.log.WarnContext(ctx, "partition fenced: another member owns it; rejoining the group", "partition", partition, "err", err)
			return
		}
		if c.metrics != nil {
			c.metrics.ReaderRestarts.WithLabelValues(strconv.Itoa(partition)).Inc()
		}
		reason := rollup.Sanitize(fmt.Sprint(err))
		c.log.ErrorContext(ctx, "partition reader failed; restarting it", "partition", partition, "err", reason)
		if c.stalls.failed(partition, -1, "reader: "+reason, time.Now()) {
			c.setStalled(partition, 1)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(bo.NextBackOff()):
		}
	}
}

// consumePartition reads one partition until ctx ends (the generation or
// the process ends), the partition is fenced, or reading fails.
func (c *Consumer) consumePartition(ctx context.Context, partition int, committed *offsets) error {
	next, err := c.storedOffset(ctx, partition)
	if err != nil {
		return err
	}
	if next, err = c.skipLost(ctx, partition, next); err != nil {
		return err
	}
	label := strconv.Itoa(partition)
	opt := kafkalog.ReadOptions{From: next, End: -1, BatchSize: c.cfg.BatchSize, BatchWait: c.cfg.BatchWait}
	err = c.cluster().Read(ctx, c.cfg.Topic, partition, opt, func(b kafkalog.Batch) error {
		from := next
		if from < 0 {
			from = b.Records[0].Offset
		}
		var err error
		if next, err = c.commit(ctx, partition, from, b.Records); err != nil {
			return err
		}
		committed.set(partition, next)
		if c.metrics != nil && b.HighWaterMark >= 0 {
			c.metrics.Lag.WithLabelValues(label).Set(float64(max(b.HighWaterMark-next, 0)))
		}
		return nil
	})
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// skipLost compares the stored offset next with the partition's log
// start: records below it were deleted by retention before they were
// counted. They are recorded as lost (audit row, metric, log) and the
// partition continues from the log start; never skipped silently.
func (c *Consumer) skipLost(ctx context.Context, partition int, next int64) (int64, error) {
	if next < 0 {
		return next, nil
	}
	start, err := c.cluster().LogStart(ctx, c.cfg.Topic, partition)
	if err != nil {
		return 0, err
	}
	if start <= next {
		return next, nil
	}
	if err := c.agg.SkipLost(ctx, partition, next, start); err != nil {
		return 0, err
	}
	return start, nil
}

func (c *Consumer) storedOffset(ctx context.Context, partition int) (int64, error) {
	var next int64
	bo := backoff.NewExponentialBackOff()
	bo.MaxInterval = 5 * time.Second
	_, err := backoff.Retry(ctx, func() (struct{}, error) {
		var err error
		next, err = c.agg.NextOffset(ctx, partition)
		return struct{}{}, err
	}, backoff.WithBackOff(bo), backoff.WithMaxElapsedTime(0))
	return next, err
}
