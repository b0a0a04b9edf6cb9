package usagedata

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/storage"
)

// LedgerInsert is a batch of events to insert into the dedup ledger, as
// parallel columns (row i is element i of each).
type LedgerInsert struct {
	Tenants, IDs, Metrics []string
	Hashes                [][]byte
	Values                []int64
	Times                 []time.Time
	Partitions            []int32
	Offsets               []int64
}

// InsertLedger inserts the rows of b in one statement, skipping every
// (tenant, event id) already in the ledger, and calls inserted with the
// key of each row it inserted: the events counted for the first time.
func InsertLedger(ctx context.Context, q storage.Executor, b *LedgerInsert, inserted func(tenant, id string)) error {
	rows, err := q.Query(ctx, `INSERT INTO ledger (tenant, event_id, payload_hash, metric, value, event_time, event_day, src_partition, src_offset)
		SELECT t, i, h, m, v, ts, (ts AT TIME ZONE 'UTC')::date, p, o
		FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::bigint[], $6::timestamptz[], $7::int[], $8::bigint[])
			AS b(t, i, h, m, v, ts, p, o)
		ON CONFLICT (tenant, event_id) DO NOTHING
		RETURNING tenant, event_id`, b.Tenants, b.IDs, b.Hashes, b.Metrics, b.Values, b.Times, b.Partitions, b.Offsets)
	if err != nil {
		return fmt.Errorf("inserting into the ledger: %w", err)
	}
	// Scanned into variables outside the loop: each Scan sets new
	// strings, and the loop allocates nothing more per row.
	var tenant, id string
	for rows.Next() {
		if err := rows.Scan(&tenant, &id); err != nil {
			rows.Close()
			return fmt.Errorf("inserting into the ledger: %w", err)
		}
		inserted(tenant, id)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("inserting into the ledger: %w", err)
	}
	return nil
}

// LedgerRow is the counted event of one (tenant, event id).
type LedgerRow struct {
	Hash   []byte
	Metric string
	Value  int64
	At     time.Time
	// Recorded is when the event was counted (recorded_at).
	Recorded time.Time
}

// ReadLedger reads the ledger rows of the keys (tenants[i], ids[i]) in
// one statement and calls row with each found; keys not in the ledger are
// skipped. With lock it locks the rows FOR UPDATE in (tenant, event id)
// order, so concurrent transactions locking overlapping keys take turns
// instead of deadlocking.
func ReadLedger(ctx context.Context, q storage.Executor, tenants, ids []string, lock bool, row func(tenant, id string, r LedgerRow)) error {
	if len(tenants) == 0 {
		return nil
	}
	sql := `SELECT l.tenant, l.event_id, l.payload_hash, l.metric, l.value, l.event_time, l.recorded_at FROM ledger l
		JOIN unnest($1::text[], $2::text[]) AS b(t, i) ON l.tenant = b.t AND l.event_id = b.i`
	if lock {
		sql += ` ORDER BY l.tenant, l.event_id FOR UPDATE OF l`
	}
	rows, err := q.Query(ctx, sql, tenants, ids)
	if err != nil {
		return fmt.Errorf("reading the ledger: %w", err)
	}
	// Scanned into variables outside the loop: each Scan sets new
	// strings and a new hash, and row gets r by value.
	var tenant, id string
	var r LedgerRow
	for rows.Next() {
		if err := rows.Scan(&tenant, &id, &r.Hash, &r.Metric, &r.Value, &r.At, &r.Recorded); err != nil {
			rows.Close()
			return fmt.Errorf("reading the ledger: %w", err)
		}
		row(tenant, id, r)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("reading the ledger: %w", err)
	}
	return nil
}

// LockLedgerRow reads and locks (FOR UPDATE) the ledger row of tenant's
// event id; ok is false when the ledger holds none (never counted, or
// forgotten by retention).
func LockLedgerRow(ctx context.Context, q storage.Executor, tenant, id string) (r LedgerRow, ok bool, err error) {
	err = q.QueryRow(ctx, `SELECT payload_hash, metric, value, event_time FROM ledger WHERE tenant = $1 AND event_id = $2 FOR UPDATE`,
		tenant, id).Scan(&r.Hash, &r.Metric, &r.Value, &r.At)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return LedgerRow{}, false, nil
	case err != nil:
		return LedgerRow{}, false, fmt.Errorf("locking the ledger row of tenant %q id %q: %w", tenant, id, err)
	}
	return r, true, nil
}

// RaiseLedger sets, in one statement, the value and payload hash of the
// ledger rows (tenants[i], ids[i]) to values[i] and hashes[i]: the
// counted event of each key becomes the resend that raised it. Callers
// raise only rows they locked (ReadLedger with lock) and only to a larger
// value.
func RaiseLedger(ctx context.Context, q storage.Executor, tenants, ids []string, values []int64, hashes [][]byte) error {
	if len(tenants) == 0 {
		return nil
	}
	if _, err := q.Exec(ctx, `UPDATE ledger l SET value = b.v, payload_hash = b.h
		FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bytea[]) AS b(t, i, v, h)
		WHERE l.tenant = b.t AND l.event_id = b.i`, tenants, ids, values, hashes); err != nil {
		return fmt.Errorf("raising counted events in the ledger: %w", err)
	}
	return nil
}

// RaiseLedgerRow sets the value and payload hash of tenant's event id in
// the ledger, as RaiseLedger does for one row.
func RaiseLedgerRow(ctx context.Context, q storage.Executor, tenant, id string, value int64, hash []byte) error {
	if _, err := q.Exec(ctx, `UPDATE ledger SET value = $3, payload_hash = $4 WHERE tenant = $1 AND event_id = $2`,
		tenant, id, value, hash); err != nil {
		return fmt.Errorf("raising the counted event of tenant %q id %q: %w", tenant, id, err)
	}
	return nil
}
