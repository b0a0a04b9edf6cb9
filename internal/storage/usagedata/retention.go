package usagedata

import (
	"context"
	"fmt"
	"time"

	"github.com/usagemeter/metering/internal/storage"
)

// retentionBatch bounds the ledger rows one DELETE removes.
const retentionBatch = 10000

// DeleteExpired deletes ledger rows (and overflow rows) of event days
// before cutoff's (UTC) day, that is of event times before that day's
// midnight, in statements of at most 10000 rows so that, on a pool, no
// transaction grows large, and returns how many it deleted. A forgotten
// id counts again if resent, so the caller picks a cutoff before every
// event time it can still accept (rollup.LedgerCutoff).
func DeleteExpired(ctx context.Context, q storage.Executor, cutoff time.Time) (int64, error) {
	c := cutoff.UTC()
	day := time.Date(c.Year(), c.Month(), c.Day(), 0, 0, 0, 0, time.UTC)
	var total int64
	for _, del := range []struct{ table, sql string }{
		{"ledger", `DELETE FROM ledger WHERE ctid IN (SELECT ctid FROM ledger WHERE event_time < $1 LIMIT 10000)`},
		{"ledger_overflow", `DELETE FROM ledger_overflow WHERE ctid IN (SELECT ctid FROM ledger_overflow WHERE event_time < $1 LIMIT 10000)`},
	} {
		for {
			tag, err := q.Exec(ctx, del.sql, day)
			if err != nil {
				return total, fmt.Errorf("deleting %s rows before %s: %w", del.table, day.Format(time.DateOnly), err)
			}
			total += tag.RowsAffected()
			if tag.RowsAffected() < retentionBatch {
				break
			}
		}
	}
	return total, nil
}
