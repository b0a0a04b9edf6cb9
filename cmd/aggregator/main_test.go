package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// TestCommandLines runs the operator command lines of the README's
// runbook through the real argument handling: subcommand flags and
// settings flags may come in any order, and a usage error exits 2.
func TestCommandLines(t *testing.T) {
	db := pgtest.New(t)
	getenv := func(k string) string {
		return map[string]string{"LOG_LEVEL": "error", "KAFKA_BROKERS": "127.0.0.1:1"}[k]
	}
	tests := []struct {
		name    string
		args    []string
		want    int
		wantOut string // in stdout, or in stderr when want != 0
	}{
		{"list, settings last", []string{"dlq", "list", "--status", "all", "-database-url", db.URL}, 0, "0 dead letters"},
		{"list, settings first", []string{"dlq", "list", "-database-url", db.URL, "--status=pending", "--limit", "5"}, 0, "0 dead letters"},
		{"list as JSON", []string{"dlq", "list", "--format", "json", "-database-url", db.URL}, 0, "[]"},
		{"replay an id that is not pending", []string{"dlq", "replay", "42", "-database-url", db.URL}, 1, "none of the named records"},
		{"replay all of nothing", []string{"dlq", "replay", "--all", "--actor", "oncall", "-database-url", db.URL}, 0, "replayed 0 dead letters"},
		{"rebuild checks --from before connecting", []string{"rebuild", "--from", "yesterday", "-database-url", db.URL}, 1, "RFC 3339"},
		{"dlq without a command", []string{"dlq"}, 2, "want list, replay or discard"},
		{"unknown dlq command", []string{"dlq", "purge", "-database-url", db.URL}, 1, "unknown dlq command"},
		{"unknown flag", []string{"dlq", "list", "--bogus", "x"}, 2, "flag provided but not defined: -bogus"},
		{"stray argument to serve", []string{"frobnicate"}, 2, `unknown argument "frobnicate"`},
		{"bad setting", []string{"dlq", "list", "-batch-size", "0"}, 2, "BATCH_SIZE"},
		{"conflicts held, settings last", []string{"conflicts", "list", "--tenant", "acme", "-database-url", db.URL}, 0, "0 conflicts"},
		{"conflicts as JSON", []string{"conflicts", "list", "-database-url", db.URL, "--status=resolved", "--format", "json"}, 0, "[]"},
		{"conflicts without a command", []string{"conflicts"}, 2, "want list, count or dismiss"},
		{"count needs a note", []string{"conflicts", "count", "7", "-database-url", db.URL}, 1, "--note"},
		{"count an unknown conflict", []string{"conflicts", "count", "7", "--note", "checked", "-database-url", db.URL}, 1, "no such conflict"},
		{"conflicts with a bad status", []string{"conflicts", "list", "--status", "open", "-database-url", db.URL}, 1, "--status must be one of"},
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
				t.Fatalf("aggregator %s: exit %d, want %d with %q\nstdout: %s\nstderr: %s",
					strings.Join(tt.args, " "), got, tt.want, tt.wantOut, stdout.String(), stderr.String())
			}
		})
	}
}
