package migrate_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/usagemeter/metering/internal/migrate"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/migrations"
)

// upTo returns the embedded migrations numbered 1 to last, byte for byte,
// as a database made by that release would have applied them.
func upTo(t *testing.T, last int) fstest.MapFS {
	t.Helper()
	all, err := migrate.Load(migrations.FS)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) <= last {
		t.Fatalf("only %d migrations, want more than %d", len(all), last)
	}
	fsys := fstest.MapFS{}
	for _, m := range all[:last] {
		fsys[fmt.Sprintf("%04d_%s.sql", m.Version, m.Name)] = &fstest.MapFile{Data: []byte(m.SQL)}
	}
	return fsys
}

// TestUpgradeFrom0010: a database made by the schema before meters
// (0010), holding plans, tenants, keys, a ledger row, windows and an
// offset, upgrades to the newest schema with every one of those rows as
// it was, and then has meters, empty and writable.
func TestUpgradeFrom0010(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.NewEmpty(t)
	res, err := migrate.Apply(ctx, db.Pool, upTo(t, 10), quiet)
	if err != nil || res.To != 10 {
		t.Fatalf("Apply up to 0010 = %+v, %v", res, err)
	}
	var exists bool
	if err := db.Pool.QueryRow(ctx, `SELECT to_regclass('meters') IS NOT NULL`).Scan(&exists); err != nil || exists {
		t.Fatalf("meters exists at 0010 (%v, %v)", exists, err)
	}
	db.Exec(t, `INSERT INTO plans (name, currency) VALUES ('pro', 'eur')`)
	db.Exec(t, `INSERT INTO plan_quotas (plan, metric, quota_limit, period, burst_percent, hard, stripe_event_name, unit_price)
		VALUES ('pro', 'tokens', 1000000, 'month', 10, true, 'tokens_used', 0.002)`)
	db.Exec(t, `INSERT INTO tenants (tenant, plan, stripe_customer_id) VALUES ('acme', 'pro', 'cus_1')`)
	db.Exec(t, `INSERT INTO api_keys (id, key_hash, role, tenant, scope) VALUES (gen_random_uuid(), 'h1', 'tenant', 'acme', 'write')`)
	db.Exec(t, `INSERT INTO ledger (tenant, event_id, payload_hash, metric, value, event_time, event_day, src_partition, src_offset)
		VALUES ('acme', 'e1', 'p1', 'tokens', 1234, '2026-11-30 12:34:56+00', '2026-11-30', 0, 41)`)
	for _, w := range []struct{ granularity, start string }{
		{"minute", "2026-11-30 12:34:00+00"}, {"hour", "2026-11-30 12:00:00+00"},
		{"day", "2026-11-30 00:00:00+00"}, {"month", "2026-11-01 00:00:00+00"},
	} {
		db.Exec(t, `INSERT INTO usage_windows (tenant, metric, granularity, window_start, value, events)
			VALUES ('acme', 'tokens', $1, $2::timestamptz, 1234, 1)`, w.granularity, w.start)
	}
	db.Exec(t, `INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset) VALUES ('aggregator', 'usage.events', 0, 42)`)

	upgraded := false // the ledger is read through ledger_events once upgraded
	// The columns each table had at 0010, as text: what must survive.
	reads := []struct{ table, query string }{
		{"plans", `SELECT name, currency, created_at, updated_at FROM plans ORDER BY name`},
		{"plan_quotas", `SELECT plan, metric, quota_limit, period, burst_percent, hard, stripe_event_name, unit_price FROM plan_quotas ORDER BY plan, metric`},
		{"tenants", `SELECT tenant, plan, stripe_customer_id, created_at, updated_at FROM tenants ORDER BY tenant`},
		{"api_keys", `SELECT id, key_hash, role, tenant, scope, created_at FROM api_keys ORDER BY id`},
		// The ledger is compact from 0027 on: its old shape is the view
		// ledger_events, the payload hash a prefix (TestUpgradeTo0027).
		{"ledger", `SELECT tenant, event_id, metric, value, event_time, event_day, src_partition, src_offset FROM ledger ORDER BY tenant, event_id`},
		{"usage_windows", `SELECT tenant, granularity, window_start, value, events, updated_at FROM usage_windows ORDER BY 1, 2, 3`}, // metric is meter from 0012 on (usagedata TestUpgradeKeepsWindowsAsImplicitMeters)
		{"consumer_offsets", `SELECT consumer_group, topic, partition, next_offset FROM consumer_offsets ORDER BY consumer_group, topic, partition`},
	}
	snapshot := func() map[string]string {
		out := map[string]string{}
		for _, r := range reads {
			var s string
			query := r.query
			if r.table == "ledger" && upgraded {
				query = strings.Replace(query, "FROM ledger", "FROM ledger_events", 1)
			}
			if err := db.Pool.QueryRow(ctx, `SELECT coalesce(string_agg(r::text, E'\n'), '') FROM (`+query+`) AS r`).Scan(&s); err != nil {
				t.Fatalf("reading %s: %v", r.table, err)
			}
			out[r.table] = s
		}
		return out
	}
	before := snapshot()
	for table, rows := range before {
		if rows == "" {
			t.Fatalf("%s is empty before the upgrade", table)
		}
	}

	all, _ := migrate.Load(migrations.FS)
	res, err = migrate.Apply(ctx, db.Pool, migrations.FS, quiet)
	upgraded = true
	if err != nil || res.From != 10 || res.To != len(all) {
		t.Fatalf("upgrade = %+v, %v; want from 10 to %d", res, err, len(all))
	}
	after := snapshot()
	for _, r := range reads {
		if before[r.table] != after[r.table] {
			t.Errorf("%s changed in the upgrade:\nbefore %s\nafter  %s", r.table, before[r.table], after[r.table])
		}
	}
	if ms, err := accounts.ListMeters(ctx, db.Pool); err != nil || len(ms) != 0 {
		t.Fatalf("ListMeters after the upgrade = %+v, %v; want none", ms, err)
	}
	m, created, err := accounts.PutMeter(ctx, db.Pool, accounts.Meter{Name: "tokens_by_model", Metric: "tokens",
		Aggregation: accounts.AggregationSum, GroupBy: []string{"model"}})
	if err != nil || !created || m.Version != 1 {
		t.Fatalf("PutMeter after the upgrade = %+v, %v, %v", m, created, err)
	}
}

