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
		{"dlq list", []string{"dlq", "list", "-database-url", db.URL}, 0, ""},
		{"dlq replay all of nothing", []string{"dlq", "replay", "--all", "-database-url", db.URL, "--actor", "oncall"}, 0, ""},
		{"dlq without a command", []string{"dlq"}, 2, "want list, show, replay or discard"},
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
