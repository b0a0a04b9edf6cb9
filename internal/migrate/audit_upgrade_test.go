package migrate_test

import (
	"context"
	"strings"
	"testing"

	"github.com/usagemeter/metering/internal/migrate"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/migrations"
)

// TestUpgradeFrom0025MovesDLQAuditIntoAuditLog: the dead-letter actions
// dlq_audit recorded become audit_log rows, one per record, in the order
// they were made, with their time, actor (as cli:<actor>), note, and the
// records' statuses before and after; the rows audit_log held stay as
// they were; dlq_audit is gone.
func TestUpgradeFrom0025MovesDLQAuditIntoAuditLog(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.NewEmpty(t)
	if res, err := migrate.Apply(ctx, db.Pool, upTo(t, 25), quiet); err != nil || res.To != 25 {
		t.Fatalf("Apply up to 0025 = %+v, %v", res, err)
	}
	db.Exec(t, `INSERT INTO audit_log (at, actor, action, target, after) VALUES ('2026-11-01 10:00+00', 'key-1', 'grant.create', 'grant:g1', '{"amount": 5}')`)
	db.Exec(t, `INSERT INTO dlq_audit (queue, action, actor, record_ids, note, at) VALUES
		('usage', 'replay', 'oncall', '{7,3}', 'fixed the meter', '2026-11-02 10:00+00'),
		('billing', 'discard', 'finance', '{12}', 'customer gone', '2026-11-03 10:00+00'),
		('billing', 'replay', 'oncall', '{13}', '', '2026-11-03 11:00+00'),
		('credits', 'resend', 'finance', '{5}', '', '2026-11-04 10:00+00'),
		('usage', 'discard', 'oncall', '{9}', 'garbage', '2026-11-01 09:00+00')`)
	if res, err := migrate.Apply(ctx, db.Pool, migrations.FS, quiet); err != nil || res.From != 25 {
		t.Fatalf("upgrade = %+v, %v", res, err)
	}
	var got string
	if err := db.Pool.QueryRow(ctx, `SELECT string_agg(concat_ws(' ', to_char(at AT TIME ZONE 'UTC', 'MM-DD HH24'), actor, action, target,
			coalesce(before::text, '-'), coalesce(after::text, '-'), '"' || note || '"'), E'\n' ORDER BY id) FROM audit_log`).Scan(&got); err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		`11-01 10 key-1 grant.create grant:g1 - {"amount": 5} ""`,
		`11-01 09 cli:oncall dlq.usage.discard usage_dlq:9 {"status": "pending"} {"status": "discarded"} "garbage"`,
		`11-02 10 cli:oncall dlq.usage.replay usage_dlq:7 {"status": "pending"} {"status": "replayed"} "fixed the meter"`,
		`11-02 10 cli:oncall dlq.usage.replay usage_dlq:3 {"status": "pending"} {"status": "replayed"} "fixed the meter"`,
		`11-03 10 cli:finance dlq.billing.discard billing_push:12 {"status": "dead"} {"status": "discarded"} "customer gone"`,
		`11-03 11 cli:oncall dlq.billing.replay billing_push:13 {"status": "dead"} {"status": "intent"} ""`,
		`11-04 10 cli:finance credits.resend billing_credit:5 {"status": "dead"} {"resend": true, "status": "dead"} ""`,
	}, "\n")
	if got != want {
		t.Errorf("audit_log after the upgrade:\n%s\nwant:\n%s", got, want)
	}
	var exists bool
	if err := db.Pool.QueryRow(ctx, `SELECT to_regclass('dlq_audit') IS NOT NULL`).Scan(&exists); err != nil || exists {
		t.Errorf("dlq_audit is still there (%v, %v)", exists, err)
	}
}
