package deadletters

import (
	"context"
	"fmt"

	"github.com/usagemeter/metering/internal/storage"
)

// RefusedOffsets returns the offsets from first to last (both included)
// of a topic's partition that were dead-lettered, whatever became of the
// dead letter since (pending, replayed or discarded): the records the
// aggregator refused to count.
func RefusedOffsets(ctx context.Context, q storage.Executor, topic string, partition int, first, last int64) (map[int64]bool, error) {
	rows, err := q.Query(ctx, `SELECT source_offset FROM usage_dlq
		WHERE source_topic = $1 AND source_partition = $2 AND source_offset BETWEEN $3 AND $4`, topic, partition, first, last)
	if err != nil {
		return nil, fmt.Errorf("reading the dead letters of partition %d: %w", partition, err)
	}
	defer rows.Close()
	refused := map[int64]bool{}
	for rows.Next() {
		var o int64
		if err := rows.Scan(&o); err != nil {
			return nil, fmt.Errorf("reading the dead letters of partition %d: %w", partition, err)
		}
		refused[o] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading the dead letters of partition %d: %w", partition, err)
	}
	return refused, nil
}
