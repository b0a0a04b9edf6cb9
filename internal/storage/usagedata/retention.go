package usagedata

import (
	"context"
	"fmt"
	"time"

	"github.com/usagemeter/metering/internal/storage"
)

// retentionBatch bounds the ledger rows one DELETE removes.
const retentionBatch = 10000

// batchMargin is how long before the retention cutoff's day a batch row
// (ledger_batches) must have been recorded to be deleted. A batch counts
// only events of times at most events.DefaultMaxFuture (5 minutes) after
// its clock's now, and records now() at its transaction's start: every
// event a batch recorded before the day's midnight minus batchMargin
// counted is before that midnight, so retention deleted its ledger rows (in
// this call or an earlier one), whatever the batch's duration or the
// skew between the aggregator's clock and the database's, up to a week
// (a margin that costs a week of batch rows, one per transaction).
// Deleting by time (ledger_batches_recorded_at) needs no index on
// ledger.counted_xid, which the ledger (one row per event) does not carry.
const batchMargin = 7 * 24 * time.Hour

// DeleteExpired deletes ledger rows (and overflow rows) of event days
// before cutoff's (UTC) day, that is of event times before that day's
// midnight, in statements of at most 10000 rows so that, on a pool, no
// transaction grows large, and returns how many it deleted. A forgotten
// id counts again if resent, so the caller picks a cutoff before every
// event time it can still accept (rollup.LedgerCutoff).
//
// The recorded_at side row (ledger_recorded) of a deleted ledger row is
// deleted by the same statement, so a row counted again later never
// reads an old time; batch rows (ledger_batches) recorded more than
// batchMargin before that midnight are deleted last: no ledger row
// refers to them any more. Neither is counted in the total.
func DeleteExpired(ctx context.Context, q storage.Executor, cutoff time.Time) (int64, error) {
	c := cutoff.UTC()
	day := time.Date(c.Year(), c.Month(), c.Day(), 0, 0, 0, 0, time.UTC)
	var total int64
	for _, del := range []struct {
		table, sql string
		before     time.Time
		counted    bool
	}{
		{"ledger", `WITH d AS (DELETE FROM ledger WHERE ctid IN (SELECT ctid FROM ledger WHERE event_time < $1 LIMIT 10000) RETURNING id),
				s AS (DELETE FROM ledger_recorded WHERE id IN (SELECT id FROM d))
			SELECT count(*) FROM d`, day, true},
		{"ledger_overflow", `WITH d AS (DELETE FROM ledger_overflow WHERE ctid IN (SELECT ctid FROM ledger_overflow WHERE event_time < $1 LIMIT 10000) RETURNING 1)
			SELECT count(*) FROM d`, day, true},
		{"ledger_batches", `WITH d AS (DELETE FROM ledger_batches WHERE ctid IN (SELECT ctid FROM ledger_batches WHERE recorded_at < $1 LIMIT 10000) RETURNING 1)
			SELECT count(*) FROM d`, day.Add(-batchMargin), false},
	} {
		for {
			var n int64
			if err := q.QueryRow(ctx, del.sql, del.before).Scan(&n); err != nil {
				return total, fmt.Errorf("deleting %s rows before %s: %w", del.table, del.before.Format(time.DateOnly), err)
			}
			if del.counted {
				total += n
			}
			if n < retentionBatch {
				break
			}
		}
	}
	return total, nil
}
