package aggregator

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/usagemeter/metering/internal/cli"
	"github.com/usagemeter/metering/internal/config"
	"github.com/usagemeter/metering/internal/kafkalog"
	"github.com/usagemeter/metering/internal/rebuild"
	"github.com/usagemeter/metering/internal/relay"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/storage/auditlog"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/topics"
)

// Commands are the aggregator's operator commands; each declares its own
// flags as a struct. Settings flags may stand anywhere on their command
// lines (see cli.Program).
var Commands = []cli.Command[config.Aggregator]{
	cli.New("dlq list", dlqList),
	cli.New("dlq replay", dlqReplay),
	cli.New("dlq discard", dlqDiscard),
	cli.New("rebuild", rebuildCmd),
	cli.New("conflicts list", conflictsList),
	cli.New("conflicts count", conflictsResolve(usagedata.ResolutionCounted)),
	cli.New("conflicts dismiss", conflictsResolve(usagedata.ResolutionDismissed)),
}

// Env is what an aggregator command runs with.
type Env = cli.Env[config.Aggregator]

// DLQCommand runs `aggregator dlq list|replay|discard` with args, its own
// flags and arguments.
func DLQCommand(ctx context.Context, cfg config.Aggregator, log *slog.Logger, sub string, args []string, out io.Writer) error {
	return cli.Run(ctx, Commands, "dlq "+sub, Env{Config: cfg, Log: log, Out: out}, args)
}

// ConflictsCommand runs `aggregator conflicts list|count|dismiss`: the
// review of conflicting resends.
func ConflictsCommand(ctx context.Context, cfg config.Aggregator, log *slog.Logger, sub string, args []string, out io.Writer) error {
	return cli.Run(ctx, Commands, "conflicts "+sub, Env{Config: cfg, Log: log, Out: out}, args)
}

// RebuildCommand runs `aggregator rebuild --from TIME [--meter M]...
// [--dry-run] [--actor NAME] [--note TEXT]`; a swap is audited.
func RebuildCommand(ctx context.Context, cfg config.Aggregator, log *slog.Logger, args []string, out io.Writer) error {
	return cli.Run(ctx, Commands, "rebuild", Env{Config: cfg, Log: log, Out: out}, args)
}

// Migrate applies pending database migrations and returns.
func Migrate(ctx context.Context, databaseURL string, log *slog.Logger) error {
	pool, err := Open(ctx, databaseURL, 0, log)
	if err != nil {
		return err
	}
	pool.Close()
	return nil
}

// listFlags are the flags of a list: --limit, --status and --format.
type listFlags struct {
	Status string
	Limit  int
	Format string
}

func (f *listFlags) bind(fs *flag.FlagSet, status, statuses string) {
	fs.StringVar(&f.Status, "status", status, "which records: "+statuses)
	cli.PositiveInt(fs, &f.Limit, "limit", 100, "most records listed")
	fs.StringVar(&f.Format, "format", "table", "table or json")
}

type dlqListFlags struct{ listFlags }

func (f *dlqListFlags) Bind(fs *flag.FlagSet) {
	f.bind(fs, "pending", "pending, replayed, discarded or all")
}

func dlqList(ctx context.Context, env Env, f dlqListFlags, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("unexpected argument %q; filter with --status", args[0])
	}
	pool, err := Open(ctx, env.Config.DatabaseURL, 0, env.Log)
	if err != nil {
		return err
	}
	defer pool.Close()
	status := f.Status
	if status == "all" {
		status = ""
	}
	recs, err := rollup.NewDeadLetters(pool).List(ctx, status, f.Limit)
	if err != nil {
		return err
	}
	out := env.Out
	if f.Format == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(recs)
	}
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tFAILED AT\tSTATUS\tTENANT\tKIND\tCLASS\tSOURCE\tERROR")
	for _, r := range recs {
		msg := r.Error
		if len(msg) > 80 {
			msg = msg[:77] + "..."
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s/%d@%d\t%s\n", r.ID, r.FailedAt.UTC().Format(time.RFC3339), r.Status, r.Tenant,
			r.Kind, r.ErrorClass, r.SourceTopic, r.SourcePartition, r.SourceOffset, msg)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(out, "%d dead letters\n", len(recs))
	return nil
}

