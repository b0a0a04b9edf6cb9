package auditlog_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/storage/auditlog"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// TestAuditLogIsAppendOnly: entries append and list newest first, by
// actor, action and target (exact or prefix), time and cursor; UPDATE,
// DELETE and TRUNCATE of audit_log are refused by the table, whoever
// asks.
func TestAuditLogIsAppendOnly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.New(t)
	for _, e := range []auditlog.Entry{
		{Actor: "key:1", Action: "grant.create", Target: "grant:a", After: []byte(`{"amount":5}`)},
		{Actor: "key:1", Action: "grant.create", Target: "grant:b"},
		{Actor: "cli:ops", Action: "grant.void", Target: "grant:a", Before: []byte(`{"amount":5}`), After: []byte(`{"amount":5,"voided":true}`), Note: "sent in error"},
	} {
		if _, err := auditlog.Append(ctx, db.Pool, e); err != nil {
			t.Fatal(err)
		}
	}
	if err := auditlog.AppendAll(ctx, db.Pool, []auditlog.Entry{
		{Actor: "cli:ops", Action: "dlq.usage.replay", Target: "usage_dlq:1", Note: "fixed"},
		{Actor: "cli:ops", Action: "dlq.usage.replay", Target: "usage_dlq:2", Note: "fixed"},
		{Actor: "key:2", Action: "tenant.put", Target: "tenant:a_b"},
		{Actor: "key:2", Action: "tenant.put", Target: "tenant:axb"},
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := auditlog.Append(ctx, db.Pool, auditlog.Entry{Action: "x"}); err == nil {
		t.Fatal("an entry without an actor was appended")
	}
	all, _, err := auditlog.List(ctx, db.Pool, auditlog.Filter{})
	if err != nil || len(all) != 7 {
		t.Fatalf("List: %d entries, %v", len(all), err)
	}
	grantB := all[5].ID
	exact := func(v string) auditlog.Match { return auditlog.Match{Value: v} }
	prefix := func(v string) auditlog.Match { return auditlog.Match{Value: v, Prefix: true} }
	tests := []struct {
		f        auditlog.Filter
		want     string
		wantMore bool
	}{
		{auditlog.Filter{Limit: 3}, "tenant.put tenant:axb, tenant.put tenant:a_b, dlq.usage.replay usage_dlq:2", true},
		{auditlog.Filter{Target: exact("grant:a")}, "grant.void grant:a, grant.create grant:a", false},
		{auditlog.Filter{Action: exact("grant.create"), Limit: 1}, "grant.create grant:b", true},
		{auditlog.Filter{Action: prefix("dlq.")}, "dlq.usage.replay usage_dlq:2, dlq.usage.replay usage_dlq:1", false},
		// _ and % in a prefix are text, not wildcards.
		{auditlog.Filter{Target: prefix("tenant:a_")}, "tenant.put tenant:a_b", false},
		{auditlog.Filter{Actor: exact("cli:ops"), Action: prefix("grant.")}, "grant.void grant:a", false},
		{auditlog.Filter{Actor: prefix("key:")}, "tenant.put tenant:axb, tenant.put tenant:a_b, grant.create grant:b, grant.create grant:a", false},
		{auditlog.Filter{Before: grantB}, "grant.create grant:a", false},
		{auditlog.Filter{Target: prefix("")}, "tenant.put tenant:axb, tenant.put tenant:a_b, dlq.usage.replay usage_dlq:2, dlq.usage.replay usage_dlq:1, grant.void grant:a, grant.create grant:b, grant.create grant:a", false},
		{auditlog.Filter{From: time.Now().Add(time.Hour)}, "", false},
		{auditlog.Filter{To: time.Now().Add(-time.Hour)}, "", false},
		{auditlog.Filter{From: time.Now().Add(-time.Hour), To: time.Now().Add(time.Hour), Action: exact("grant.void")}, "grant.void grant:a", false},
	}
	for _, tt := range tests {
		got, more, err := auditlog.List(ctx, db.Pool, tt.f)
		if err != nil {
			t.Fatal(err)
		}
		var parts []string
		for _, r := range got {
			parts = append(parts, r.Action+" "+r.Target)
		}
		if s := strings.Join(parts, ", "); s != tt.want || more != tt.wantMore {
			t.Errorf("List(%+v) = %s (more %v), want %s (more %v)", tt.f, s, more, tt.want, tt.wantMore)
		}
	}
	ga, _, _ := auditlog.List(ctx, db.Pool, auditlog.Filter{Target: exact("grant:a")})
	if string(ga[0].Before) != `{"amount": 5}` || ga[1].Before != nil || ga[0].Note != "sent in error" || ga[1].Note != "" {
		t.Errorf("before documents and notes: %s %q, %s %q", ga[0].Before, ga[0].Note, ga[1].Before, ga[1].Note)
	}
	for _, stmt := range []string{
		`UPDATE audit_log SET actor = 'someone else'`,
		`UPDATE audit_log SET note = 'rewritten'`,
		`DELETE FROM audit_log WHERE target = 'grant:a'`,
		`TRUNCATE audit_log`,
	} {
		_, err := db.Pool.Exec(ctx, stmt)
		if err == nil || !strings.Contains(err.Error(), "append-only") {
			t.Errorf("%s: %v, want refused as append-only", stmt, err)
		}
	}
	if got, _, _ := auditlog.List(ctx, db.Pool, auditlog.Filter{}); len(got) != 7 || got[6].Actor != "key:1" {
		t.Errorf("the log changed: %+v", got)
	}
}

// TestParseMatch: "*" ends a prefix, as does a separator given; any other
// value is exact.
func TestParseMatch(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, seps string
		want     auditlog.Match
	}{
		{"", ".", auditlog.Match{}},
		{"*", ".", auditlog.Match{Prefix: true}},
		{"dlq.*", ".", auditlog.Match{Value: "dlq.", Prefix: true}},
		{"dlq.", ".", auditlog.Match{Value: "dlq.", Prefix: true}},
		{"tenant:", ":", auditlog.Match{Value: "tenant:", Prefix: true}},
		{"tenant:acme.", ":", auditlog.Match{Value: "tenant:acme."}},
		{"key:1", "", auditlog.Match{Value: "key:1"}},
	}
	for _, tt := range tests {
		if got := auditlog.ParseMatch(tt.in, tt.seps); got != tt.want {
			t.Errorf("ParseMatch(%q, %q) = %+v, want %+v", tt.in, tt.seps, got, tt.want)
		}
	}
}
