package usagedata

import (
	"context"
	"fmt"

	"github.com/usagemeter/metering/internal/storage"
)

// RecordLost records that the records [firstLost, logStart) of a group's
// partition were deleted from the log before they were counted. Call it
// in the transaction that moves the stored offset to logStart.
func RecordLost(ctx context.Context, q storage.Executor, group, topic string, partition int, firstLost, logStart int64) error {
	if _, err := q.Exec(ctx, `INSERT INTO consumer_lost_records (consumer_group, topic, partition, first_lost, log_start)
		VALUES ($1, $2, $3, $4, $5)`, group, topic, partition, firstLost, logStart); err != nil {
		return fmt.Errorf("recording lost records of partition %d: %w", partition, err)
	}
	return nil
}
