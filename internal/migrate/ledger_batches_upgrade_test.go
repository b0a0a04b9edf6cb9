package migrate_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/migrate"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/migrations"
)

// TestUpgradeTo0034: a database made by the schema whose ledger rows
// carry recorded_at (0033), holding rows counted before lineage (no
// counted_xid), rows of one xid recorded at two different times, a
// batch's rows sharing their transaction's time and an overflow row,
// upgrades to the ledger without recorded_at with every column of every
// row reading back as before through ledger_events, no dropped column
// left in the ledger's tuples, and dedup refusing the old ids while
// counting new ones at their transaction's time.
func TestUpgradeTo0034(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.NewEmpty(t)
	if res, err := migrate.Apply(ctx, db.Pool, upTo(t, 33), quiet); err != nil || res.To != 33 {
		t.Fatalf("Apply up to 0033 = %+v, %v", res, err)
	}
	db.Exec(t, `INSERT INTO ledger_names (tenant, metric) VALUES ('acme', 'tokens'), ('globex', 'calls')`)
	insert := func(tenant, id, recorded, xid string, value int64) {
		t.Helper()
		db.Exec(t, `INSERT INTO ledger (payload_hash, value, event_time, src_offset, recorded_at, counted_xid, id, ref, src_partition, id_text)
			SELECT $3::bigint, $3::bigint, '2026-11-30 12:34:56.123456+00', $3::bigint + 100, coalesce($4::timestamptz, now()), $5::text::xid8,
				ledger_key($1, $2), n.ref, 2, ledger_id_text($2)
			FROM ledger_names n WHERE n.tenant = $1`, tenant, id, value, nilIfEmpty(recorded), nilIfEmpty(xid))
	}
	// Counted before lineage: no xid.
	insert("acme", "before-lineage-1", "2026-10-01 01:02:03.456789+00", "", 1)
	insert("acme", "0190f4c4-7d3e-7a1b-8c2d-3e4f5a6b7c80", "2026-10-01 01:02:04+00", "", 2)
	// One xid, two times (rows given an xid by hand).
	insert("acme", "mixed-1", "2026-10-02 00:00:00+00", "4000", 3)
	insert("globex", "mixed-2", "2026-10-02 00:00:00.000001+00", "4000", 4)
	// A batch: one transaction, its now().
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range []string{"batch-1", "batch-2", "0190f4c4-7d3e-7a1b-8c2d-3e4f5a6b7c81"} {
		if _, err := tx.Exec(ctx, `INSERT INTO ledger (payload_hash, value, event_time, src_offset, id, ref, src_partition, id_text)
			SELECT 7, $2, '2026-11-30 13:00:00+00', $2, ledger_key('globex', $1), n.ref, 1, ledger_id_text($1)
			FROM ledger_names n WHERE n.tenant = 'globex'`, id, int64(10+i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	// acme's UUID is the key; globex's same UUID is kept whole.
	db.Exec(t, `INSERT INTO ledger_overflow (tenant, event_id, payload_hash, metric, value, event_time, src_partition, src_offset, recorded_at)
		VALUES ('globex', '0190f4c4-7d3e-7a1b-8c2d-3e4f5a6b7c80', 9, 'calls', 9, '2026-11-30 14:00:00+00', 0, 9, '2026-11-30 14:00:01+00')`)

	read := func(query string) string {
		t.Helper()
		var s string
		if err := db.Pool.QueryRow(ctx, `SELECT coalesce(string_agg(r::text, E'\n'), '') FROM (`+query+`) AS r`).Scan(&s); err != nil {
			t.Fatalf("reading %s: %v", query, err)
		}
		return s
	}
	const events = `SELECT tenant, event_id, payload_hash, metric, value, event_time, event_day, src_partition, src_offset, recorded_at, counted_xid
		FROM ledger_events ORDER BY tenant, event_id COLLATE "C"`
	before := read(events)
	if n := read(`SELECT count(DISTINCT recorded_at) FROM ledger`); n != "(5)" {
		t.Fatalf("%s distinct recorded_at before the upgrade, want 5", n)
	}

	if res, err := migrate.Apply(ctx, db.Pool, migrations.FS, quiet); err != nil || res.From != 33 {
		t.Fatalf("upgrade = %+v, %v", res, err)
	}
	if after := read(events); after != before {
		t.Errorf("ledger_events after the upgrade:\n%s\nwant\n%s", after, before)
	}
	// The batch's rows read their time from its one batch row; the rows of
	// no xid and of the mixed xid keep theirs on the side.
	if got := read(`SELECT count(*) FROM ledger_batches`); got != "(1)" {
		t.Errorf("%s batch rows, want 1 (the batch's)", got)
	}
	if got := read(`SELECT count(*) FROM ledger_recorded`); got != "(4)" {
		t.Errorf("%s side rows, want 4", got)
	}
	if got := read(`SELECT count(*) FROM pg_attribute WHERE attrelid = 'ledger'::regclass AND attnum > 0 AND (attisdropped OR attname = 'recorded_at')`); got != "(0)" {
		t.Errorf("%s dropped or recorded_at columns in the ledger, want 0", got)
	}

	b := &usagedata.LedgerInsert{}
	for i, r := range []struct{ tenant, id, metric string }{
		{"acme", "before-lineage-1", "tokens"}, {"acme", "0190f4c4-7d3e-7a1b-8c2d-3e4f5a6b7c80", "tokens"}, {"acme", "mixed-1", "tokens"},
		{"globex", "mixed-2", "calls"}, {"globex", "batch-1", "calls"}, {"globex", "0190f4c4-7d3e-7a1b-8c2d-3e4f5a6b7c81", "calls"},
		{"globex", "0190f4c4-7d3e-7a1b-8c2d-3e4f5a6b7c80", "calls"}, {"acme", "new-1", "tokens"}, {"globex", "new-2", "calls"},
	} {
		b.Tenants, b.IDs, b.Metrics = append(b.Tenants, r.tenant), append(b.IDs, r.id), append(b.Metrics, r.metric)
		b.Hashes, b.Values = append(b.Hashes, make([]byte, 32)), append(b.Values, 1)
		b.Times = append(b.Times, time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC))
		b.Partitions, b.Offsets = append(b.Partitions, 1), append(b.Offsets, int64(200+i))
	}
	var counted []string
	var now time.Time
	err = pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		if err := usagedata.InsertLedger(ctx, tx, b, func(_, id string) { counted = append(counted, id) }); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT now()`).Scan(&now)
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(counted) != 2 || counted[0] == counted[1] || counted[0][:4] != "new-" || counted[1][:4] != "new-" {
		t.Errorf("counted %v after the upgrade, want new-1 and new-2 only", counted)
	}
	var recorded []time.Time
	rows, _ := db.Pool.Query(ctx, `SELECT recorded_at FROM ledger_events WHERE event_id LIKE 'new-%'`)
	if recorded, err = pgx.CollectRows(rows, pgx.RowTo[time.Time]); err != nil || len(recorded) != 2 {
		t.Fatalf("new rows' recorded_at = %v, %v", recorded, err)
	}
	for _, r := range recorded {
		if !r.Equal(now) {
			t.Errorf("a new row's recorded_at is %v, want its transaction's now() %v", r, now)
		}
	}
	if old := read(`SELECT * FROM (` + events + `) e WHERE event_id NOT LIKE 'new-%'`); old != before {
		t.Errorf("old rows after counting new ones:\n%s\nwant\n%s", old, before)
	}
}

// nilIfEmpty is nil for "", else s.
func nilIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}
