package rollup

import (
	"context"
	"fmt"
	"time"
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
	if _, err := tx.Exec(ctx, `INSERT INTO consumer_lost_records (consumer_group, topic, partition, first_lost, log_start)
		VALUES ($1, $2, $3, $4, $5)`, a.cfg.Group, a.cfg.Topic, partition, from, logStart); err != nil {
		return fmt.Errorf("recording lost records of partition %d: %w", partition, err)
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
	rows, err := a.pool.Query(ctx, `SELECT partition, next_offset FROM consumer_offsets
		WHERE consumer_group = $1 AND topic = $2`, a.cfg.Group, a.cfg.Topic)
	if err != nil {
		return nil, fmt.Errorf("reading stored offsets: %w", err)
	}
	defer rows.Close()
	out := map[int]int64{}
	for rows.Next() {
		var p int
		var next int64
		if err := rows.Scan(&p, &next); err != nil {
			return nil, fmt.Errorf("reading stored offsets: %w", err)
		}
		out[p] = next
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading stored offsets: %w", err)
	}
	return out, nil
}
