package cli_test

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/usagemeter/metering/internal/cli"
	"github.com/usagemeter/metering/internal/config"
)

type listFlags struct {
	Limit int
	All   bool
	cli.Audit
}

func (f *listFlags) Bind(fs *flag.FlagSet) {
	cli.PositiveInt(fs, &f.Limit, "limit", 100, "most listed")
	fs.BoolVar(&f.All, "all", false, "all of them")
	f.Audit.Bind(fs)
}

// program is a binary with settings from config.LoadAggregator and one
// command group whose run records what it received.
func program(got *string) cli.Program[config.Aggregator] {
	record := func(what string) error { *got = what; return nil }
	return cli.Program[config.Aggregator]{
		Name:   "agg",
		Load:   config.LoadAggregator,
		Common: func(c config.Aggregator) config.Common { return c.Common },
		Serve: func(context.Context, config.Aggregator, *slog.Logger, func(net.Addr)) error {
			return record("serve")
		},
		Migrate: func(_ context.Context, url string, _ *slog.Logger) error { return record("migrate " + url) },
		Commands: []cli.Command[config.Aggregator]{
			cli.New("dlq list", func(_ context.Context, env cli.Env[config.Aggregator], f listFlags, args []string) error {
				return record(fmt.Sprintf("list %d %v %s %q %v %s", f.Limit, f.All, f.Actor, f.Note, args, env.Config.DatabaseURL))
			}),
			cli.New("dlq fail", func(context.Context, cli.Env[config.Aggregator], cli.NoFlags, []string) error {
				return errors.New("it failed")
			}),
		},
	}
}

// TestProgram: settings flags and a command's typed flags may stand in
// any order; a bad value or an unknown flag is a usage error (2), a
// failing command exits 1.
func TestProgram(t *testing.T) {
	getenv := func(k string) string { return map[string]string{"LOG_LEVEL": "error", "DATABASE_URL": "D"}[k] }
	tests := []struct {
		args    []string
		want    int
		wantGot string
		wantErr string
	}{
		{[]string{"dlq", "list", "7", "--actor", "bob", "-database-url", "X", "8", "--all", "--limit=5"}, 0, `list 5 true bob "" [7 8] X`, ""},
		{[]string{"dlq", "list", "-database-url=Y", "--note", "closed account"}, 0, `list 100 false  "closed account" [] Y`, ""},
		{[]string{"dlq", "list", "--", "--all"}, 0, `list 100 false  "" [--all] D`, ""},
		{[]string{"dlq", "list", "--limit", "x"}, 2, "", `invalid value "x" for flag -limit: must be a positive number`},
		{[]string{"dlq", "list", "--limit", "0"}, 2, "", "must be a positive number"},
		{[]string{"dlq", "list", "--bogus", "x"}, 2, "", "flag provided but not defined: -bogus"},
		{[]string{"dlq", "list", "-batch-size", "0"}, 2, "", "BATCH_SIZE"},
		{[]string{"dlq"}, 2, "", "agg dlq: want list or fail"},
		{[]string{"dlq", "purge"}, 1, "", `unknown dlq command \"purge\"; want list or fail`},
		{[]string{"dlq", "fail"}, 1, "", "it failed"},
		{[]string{}, 0, "serve", ""},
		{[]string{"frobnicate"}, 2, "", `unknown argument "frobnicate"; commands: migrate, dlq`},
		{[]string{"migrate", "-database-url", "Z"}, 0, "migrate Z", ""},
		{[]string{"migrate", "now"}, 2, "", `unknown argument "now"`},
		{[]string{"dlq", "list", "-h"}, 0, "", "-limit"},
	}
	for _, tt := range tests {
		var got string
		var stdout, stderr bytes.Buffer
		code := program(&got).Main(tt.args, getenv, &stdout, &stderr)
		if code != tt.want || got != tt.wantGot || !strings.Contains(stderr.String(), tt.wantErr) {
			t.Errorf("%q: exit %d, ran %q, stderr %s; want %d, %q, %q", tt.args, code, got, stderr.String(), tt.want, tt.wantGot, tt.wantErr)
		}
	}
}

// TestRun: a command run without settings, as the packages' tests do.
func TestRun(t *testing.T) {
	var got string
	cmds := program(&got).Commands
	env := cli.Env[config.Aggregator]{Log: slog.New(slog.DiscardHandler), Out: io.Discard}
	if err := cli.Run(context.Background(), cmds, "dlq list", env, []string{"9", "--all"}); err != nil || got != `list 100 true  "" [9] ` {
		t.Fatalf("%q %v", got, err)
	}
	if err := cli.Run(context.Background(), cmds, "dlq list", env, []string{"--limit", "-1"}); err == nil {
		t.Fatal("--limit -1 accepted")
	}
	if err := cli.Run(context.Background(), cmds, "dlq nope", env, nil); err == nil || !strings.Contains(err.Error(), `unknown dlq command "nope"`) {
		t.Fatal(err)
	}
}

func TestIDs(t *testing.T) {
	if ids, err := cli.IDs([]string{"7", "8"}, "push"); err != nil || fmt.Sprint(ids) != "[7 8]" {
		t.Fatal(ids, err)
	}
	if _, err := cli.IDs([]string{"7x"}, "push"); err == nil || err.Error() != `push ids are numbers, got "7x"` {
		t.Fatal(err)
	}
}

func TestSelection(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    []string
		wantIDs string
		wantErr string
	}{
		{"ids", []string{"-note", "fixed", "3", "4"}, "[3 4]", ""},
		{"all", []string{"-all", "-actor", "ops"}, "[]", ""},
		{"ids beside --all", []string{"-all", "3"}, "", "name credits by id or use --all, not both"},
		{"not a number", []string{"x"}, "", `credit ids are numbers, got "x"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var s cli.Selection
			fs := flag.NewFlagSet("resend", flag.ContinueOnError)
			s.Bind(fs)
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			ids, err := s.IDs(fs.Args(), "credit")
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || fmt.Sprint(ids) != tt.wantIDs {
				t.Fatalf("%v %v, want %s", ids, err, tt.wantIDs)
			}
		})
	}
}
