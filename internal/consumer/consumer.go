// Package consumer runs the aggregator's Kafka consumer-group membership:
// for each partition assigned to this member it reads usage.events from
// the offset stored in Postgres (never Kafka's committed offset), cuts
// batches by size and time, and hands them to the aggregate package.
//
// After each Postgres commit the new offset is also committed to the
// group in Kafka, at most once a second per partition and never waited
// for: that copy is informational, for `kafka-consumer-groups.sh
// --describe` and lag exporters, and is never read back.
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
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/metering/internal/kafkaauth"
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
	group, err := kafka.NewConsumerGroup(kafka.ConsumerGroupConfig{
		ID: c.cfg.Group, Brokers: c.cfg.Brokers, Dialer: c.cfg.Security.Dialer(), Topics: []string{c.cfg.Topic},
		SessionTimeout: c.cfg.SessionTimeout, RebalanceTimeout: c.cfg.SessionTimeout,
		HeartbeatInterval: c.cfg.SessionTimeout / 5, JoinGroupBackoff: time.Second,
		WatchPartitionChanges: true, PartitionWatchInterval: 10 * time.Second,
		StartOffset: kafka.FirstOffset,
		// kafka-go's own account of joins, syncs and heartbeats: what
		// explains a rebalance that takes long.
		Logger: kafka.LoggerFunc(func(msg string, args ...any) {
			c.log.Debug("kafka consumer group: "+fmt.Sprintf(msg, args...), "group", c.cfg.Group)
		}),
		ErrorLogger: kafka.LoggerFunc(func(msg string, args ...any) {
			c.log.Warn("kafka consumer group: "+fmt.Sprintf(msg, args...), "group", c.cfg.Group)
		}),
	})
	if err != nil {
		return fmt.Errorf("creating consumer group %s: %w", c.cfg.Group, err)
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
		assigned := gen.Assignments[c.cfg.Topic]
		c.members.Store(int32(len(assigned)))
		if c.metrics != nil {
			c.metrics.Rebalances.Inc()
			c.metrics.Assigned.Set(float64(len(assigned)))
		}
		parts := make([]int, len(assigned))
		for i, a := range assigned {
			parts[i] = a.ID
		}
		slices.Sort(parts)
		c.log.InfoContext(ctx, "joined generation", "generation", gen.ID, "member", gen.MemberID, "partitions", parts)
		committed := newOffsets()
		gen.Start(func(ctx context.Context) { c.copyOffsets(ctx, gen, committed) })
		owned := make(map[int]bool, len(parts))
		for _, p := range parts {
			owned[p] = true
		}
		gen.Start(func(ctx context.Context) { c.watchIdle(ctx, owned) })
		for _, a := range assigned {
			partition := a.ID
			gen.Start(func(ctx context.Context) { c.runPartition(ctx, partition, committed) })
		}
	}
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
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers: c.cfg.Brokers, Dialer: c.cfg.Security.Dialer(), Topic: c.cfg.Topic, Partition: partition,
		MinBytes: 1, MaxBytes: 16 << 20, MaxWait: 50 * time.Millisecond, QueueCapacity: 1000,
		// An offset retention has deleted must come back to us (to be
		// recorded as lost), not be retried silently for ever.
		OffsetOutOfRangeError: true,
	})
	defer r.Close()
	start := next
	if start < 0 {
		start = kafka.FirstOffset
	}
	if err := r.SetOffset(start); err != nil {
		return fmt.Errorf("seeking partition %d to %d: %w", partition, start, err)
	}
	label := strconv.Itoa(partition)
	for {
		batch, hwm, err := c.fetchBatch(ctx, r)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("reading partition %d: %w", partition, err)
		}
		if len(batch) == 0 {
			continue
		}
		from := next
		if from < 0 {
			from = batch[0].Offset
		}
		next, err = c.commit(ctx, partition, from, batch)
		if err != nil {
			return err
		}
		committed.set(partition, next)
		if c.metrics != nil && hwm >= 0 {
			c.metrics.Lag.WithLabelValues(label).Set(float64(max(hwm-next, 0)))
		}
	}
}

// skipLost compares the stored offset next with the partition's log
// start: records below it were deleted by retention before they were
// counted. They are recorded as lost (audit row, metric, log) and the
// partition continues from the log start; never skipped silently.
func (c *Consumer) skipLost(ctx context.Context, partition int, next int64) (int64, error) {
	if next < 0 {
		return next, nil
	}
	cl := &kafka.Client{Addr: kafka.TCP(c.cfg.Brokers...), Transport: c.cfg.Security.Transport(), Timeout: 10 * time.Second}
	resp, err := cl.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{
		c.cfg.Topic: {kafka.FirstOffsetOf(partition)},
	}})
	if err != nil {
		return 0, fmt.Errorf("reading the log start of partition %d: %w", partition, err)
	}
	parts := resp.Topics[c.cfg.Topic]
	if len(parts) != 1 {
		return 0, fmt.Errorf("reading the log start of partition %d: %d answers", partition, len(parts))
	}
	if parts[0].Error != nil {
		return 0, fmt.Errorf("reading the log start of partition %d: %w", partition, parts[0].Error)
	}
	start := parts[0].FirstOffset
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

// fetchBatch blocks for the first record, then collects more until the
// batch is full or BatchWait has passed since the first.
func (c *Consumer) fetchBatch(ctx context.Context, r *kafka.Reader) ([]rollup.Record, int64, error) {
	m, err := r.FetchMessage(ctx)
	if err != nil {
		return nil, -1, err
	}
	batch := []rollup.Record{record(m)}
	hwm := m.HighWaterMark
	deadline, cancel := context.WithTimeout(ctx, c.cfg.BatchWait)
	defer cancel()
	for len(batch) < c.cfg.BatchSize {
		m, err := r.FetchMessage(deadline)
		if err != nil {
			if ctx.Err() != nil {
				return nil, -1, ctx.Err()
			}
			break // the batch's time is up
		}
		batch = append(batch, record(m))
		hwm = m.HighWaterMark
	}
	return batch, hwm, nil
}

func record(m kafka.Message) rollup.Record {
	var hs []rollup.Header
	for _, h := range m.Headers {
		hs = append(hs, rollup.Header{Key: h.Key, Value: h.Value})
	}
	return rollup.Record{Partition: m.Partition, Offset: m.Offset, Key: m.Key, Value: m.Value, Headers: hs, Time: m.Time}
}