func dlqReplay(ctx context.Context, env Env, f cli.Selection, args []string) error {
	ids, err := f.IDs(args, "dead letter")
	if err != nil {
		return err
	}
	pool, err := Open(ctx, env.Config.DatabaseURL, 0, env.Log)
	if err != nil {
		return err
	}
	defer pool.Close()
	done, err := rollup.NewDeadLetters(pool).Replay(ctx, ids, f.All, f.Who(), f.Note)
	if err != nil {
		return err
	}
	// Publish now, so the replay does not wait for a running aggregator.
	w := kafkalog.NewWriter(env.Config.KafkaBrokers, env.Config.KafkaSecurity.Transport())
	defer w.Close()
	rl := relay.New(pool, w, env.Log, nil)
	for {
		n, err := rl.PublishPending(ctx)
		if err != nil {
			return fmt.Errorf("replayed %d dead letters into the outbox, but publishing failed (the running aggregator will retry): %w", len(done), err)
		}
		if n == 0 {
			break
		}
	}
	fmt.Fprintf(env.Out, "replayed %d dead letters to %s: %v\n", len(done), topics.UsageEvents, done)
	return nil
}

func dlqDiscard(ctx context.Context, env Env, f cli.Audit, args []string) error {
	ids, err := cli.IDs(args, "dead letter")
	if err != nil {
		return err
	}
	pool, err := Open(ctx, env.Config.DatabaseURL, 0, env.Log)
	if err != nil {
		return err
	}
	defer pool.Close()
	done, err := rollup.NewDeadLetters(pool).Discard(ctx, ids, f.Who(), f.Note)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Out, "discarded %d dead letters: %v\n", len(done), done)
	return nil
}

type conflictsListFlags struct {
	listFlags
	Tenant string
}

func (f *conflictsListFlags) Bind(fs *flag.FlagSet) {
	f.bind(fs, "held", strings.Join(usagedata.ConflictStatuses, ", "))
	fs.StringVar(&f.Tenant, "tenant", "", "only this tenant's conflicts")
}

func conflictsList(ctx context.Context, env Env, f conflictsListFlags, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("unexpected argument %q; filter with --tenant and --status", args[0])
	}
	if !slices.Contains(usagedata.ConflictStatuses, f.Status) {
		return fmt.Errorf("--status must be one of %s, got %q", strings.Join(usagedata.ConflictStatuses, ", "), f.Status)
	}
	pool, err := Open(ctx, env.Config.DatabaseURL, 0, env.Log)
	if err != nil {
		return err
	}
	defer pool.Close()
	cs, err := usagedata.NewConflictReader(pool).List(ctx, usagedata.ConflictFilter{Tenant: f.Tenant, Status: f.Status, Limit: f.Limit})
	if err != nil {
		return err
	}
	out := env.Out
	if f.Format == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if cs == nil {
			cs = []usagedata.Conflict{}
		}
		return enc.Encode(cs)
	}
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tDETECTED AT\tRESOLUTION\tTENANT\tEVENT ID\tMETRIC\tTIME\tVALUE\tCOUNTED\tBY\tNOTE")
	for _, c := range cs {
		evTime, value, counted := "?", "?", "?"
		if c.Time != nil {
			evTime = c.Time.Format(time.RFC3339Nano)
		}
		if c.Value != nil {
			value = strconv.FormatInt(*c.Value, 10)
		}
		if c.CountedValue != nil {
			counted = strconv.FormatInt(*c.CountedValue, 10)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.ID, c.DetectedAt.Format(time.RFC3339), c.Resolution, c.Tenant,
			c.EventID, orNone(c.Metric), evTime, value, counted, orNone(c.ResolvedBy), c.Note)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(out, "%d conflicts\n", len(cs))
	return nil
}

// conflictsResolve makes `conflicts count|dismiss ID --note TEXT`: one
// held conflict resolved, with who (--actor, or user@host), when and why.
func conflictsResolve(resolution string) func(context.Context, Env, cli.Audit, []string) error {
	return func(ctx context.Context, env Env, f cli.Audit, args []string) error {
		sub := map[string]string{usagedata.ResolutionCounted: "count", usagedata.ResolutionDismissed: "dismiss"}[resolution]
		if len(args) != 1 {
			return fmt.Errorf("conflicts %s takes one conflict id, got %d arguments", sub, len(args))
		}
		id, err := strconv.ParseInt(args[0], 10, 64)
		if err != nil {
			return fmt.Errorf("conflict ids are numbers, got %q", args[0])
		}
		if f.Note == "" {
			return fmt.Errorf("conflicts %s needs --note saying why (it is kept with the conflict)", sub)
		}
		pool, err := Open(ctx, env.Config.DatabaseURL, 0, env.Log)
		if err != nil {
			return err
		}
		defer pool.Close()
		cfg, actor := env.Config, f.Who()
		agg := rollup.New(pool, rollup.Config{Group: cfg.ConsumerGroup, Topic: topics.UsageEvents, Horizon: cfg.DedupHorizon,
			MaxLag: cfg.MaxLag, ConflictAlertThreshold: cfg.ConflictAlertThreshold, DefaultPlan: cfg.DefaultPlan,
			AdjustmentSignatures: cfg.AdjustmentSigning.Policy(), Logger: env.Log})
		c, err := agg.ResolveConflict(ctx, id, resolution, actor, f.Note)
		if err != nil {
			return err
		}
		what := "left uncounted"
		if resolution == usagedata.ResolutionCounted {
			// Copies of one id in one metric and time count their maximum
			// once: what this one added may be less than its value.
			what = fmt.Sprintf("counted %d %s at %s: added %d and %d event(s)",
				*c.Value, c.Metric, c.Time.Format(time.RFC3339Nano), deref(c.CountedAmount), deref(c.CountedEvents))
		}
		fmt.Fprintf(env.Out, "conflict %d (tenant %s, id %s) %s: %s by %s\n", c.ID, c.Tenant, c.EventID, resolution, what, actor)
		return nil
	}
}

