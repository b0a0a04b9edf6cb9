package auditlog_test

import (
	"context"
	"strings"
	"testing"

	"github.com/usagemeter/metering/internal/storage/auditlog"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// TestAuditLogIsAppendOnly: entries append and list newest first, by
// target and action; UPDATE, DELETE and TRUNCATE of audit_log are
// refused by the table, whoever asks.
func TestAuditLogIsAppendOnly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.New(t)
	for _, e := range []auditlog.Entry{
		{Actor: "key-1", Action: "grant.create", Target: "grant:a", After: []byte(`{"amount":5}`)},
		{Actor: "key-1", Action: "grant.create", Target: "grant:b"},
		{Actor: "cli:ops", Action: "grant.void", Target: "grant:a", Before: []byte(`{"amount":5}`), After: []byte(`{"amount":5,"voided":true}`)},
	} {
		if _, err := auditlog.Append(ctx, db.Pool, e); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := auditlog.Append(ctx, db.Pool, auditlog.Entry{Action: "x"}); err == nil {
		t.Fatal("an entry without an actor was appended")
	}
	tests := []struct {
		f    auditlog.Filter
		want string
	}{
		{auditlog.Filter{}, "grant.void grant:a, grant.create grant:b, grant.create grant:a"},
		{auditlog.Filter{Target: "grant:a"}, "grant.void grant:a, grant.create grant:a"},
		{auditlog.Filter{Action: "grant.create", Limit: 1}, "grant.create grant:b"},
	}
	for _, tt := range tests {
		got, err := auditlog.List(ctx, db.Pool, tt.f)
		if err != nil {
			t.Fatal(err)
		}
		var parts []string
		for _, r := range got {
			parts = append(parts, r.Action+" "+r.Target)
		}
		if s := strings.Join(parts, ", "); s != tt.want {
			t.Errorf("List(%+v) = %s, want %s", tt.f, s, tt.want)
		}
	}
	all, _ := auditlog.List(ctx, db.Pool, auditlog.Filter{Target: "grant:a"})
	if string(all[0].Before) != `{"amount": 5}` || all[1].Before != nil {
		t.Errorf("before documents: %s, %s", all[0].Before, all[1].Before)
	}
	for _, stmt := range []string{
		`UPDATE audit_log SET actor = 'someone else'`,
		`DELETE FROM audit_log WHERE target = 'grant:a'`,
		`TRUNCATE audit_log`,
	} {
		_, err := db.Pool.Exec(ctx, stmt)
		if err == nil || !strings.Contains(err.Error(), "append-only") {
			t.Errorf("%s: %v, want refused as append-only", stmt, err)
		}
	}
	if got, _ := auditlog.List(ctx, db.Pool, auditlog.Filter{}); len(got) != 3 || got[2].Actor != "key-1" {
		t.Errorf("the log changed: %+v", got)
	}
}
