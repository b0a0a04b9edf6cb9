package usagedata_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// The rows a transaction counts, in one InsertLedger or several, read
// back (ReadLedger, ledger_events) recorded at that transaction's now(),
// from one batch row, written by the ledger's trigger: also for rows a
// process of an older release inserts without knowing of batch rows.
func TestLedgerRecordedAtIsTheTransactionsNow(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	at := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	count := func(ids ...string) (now time.Time, xid uint64) {
		t.Helper()
		err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			for _, id := range ids { // a statement per id
				if err := usagedata.InsertLedger(ctx, tx, ledgerBatch("acme", at, id), func(string, string) {}); err != nil {
					return err
				}
			}
			return tx.QueryRow(ctx, `SELECT now(), pg_current_xact_id()::text::bigint`).Scan(&now, &xid)
		})
		if err != nil {
			t.Fatal(err)
		}
		return now, xid
	}
	first, firstXid := count("a", "b", "c")
	time.Sleep(2 * time.Millisecond)
	second, _ := count("d", "a")
	if !second.After(first) {
		t.Fatalf("second transaction's now() %v not after the first's %v", second, first)
	}
	count("a", "d") // nothing new: a batch row of no rows
	// An older release's insert, which writes no batch row itself.
	var old time.Time
	if err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO ledger (id, id_text, ref, payload_hash, value, event_time, src_partition, src_offset)
			SELECT ledger_key('acme', 'e'), ledger_id_text('e'), ref, 0, 1, $1, 0, 9 FROM ledger_names WHERE tenant = 'acme'`, at); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT now()`).Scan(&old)
	}); err != nil {
		t.Fatal(err)
	}

	want := map[string]time.Time{"a": first, "b": first, "c": first, "d": second, "e": old}
	ids := []string{"a", "b", "c", "d", "e"}
	for _, lock := range []bool{false, true} {
		got := map[string]time.Time{}
		if err := usagedata.ReadLedger(ctx, db.Pool, slices.Repeat([]string{"acme"}, len(ids)), ids, lock, func(_, id string, r usagedata.LedgerRow) {
			got[id] = r.Recorded
		}); err != nil {
			t.Fatal(err)
		}
		for id, w := range want {
			if !got[id].Equal(w) {
				t.Errorf("ReadLedger (lock %v): %s recorded at %v, want %v", lock, id, got[id], w)
			}
		}
	}
	for id, w := range want {
		var r time.Time
		if err := db.Pool.QueryRow(ctx, `SELECT recorded_at FROM ledger_events WHERE tenant = 'acme' AND event_id = $1`, id).Scan(&r); err != nil || !r.Equal(w) {
			t.Errorf("ledger_events: %s recorded at %v (%v), want %v", id, r, err, w)
		}
	}
	var batches, side, firstRows int
	if err := db.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM ledger_batches), (SELECT count(*) FROM ledger_recorded),
			(SELECT count(*) FROM ledger WHERE counted_xid = $1::bigint::text::xid8)`, int64(firstXid)).Scan(&batches, &side, &firstRows); err != nil {
		t.Fatal(err)
	}
	if batches != 4 || side != 0 || firstRows != 3 {
		t.Errorf("%d batch rows, %d side rows, %d rows of the first xid; want 4, 0, 3", batches, side, firstRows)
	}
	// The row, without recorded_at: 24 bytes of header, 62 of fixed data
	// (5 8-byte columns, the 16-byte id, ref, partition), then id_text (1
	// byte when empty: 87 bytes, a heap tuple of 88).
	var size int
	if err := db.Pool.QueryRow(ctx, `SELECT max(pg_column_size(l.*) - pg_column_size(l.id_text)) FROM ledger l`).Scan(&size); err != nil || size != 86 {
		t.Errorf("a ledger row without its id_text is %d bytes (%v), want 86", size, err)
	}
}

// Retention deletes the recorded_at side rows of the ledger rows it
// deletes, and the batch rows recorded more than a week before the
// cutoff's day, and keeps every other.
func TestDeleteExpiredSideAndBatchRows(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	db.LedgerEventsWritable(t)
	ctx := context.Background()
	cutoff := time.Date(2026, 11, 3, 15, 0, 0, 0, time.UTC)
	day := time.Date(2026, 11, 3, 0, 0, 0, 0, time.UTC)
	// Side rows (another xid's): one of an expired event, one kept.
	db.Exec(t, `INSERT INTO ledger_events (tenant, event_id, payload_hash, metric, value, event_time, src_partition, src_offset, recorded_at, counted_xid)
		VALUES ('acme', 'old', 0, 'calls', 1, $1, 0, 1, $1, '5000'), ('acme', 'kept', 0, 'calls', 1, $2, 0, 2, $2, '5001')`,
		day.Add(-time.Hour), day.Add(time.Hour))
	db.Exec(t, `INSERT INTO ledger_batches (counted_xid, recorded_at) VALUES ('6000', $1), ('6001', $2), ('6002', $3)`,
		day.Add(-7*24*time.Hour-time.Microsecond), day.Add(-7*24*time.Hour), day.Add(-time.Hour))
	// This transaction's batch row, recorded now: kept.
	if err := usagedata.InsertLedger(ctx, db.Pool, ledgerBatch("acme", day.Add(2*time.Hour), "fresh"), func(string, string) {}); err != nil {
		t.Fatal(err)
	}
	if n, err := usagedata.DeleteExpired(ctx, db.Pool, cutoff); err != nil || n != 1 {
		t.Fatalf("DeleteExpired = %d, %v; want 1", n, err)
	}
	var side, batches string
	if err := db.Pool.QueryRow(ctx, `SELECT (SELECT string_agg(e.event_id, ',') FROM ledger_recorded s JOIN ledger_events e ON ledger_key(e.tenant, e.event_id) = s.id),
			(SELECT string_agg(counted_xid::text, ',' ORDER BY recorded_at) FROM ledger_batches WHERE counted_xid::text::bigint >= 6000 AND counted_xid::text::bigint < 7000)`).
		Scan(&side, &batches); err != nil {
		t.Fatal(err)
	}
	if side != "kept" || batches != "6001,6002" {
		t.Errorf("side rows of %q, batch rows %q left; want kept, 6001,6002", side, batches)
	}
	var fresh int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM ledger_events WHERE event_id = 'fresh' AND recorded_at IS NOT NULL`).Scan(&fresh); err != nil || fresh != 1 {
		t.Errorf("fresh row with its time: %d (%v), want 1", fresh, err)
	}
}
