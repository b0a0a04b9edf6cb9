package usagedata

import (
	"context"
	"fmt"
	"time"

	"github.com/usagemeter/metering/internal/storage"
)

// retentionBatch bounds the ledger rows one DELETE removes.
const retentionBatch = 10000

// DeleteExpired deletes ledger rows of event days before cutoff's (UTC)
// day, in statements of at most 10000 rows so that, on a pool, no
// transaction grows large, and returns how many it deleted. A forgotten
// id counts again if resent, so the caller picks a cutoff before every
// event time it can still accept (rollup.LedgerCutoff).
func DeleteExpired(ctx context.Context, q storage.Executor, cutoff time.Time) (int64, error) {
	day := cutoff.UTC().Format("2006-01-02")
	var total int64
	for {
		tag, err := q.Exec(ctx, `DELETE FROM ledger WHERE ctid IN (
			SELECT ctid FROM ledger WHERE event_day < $1::date LIMIT 10000)`, day)
		if err != nil {
			return total, fmt.Errorf("deleting ledger rows before %s: %w", day, err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < retentionBatch {
			return total, nil
		}
	}
}
