package rollup

import (
	"context"
	"fmt"
	"time"

	"github.com/usagemeter/metering/internal/storage/usagedata"
)

// DeadLetter records rec, the record at the partition's stored offset
// from, as a dead letter of class with reason (sanitised here), and moves
// the offset past it, in one transaction with the offset compare-and-set.
// The consumer uses it for a record that the database refuses and that
// would otherwise fail its batch for ever.
func (a *Aggregator) DeadLetter(ctx context.Context, partition int, from int64, rec Record, class, reason string) (Result, error) {
	start := time.Now()
	now := a.cfg.Now().UTC()
	res := Result{NextOffset: rec.Offset + 1}
	tx, err := a.pool.Begin(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("beginning dead-letter transaction: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if err := a.advanceOffset(ctx, tx, partition, from, res.NextOffset); err != nil {
		return Result{}, err
	}
	if err := a.deadLetters(ctx, tx, []decoded{{rec: rec, class: class, err: reason}}, now, &res); err != nil {
		return Result{}, err
	}
	if err := tx.Commit(ctx); err != nil {
		return Result{}, fmt.Errorf("committing dead letter of partition %d at offset %d: %w", partition, rec.Offset, err)
	}
	a.cfg.Metrics.observe(res, 1, time.Since(start))
	return res, nil
}

// SkipLost records that the records [from, logStart) of partition were
// deleted from the log before they were counted, and moves the stored
// offset to logStart, in one transaction with the offset compare-and-set.
// from must be the stored offset (not -1) and below logStart.
func (a *Aggregator) SkipLost(ctx context.Context, partition int, from, logStart int64) error {
	if from < 0 || logStart <= from {
		return fmt.Errorf("partition %d: nothing lost between offsets %d and %d", partition, from, logStart)
	}
	tx, err := a.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("beginning lost-records transaction: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if err := a.advanceOffset(ctx, tx, partition, from, logStart); err != nil {
		return err
	}
	if err := usagedata.RecordLost(ctx, tx, a.cfg.Group, a.cfg.Topic, partition, from, logStart); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("committing lost records of partition %d: %w", partition, err)
	}
	a.cfg.Metrics.lost(partition, logStart-from)
	a.cfg.Logger.ErrorContext(ctx, "records were deleted from the log before they were counted; continuing from the log start",
		"topic", a.cfg.Topic, "partition", partition, "first_lost", from, "log_start", logStart, "lost", logStart-from)
	return nil
}

// StoredOffsets returns every stored next offset of the group's topic, by
// partition.
func (a *Aggregator) StoredOffsets(ctx context.Context) (map[int]int64, error) {
	return usagedata.Offsets(ctx, a.pool, a.cfg.Group, a.cfg.Topic)
}