// TestUpgradeFrom0015: quotas on defined meters made before grouped
// billing were never billed, and become unbilled (a NULL Stripe event
// name); implicit quotas keep theirs; pushes keep every column and get the
// empty group key, so their identifiers and claimed totals stay as they
// were; an implicit quota still cannot go unbilled.
func TestUpgradeFrom0015(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.NewEmpty(t)
	if res, err := migrate.Apply(ctx, db.Pool, upTo(t, 15), quiet); err != nil || res.To != 15 {
		t.Fatalf("Apply up to 0015 = %+v, %v", res, err)
	}
	db.Exec(t, `INSERT INTO plans (name) VALUES ('pro')`)
	db.Exec(t, `INSERT INTO plan_quotas (plan, metric, quota_limit, period, stripe_event_name, meter, group_filter, per_group) VALUES
		('pro', 'tokens', 1000, 'month', 'tokens_used', NULL, '{}', false),
		('pro', 'tokens', 50, 'day', 'tokens', 'tokens_by_model', '{}', true)`)
	db.Exec(t, `INSERT INTO billing_pushes (tenant, metric, period_start, billed_period_start, stripe_customer_id, event_name,
			cumulative_total, delta, identifier, event_timestamp, status)
		VALUES ('acme', 'tokens', '2026-11-01', '2026-11-01', 'cus_1', 'tokens_used', 40, 40, 'mu_1', '2026-11-02', 'sent')`)
	const pushes = `SELECT string_agg(p::text, E'\n') FROM (SELECT * FROM billing_pushes ORDER BY id) p`
	var before string
	if err := db.Pool.QueryRow(ctx, pushes).Scan(&before); err != nil {
		t.Fatal(err)
	}
	if res, err := migrate.Apply(ctx, db.Pool, migrations.FS, quiet); err != nil || res.From != 15 {
		t.Fatalf("upgrade = %+v, %v", res, err)
	}
	var after, quotas string
	if err := db.Pool.QueryRow(ctx, `SELECT string_agg(p::text, E'\n') FROM (SELECT id, tenant, metric, period_start, billed_period_start, stripe_customer_id,
			event_name, cumulative_total, delta, identifier, event_timestamp, status, carried, attempts, last_error, created_at, sent_at, updated_at, group_key
			FROM billing_pushes ORDER BY id) p`).Scan(&after); err != nil {
		t.Fatal(err)
	}
	if after != before[:len(before)-1]+`,"")` {
		t.Errorf("pushes after the upgrade:\n%s\nwant\n%s with the empty group key", after, before)
	}
	if err := db.Pool.QueryRow(ctx, `SELECT string_agg(coalesce(meter, '-') || '=' || coalesce(stripe_event_name, 'NULL'), ' ' ORDER BY meter NULLS FIRST)
			FROM plan_quotas`).Scan(&quotas); err != nil {
		t.Fatal(err)
	}
	if quotas != "-=tokens_used tokens_by_model=NULL" {
		t.Errorf("quotas after the upgrade: %s", quotas)
	}
	if _, err := db.Pool.Exec(ctx, `UPDATE plan_quotas SET stripe_event_name = NULL WHERE meter IS NULL`); err == nil {
		t.Errorf("an implicit quota went unbilled")
	}
}