type rebuildFlags struct {
	cli.Audit
	From   string
	Meters meterNames
	DryRun bool
}

// meterNames is a repeatable --meter flag.
type meterNames []string

func (m *meterNames) String() string { return strings.Join(*m, ",") }

func (m *meterNames) Set(v string) error {
	if v == "" {
		return errors.New("a meter name must not be empty")
	}
	*m = append(*m, v)
	return nil
}

func (f *rebuildFlags) Bind(fs *flag.FlagSet) {
	fs.StringVar(&f.From, "from", "", "start of the first month rebuilt, RFC 3339 (2026-11-01T00:00:00Z)")
	fs.Var(&f.Meters, "meter", "rebuild only this meter's windows (repeatable): backfill a new or changed meter from the log")
	fs.BoolVar(&f.DryRun, "dry-run", false, "compare only; change nothing")
	f.Audit.Bind(fs)
}

func rebuildCmd(ctx context.Context, env Env, f rebuildFlags, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("unexpected argument %q", args[0])
	}
	from, err := time.Parse(time.RFC3339, f.From)
	if err != nil {
		return fmt.Errorf("--from must be an RFC 3339 time such as 2026-11-01T00:00:00Z, got %q", f.From)
	}
	cfg := env.Config
	pool, err := Open(ctx, cfg.DatabaseURL, 0, env.Log)
	if err != nil {
		return err
	}
	defer pool.Close()
	rep, err := rebuild.Run(ctx, pool, rebuild.Options{
		DatabaseURL: cfg.DatabaseURL, Brokers: cfg.KafkaBrokers, Security: cfg.KafkaSecurity, Topic: topics.UsageEvents, Group: cfg.ConsumerGroup,
		From: from, Horizon: cfg.DedupHorizon, MaxLag: cfg.MaxLag, DefaultPlan: cfg.DefaultPlan, Meters: f.Meters, DryRun: f.DryRun, Logger: env.Log,
		AdjustmentSignatures: cfg.AdjustmentSigning.Policy(), By: auditlog.By{Actor: f.Who(), Note: f.Note},
	})
	if err != nil {
		return err
	}
	PrintRebuild(env.Out, rep)
	return nil
}

// PrintRebuild writes a rebuild report for people.
func PrintRebuild(out io.Writer, rep rebuild.Report) {
	scope := "windows"
	if len(rep.Meters) > 0 {
		scope = "the windows of meter " + strings.Join(rep.Meters, ", ")
	}
	fmt.Fprintf(out, "rebuilt %s from %s: replayed %d records, compared %d windows, %d changed\n",
		scope, rep.From.Format(time.RFC3339), rep.Records, rep.Windows, len(rep.Changes))
	if len(rep.Changes) > 0 {
		tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TENANT\tMETER\tGROUP\tWINDOW\tSTART\tBEFORE\tAFTER")
		for _, c := range rep.Changes {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s (%d events)\t%s (%d events)\n", c.Tenant, c.Metric, groupOrDash(c.Group), c.Granularity,
				c.Start.UTC().Format(time.RFC3339), orNone(c.Before), c.EventsBefore, orNone(c.After), c.EventsAfter)
		}
		_ = tw.Flush()
	}
	if rep.Swapped {
		fmt.Fprintln(out, "swapped: the live windows now equal the rebuilt ones")
	} else {
		fmt.Fprintln(out, "dry run: nothing changed")
	}
}

// groupOrDash shows a window's group key; "-" for a meter without groups.
func groupOrDash(key string) string {
	if key == "" {
		return "-"
	}
	return key
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
