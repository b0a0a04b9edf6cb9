package main

import (
	"bytes"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/testkit/stripefake"
)

// TestCommandLines runs the operator command lines of the README's
// runbook through the real argument handling: subcommand flags and
// settings flags may come in any order, and a usage error exits 2.
func TestCommandLines(t *testing.T) {
	db := pgtest.New(t)
	db.Exec(t, `INSERT INTO audit_log (actor, action, target, after, note) VALUES
		('key:k1', 'plan.put', 'plan:pro', '{"version": 1}', ''),
		('cli:oncall', 'dlq.billing.discard', 'billing_push:5', '{"status": "discarded"}', 'customer gone')`)
	fake := stripefake.New(stripefake.Config{})
	t.Cleanup(fake.Close)
	stripe := httptest.NewServer(fake)
	t.Cleanup(stripe.Close)
	getenv := func(k string) string {
		return map[string]string{"LOG_LEVEL": "error", "KAFKA_BROKERS": "127.0.0.1:1", "STRIPE_API_BASE": stripe.URL, "STRIPE_API_KEY": "sk_test_cli"}[k]
	}
	tests := []struct {
		name    string
		args    []string
		want    int
		wantOut string // in stdout, or in stderr when want != 0
	}{
		{"reconcile as CSV", []string{"reconcile", "--period", "2026-11", "-database-url", db.URL, "--format", "csv"}, 0, "tenant"},
		{"reconcile, settings first", []string{"reconcile", "-database-url", db.URL, "--period=2026-11"}, 0, "TENANT"},
		{"reconcile, this month by default", []string{"reconcile", "-database-url", db.URL}, 0, "TENANT"},
		{"reconcile, bad period", []string{"reconcile", "--period", "11/2026", "-database-url", db.URL}, 1, "period must be YYYY-MM"},
		{"dlq replay of a push not dead", []string{"dlq", "replay", "5", "-database-url", db.URL}, 1, "none of the named records"},
		{"dlq list", []string{"dlq", "list", "-database-url", db.URL}, 0, "ID  DEAD SINCE"},
		{"dlq list, none", []string{"dlq", "list", "-database-url", db.URL}, 0, "\n0 pushes in the billing DLQ\n"},
		{"dlq list as JSON, none", []string{"dlq", "list", "--format", "json", "-database-url", db.URL}, 0, "[]\n"},
		{"dlq list, stray argument", []string{"dlq", "list", "x", "-database-url", db.URL}, 1, "unexpected argument"},
		{"holds list, none", []string{"holds", "list", "-database-url", db.URL}, 0, "ID  HELD SINCE"},
		{"holds list as JSON, none", []string{"holds", "list", "--format", "json", "-database-url", db.URL}, 0, "[]\n"},
		{"dlq replay all of nothing", []string{"dlq", "replay", "--all", "-database-url", db.URL, "--actor", "oncall"}, 0, ""},
		{"dlq without a command", []string{"dlq"}, 2, "want list, show, replay or discard"},
		{"audit by action prefix", []string{"audit", "--action", "dlq.*", "-database-url", db.URL}, 0, "customer gone\n1 entries"},
		{"audit by target, as JSON", []string{"audit", "-database-url", db.URL, "--target", "plan:pro", "--format", "json"}, 0, `"actor": "key:k1"`},
		{"audit, a page", []string{"audit", "--limit", "1", "-database-url", db.URL}, 0, "1 entries; more with --after"},
		{"audit, bad time", []string{"audit", "--from", "yesterday", "-database-url", db.URL}, 1, "--from must be an RFC 3339 time"},
		{"unknown flag", []string{"reconcile", "--bogus", "x"}, 2, "flag provided but not defined: -bogus"},
		{"stray argument to serve", []string{"frobnicate"}, 2, `unknown argument "frobnicate"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			got := run(tt.args, getenv, &stdout, &stderr)
			out := stdout.String()
			if tt.want != 0 {
				out = stderr.String()
			}
			if got != tt.want || !strings.Contains(out, tt.wantOut) {
				t.Fatalf("biller %s: exit %d, want %d with %q\nstdout: %s\nstderr: %s",
					strings.Join(tt.args, " "), got, tt.want, tt.wantOut, stdout.String(), stderr.String())
			}
		})
	}
}