// TestUpgradeTo0027: a database made by the schema of the wide ledger
// (0024), holding ledger rows with canonical UUID ids, an upper-case UUID
// and ids differing only in case, upgrades to the compact ledger with
// every row readable as before (ledger_events; the payload hash is its
// first 8 bytes), its windows untouched, and dedup refusing a resend of
// each old row while counting new ids, the case-differing ones included.
func TestUpgradeTo0027(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.NewEmpty(t)
	if res, err := migrate.Apply(ctx, db.Pool, upTo(t, 24), quiet); err != nil || res.To != 24 {
		t.Fatalf("Apply up to 0024 = %+v, %v", res, err)
	}
	const lower = "0190f4c4-7d3e-7a1b-8c2d-3e4f5a6b7c8d"
	upper := strings.ToUpper(lower)
	old := []struct {
		tenant, id, metric string
		value              int64
	}{
		{"acme", lower, "tokens", 5}, {"acme", upper, "tokens", 7}, {"acme", "order-1", "tokens", 11},
		{"acme", "Order-1", "api_calls", 13}, {"globex", lower, "tokens", 17}, {"globex", "order-1", "tokens", 19},
	}
	for i, r := range old {
		db.Exec(t, `INSERT INTO ledger (tenant, event_id, payload_hash, metric, value, event_time, event_day, src_partition, src_offset)
			VALUES ($1, $2, sha256(convert_to($2, 'UTF8')), $3, $4, '2026-11-30 12:34:56.123456+00', '2026-11-30', 1, $5)`,
			r.tenant, r.id, r.metric, r.value, int64(100+i))
	}
	db.Exec(t, `UPDATE ledger SET counted_xid = NULL WHERE event_id = 'order-1' AND tenant = 'acme'`) // counted before lineage
	db.Exec(t, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events)
		VALUES ('acme', 'tokens', '', 'month', '2026-11-01', 23, 3), ('globex', 'tokens', '', 'month', '2026-11-01', 36, 2)`)
	read := func(query string) string {
		var s string
		if err := db.Pool.QueryRow(ctx, `SELECT coalesce(string_agg(r::text, E'\n'), '') FROM (`+query+`) AS r`).Scan(&s); err != nil {
			t.Fatalf("reading %s: %v", query, err)
		}
		return s
	}
	const cols = `tenant, event_id, metric, value, event_time, event_day, src_partition, src_offset, recorded_at, counted_xid IS NULL`
	ledgerBefore := read(`SELECT ` + cols + `, substr(payload_hash, 1, 8) FROM ledger ORDER BY tenant, event_id COLLATE "C"`)
	const windows = `SELECT * FROM usage_windows ORDER BY tenant, meter, granularity, window_start`
	windowsBefore := read(windows)

	if res, err := migrate.Apply(ctx, db.Pool, migrations.FS, quiet); err != nil || res.From != 24 {
		t.Fatalf("upgrade = %+v, %v", res, err)
	}
	if after := read(`SELECT ` + cols + `, int8send(payload_hash) FROM ledger_events ORDER BY tenant, event_id COLLATE "C"`); after != ledgerBefore {
		t.Errorf("ledger after the upgrade:\n%s\nwant\n%s", after, ledgerBefore)
	}
	if after := read(windows); after != windowsBefore {
		t.Errorf("windows changed in the upgrade:\n%s\nwant\n%s", after, windowsBefore)
	}
	// One tenant's lower-case UUID is its key; the other tenant's same
	// UUID is kept whole in the overflow.
	if n := read(`SELECT count(*) FROM ledger_overflow WHERE event_id = '` + lower + `'`); n != "(1)" {
		t.Errorf("%s rows in ledger_overflow, want the second tenant's UUID", n)
	}
	if n := read(`SELECT count(*) FROM ledger WHERE id_text = ''`); n != "(1)" {
		t.Errorf("%s rows keyed by their UUID alone, want 1", n)
	}

	insert := func(tenant string, ids ...string) map[string]bool {
		t.Helper()
		b := &usagedata.LedgerInsert{}
		for i, id := range ids {
			b.Tenants, b.IDs, b.Metrics = append(b.Tenants, tenant), append(b.IDs, id), append(b.Metrics, "tokens")
			b.Hashes, b.Values = append(b.Hashes, make([]byte, 32)), append(b.Values, 1)
			b.Times = append(b.Times, time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC))
			b.Partitions, b.Offsets = append(b.Partitions, 1), append(b.Offsets, int64(200+i))
		}
		got := map[string]bool{}
		if err := usagedata.InsertLedger(ctx, db.Pool, b, func(_, id string) { got[id] = true }); err != nil {
			t.Fatalf("InsertLedger: %v", err)
		}
		return got
	}
	for _, tenant := range []string{"acme", "globex"} {
		var resends []string
		for _, r := range old {
			if r.tenant == tenant {
				resends = append(resends, r.id)
			}
		}
		if got := insert(tenant, resends...); len(got) != 0 {
			t.Errorf("%s: resends of the old rows counted again: %v", tenant, got)
		}
	}
	fresh := []string{"ORDER-1", "order-2", strings.Replace(upper, "A", "a", 1), "0190f4c4-7d3e-7a1b-8c2d-3e4f5a6b7c8e", upper}
	if got := insert("globex", fresh...); len(got) != len(fresh) {
		t.Errorf("new ids counted: %v, want all of %v", got, fresh)
	}
	if got := insert("globex", fresh...); len(got) != 0 {
		t.Errorf("resends of the new ids counted again: %v", got)
	}
}
