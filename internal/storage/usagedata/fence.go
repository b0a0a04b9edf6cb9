package usagedata

import (
	"context"
	"fmt"
	"time"

	"github.com/usagemeter/metering/internal/storage"
)

// AdvanceOffset moves the stored next offset of a group's partition from
// from to next, a compare-and-set: it stores next only when the stored
// offset is from (or none is stored yet) and reports whether it did. A
// false answer means another consumer owns the partition now. It takes
// the partition's row lock, so call it first in a batch's transaction.
func AdvanceOffset(ctx context.Context, q storage.Executor, group, topic string, partition int, from, next int64) (bool, error) {
	return AdvanceOffsetTo(ctx, q, group, topic, partition, from, next, time.Time{})
}

// AdvanceOffsetTo is AdvanceOffset that, in the same statement, moves the
// partition's watermark up to watermark (the greatest record timestamp of
// the records [from, next)); a zero watermark leaves it as it is. The
// watermark never moves back.
func AdvanceOffsetTo(ctx context.Context, q storage.Executor, group, topic string, partition int, from, next int64, watermark time.Time) (bool, error) {
	var wm *time.Time
	if !watermark.IsZero() {
		wm = &watermark
	}
	tag, err := q.Exec(ctx, `INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset, watermark)
		VALUES ($1, $2, $3, $5, $6)
		ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now(),
			watermark = GREATEST(consumer_offsets.watermark, EXCLUDED.watermark)
		WHERE consumer_offsets.next_offset = $4`, group, topic, partition, from, next, wm)
	if err != nil {
		return false, fmt.Errorf("advancing offset of partition %d: %w", partition, err)
	}
	return tag.RowsAffected() != 0, nil
}

// CaughtUp records that a consumer of the group read partition up to its
// high-water mark end at the instant at (taken before the read): every
// record appended by then lies below end. When the stored next offset has
// reached end, every such record is applied, so the watermark moves up to
// at. A partition without a stored offset whose log holds no record
// (empty: its log start is end) gets its row, next offset end. It reports
// whether it moved anything; false means records below end still wait
// (or the watermark is already at or past at). It takes no fence: the
// stored offset itself is the proof.
func CaughtUp(ctx context.Context, q storage.Executor, group, topic string, partition int, end int64, at time.Time, empty bool) (bool, error) {
	tag, err := q.Exec(ctx, `UPDATE consumer_offsets SET watermark = GREATEST(watermark, $5)
		WHERE consumer_group = $1 AND topic = $2 AND partition = $3 AND next_offset >= $4
			AND (watermark IS NULL OR watermark < $5)`, group, topic, partition, end, at)
	if err != nil {
		return false, fmt.Errorf("recording partition %d caught up: %w", partition, err)
	}
	if tag.RowsAffected() != 0 || !empty {
		return tag.RowsAffected() != 0, nil
	}
	// No row yet: only an empty log may be recorded afresh.
	tag, err = q.Exec(ctx, `INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset, watermark)
		VALUES ($1, $2, $3, $4, $5) ON CONFLICT (consumer_group, topic, partition) DO NOTHING`, group, topic, partition, end, at)
	if err != nil {
		return false, fmt.Errorf("recording empty partition %d caught up: %w", partition, err)
	}
	return tag.RowsAffected() != 0, nil
}
