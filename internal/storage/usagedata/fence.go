package usagedata

import (
	"context"
	"fmt"

	"github.com/usagemeter/metering/internal/storage"
)

// AdvanceOffset moves the stored next offset of a group's partition from
// from to next, a compare-and-set: it stores next only when the stored
// offset is from (or none is stored yet) and reports whether it did. A
// false answer means another consumer owns the partition now. It takes
// the partition's row lock, so call it first in a batch's transaction.
func AdvanceOffset(ctx context.Context, q storage.Executor, group, topic string, partition int, from, next int64) (bool, error) {
	tag, err := q.Exec(ctx, `INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset)
		VALUES ($1, $2, $3, $5)
		ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()
		WHERE consumer_offsets.next_offset = $4`, group, topic, partition, from, next)
	if err != nil {
		return false, fmt.Errorf("advancing offset of partition %d: %w", partition, err)
	}
	return tag.RowsAffected() != 0, nil
}
