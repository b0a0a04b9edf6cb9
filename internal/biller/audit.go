package biller

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/usagemeter/metering/internal/cli"
	"github.com/usagemeter/metering/internal/storage/auditlog"
)

type auditFlags struct {
	Actor, Action, Target string
	From, To              string
	After                 int64
	Limit                 int
	Format                string
}

func (f *auditFlags) Bind(fs *flag.FlagSet) {
	fs.StringVar(&f.Actor, "actor", "", "only this actor (key:<id>, cli:<name>); a trailing * makes a prefix (cli:*)")
	fs.StringVar(&f.Action, "action", "", "only this action (plan.put); a trailing * or . makes a prefix (dlq.*)")
	fs.StringVar(&f.Target, "target", "", "only this target (tenant:acme); a trailing * or : makes a prefix (tenant:*)")
	fs.StringVar(&f.From, "from", "", "only entries at or after this RFC 3339 time")
	fs.StringVar(&f.To, "to", "", "only entries before this RFC 3339 time")
	fs.Int64Var(&f.After, "after", 0, "only entries older than this id (the last id of the previous page)")
	cli.PositiveInt(fs, &f.Limit, "limit", 100, "most entries listed")
	fs.StringVar(&f.Format, "format", "table", "table or json")
}

// auditList runs `biller audit [--actor A] [--action A] [--target T]
// [--from TIME] [--to TIME] [--after ID] [--limit N] [--format json]`:
// the audit log, newest first, filtered as GET /v1/admin/audit filters it.
func auditList(ctx context.Context, env Env, f auditFlags, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("unexpected argument %q; filter with --actor, --action, --target, --from and --to", args[0])
	}
	if f.Format != "table" && f.Format != "json" {
		return fmt.Errorf("format %q: want table or json", f.Format)
	}
	filter := auditlog.Filter{
		Actor:  auditlog.ParseMatch(f.Actor, ""),
		Action: auditlog.ParseMatch(f.Action, "."),
		Target: auditlog.ParseMatch(f.Target, ":"),
		Before: f.After,
		Limit:  f.Limit,
	}
	for _, t := range []struct {
		name, v string
		dst     *time.Time
	}{{"from", f.From, &filter.From}, {"to", f.To, &filter.To}} {
		if t.v == "" {
			continue
		}
		at, err := time.Parse(time.RFC3339, t.v)
		if err != nil {
			return fmt.Errorf("--%s must be an RFC 3339 time such as 2026-11-01T00:00:00Z, got %q", t.name, t.v)
		}
		*t.dst = at
	}
	pool, err := Open(ctx, env.Config.DatabaseURL, 0, env.Log)
	if err != nil {
		return err
	}
	defer pool.Close()
	entries, more, err := auditlog.List(ctx, pool, filter)
	if err != nil {
		return err
	}
	if f.Format == "json" {
		if entries == nil {
			entries = []auditlog.Record{}
		}
		enc := json.NewEncoder(env.Out)
		enc.SetIndent("", "  ")
		return enc.Encode(entries)
	}
	tw := tabwriter.NewWriter(env.Out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tAT\tACTOR\tACTION\tTARGET\tNOTE")
	for _, e := range entries {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", e.ID, e.At.Format(time.RFC3339), terminalText(e.Actor, 64), e.Action,
			terminalText(e.Target, 80), terminalText(e.Note, 80))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(env.Out, "%d entries", len(entries))
	if more {
		fmt.Fprintf(env.Out, "; more with --after %d", entries[len(entries)-1].ID)
	}
	fmt.Fprintln(env.Out)
	return nil
}
