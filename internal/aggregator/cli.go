package aggregator

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/usagemeter/metering/internal/aggregate"
	"github.com/usagemeter/metering/internal/cli"
	"github.com/usagemeter/metering/internal/config"
	"github.com/usagemeter/metering/internal/dlq"
	"github.com/usagemeter/metering/internal/outbox"
	"github.com/usagemeter/metering/internal/rebuild"
	"github.com/usagemeter/metering/internal/topics"
)

// The operator commands' own flags; every other flag is a service setting
// and may stand anywhere on the command line (see cli.SplitOwn).
var (
	DLQFlags     = cli.Own{Valued: []string{"status", "limit", "actor", "note", "format"}, Boolean: []string{"all"}}
	RebuildFlags = cli.Own{Valued: []string{"from"}, Boolean: []string{"dry-run"}}
	// ConflictsFlags are `aggregator conflicts`' own flags.
	ConflictsFlags = cli.Own{Valued: []string{"tenant", "status", "limit", "actor", "note", "format"}}
)

// DLQCommand runs `aggregator dlq list|replay|discard`.
func DLQCommand(ctx context.Context, cfg config.Aggregator, log *slog.Logger, sub string, args []string, out io.Writer) error {
	flags, rest, err := DLQFlags.Parse(args)
	if err != nil {
		return err
	}
	pool, err := Open(ctx, cfg.DatabaseURL, 0, log)
	if err != nil {
		return err
	}
	defer pool.Close()
	q := dlq.New(pool)
	actor := flags["actor"]
	if actor == "" {
		actor = cli.Actor()
	}
	var ids []int64
	for _, r := range rest {
		id, err := strconv.ParseInt(r, 10, 64)
		if err != nil {
			return fmt.Errorf("dead letter ids are numbers, got %q", r)
		}
		ids = append(ids, id)
	}
	switch sub {
	case "list":
		limit, status, err := listFlags(flags, "pending")
		if err != nil {
			return err
		}
		if status == "all" {
			status = ""
		}
		recs, err := q.List(ctx, status, limit)
		if err != nil {
			return err
		}
		if flags["format"] == "json" {
			enc := json.NewEncoder(out)
			enc.SetIndent("", "  ")
			return enc.Encode(recs)
		}
		tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tFAILED AT\tSTATUS\tTENANT\tCLASS\tSOURCE\tERROR")
		for _, r := range recs {
			msg := r.Error
			if len(msg) > 80 {
				msg = msg[:77] + "..."
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s/%d@%d\t%s\n", r.ID, r.FailedAt.UTC().Format(time.RFC3339), r.Status, r.Tenant,
				r.ErrorClass, r.SourceTopic, r.SourcePartition, r.SourceOffset, msg)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintf(out, "%d dead letters\n", len(recs))
		return nil
	case "replay":
		done, err := q.Replay(ctx, ids, flags["all"] == "true", actor, flags["note"])
		if err != nil {
			return err
		}
		// Publish now, so the replay does not wait for a running aggregator.
		w := outbox.NewWriter(cfg.KafkaBrokers)
		w.Transport = cfg.KafkaSecurity.Transport()
		defer w.Close()
		relay := outbox.New(pool, w, log, nil)
		for {
			n, err := relay.PublishPending(ctx)
			if err != nil {
				return fmt.Errorf("replayed %d dead letters into the outbox, but publishing failed (the running aggregator will retry): %w", len(done), err)
			}
			if n == 0 {
				break
			}
		}
		fmt.Fprintf(out, "replayed %d dead letters to %s: %v\n", len(done), topics.UsageEvents, done)
		return nil
	case "discard":
		done, err := q.Discard(ctx, ids, actor, flags["note"])
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "discarded %d dead letters: %v\n", len(done), done)
		return nil
	}
	return fmt.Errorf("unknown dlq command %q; want list, replay or discard", sub)
}

// listFlags reads a list's --limit (a positive number, 100 when unset) and
// --status (defaultStatus when unset; the caller checks its value).
func listFlags(flags map[string]string, defaultStatus string) (limit int, status string, err error) {
	limit = 100
	if s := flags["limit"]; s != "" {
		if limit, err = strconv.Atoi(s); err != nil || limit <= 0 {
			return 0, "", fmt.Errorf("--limit must be a positive number, got %q", s)
		}
	}
	status, ok := flags["status"]
	if !ok {
		status = defaultStatus
	}
	return limit, status, nil
}

// ConflictsCommand runs `aggregator conflicts list|count|dismiss`: the
// review of conflicting resends. count and dismiss take one held
// conflict's id and a --note, and record who (--actor, or user@host),
// when and why.
func ConflictsCommand(ctx context.Context, cfg config.Aggregator, log *slog.Logger, sub string, args []string, out io.Writer) error {
	flags, rest, err := ConflictsFlags.Parse(args)
	if err != nil {
		return err
	}
	var resolution string
	switch sub {
	case "list":
		if len(rest) > 0 {
			return fmt.Errorf("unexpected argument %q; filter with --tenant and --status", rest[0])
		}
	case "count":
		resolution = aggregate.ResolutionCounted
	case "dismiss":
		resolution = aggregate.ResolutionDismissed
	default:
		return fmt.Errorf("unknown conflicts command %q; want list, count or dismiss", sub)
	}
	var id int64
	if resolution != "" {
		if len(rest) != 1 {
			return fmt.Errorf("conflicts %s takes one conflict id, got %d arguments", sub, len(rest))
		}
		if id, err = strconv.ParseInt(rest[0], 10, 64); err != nil {
			return fmt.Errorf("conflict ids are numbers, got %q", rest[0])
		}
		if flags["note"] == "" {
			return fmt.Errorf("conflicts %s needs --note saying why (it is kept with the conflict)", sub)
		}
	}
	limit, status, err := listFlags(flags, "held")
	if err != nil {
		return err
	}
	if !slices.Contains(aggregate.ConflictStatuses, status) {
		return fmt.Errorf("--status must be one of %s, got %q", strings.Join(aggregate.ConflictStatuses, ", "), status)
	}
	pool, err := Open(ctx, cfg.DatabaseURL, 0, log)
	if err != nil {
		return err
	}
	defer pool.Close()
	if resolution != "" {
		actor := flags["actor"]
		if actor == "" {
			actor = cli.Actor()
		}
		agg := aggregate.New(pool, aggregate.Config{Group: cfg.ConsumerGroup, Topic: topics.UsageEvents, Horizon: cfg.DedupHorizon,
			MaxLag: cfg.MaxLag, ConflictAlertThreshold: cfg.ConflictAlertThreshold, Logger: log})
		c, err := agg.ResolveConflict(ctx, id, resolution, actor, flags["note"])
		if err != nil {
			return err
		}
		what := "left uncounted"
		if resolution == aggregate.ResolutionCounted {
			// Copies of one id in one metric and time count their maximum
			// once: what this one added may be less than its value.
			what = fmt.Sprintf("counted %d %s at %s: added %d and %d event(s)",
				*c.Value, c.Metric, c.Time.Format(time.RFC3339Nano), deref(c.CountedAmount), deref(c.CountedEvents))
		}
		fmt.Fprintf(out, "conflict %d (tenant %s, id %s) %s: %s by %s\n", c.ID, c.Tenant, c.EventID, resolution, what, actor)
		return nil
	}
	cs, err := aggregate.NewConflictReader(pool).List(ctx, aggregate.ConflictFilter{Tenant: flags["tenant"], Status: status, Limit: limit})
	if err != nil {
		return err
	}
	if flags["format"] == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if cs == nil {
			cs = []aggregate.Conflict{}
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

// RebuildCommand runs `aggregator rebuild --from TIME [--dry-run]`.
func RebuildCommand(ctx context.Context, cfg config.Aggregator, log *slog.Logger, args []string, out io.Writer) error {
	flags, rest, err := RebuildFlags.Parse(args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return fmt.Errorf("unexpected argument %q", rest[0])
	}
	from, err := time.Parse(time.RFC3339, flags["from"])
	if err != nil {
		return fmt.Errorf("--from must be an RFC 3339 time such as 2026-11-01T00:00:00Z, got %q", flags["from"])
	}
	pool, err := Open(ctx, cfg.DatabaseURL, 0, log)
	if err != nil {
		return err
	}
	defer pool.Close()
	rep, err := rebuild.Run(ctx, pool, rebuild.Options{
		DatabaseURL: cfg.DatabaseURL, Brokers: cfg.KafkaBrokers, Security: cfg.KafkaSecurity, Topic: topics.UsageEvents, Group: cfg.ConsumerGroup,
		From: from, Horizon: cfg.DedupHorizon, MaxLag: cfg.MaxLag, DryRun: flags["dry-run"] == "true", Logger: log,
	})
	if err != nil {
		return err
	}
	PrintRebuild(out, rep)
	return nil
}

// PrintRebuild writes a rebuild report for people.
func PrintRebuild(out io.Writer, rep rebuild.Report) {
	fmt.Fprintf(out, "rebuilt windows from %s: replayed %d records, compared %d windows, %d changed\n",
		rep.From.Format(time.RFC3339), rep.Records, rep.Windows, len(rep.Changes))
	if len(rep.Changes) > 0 {
		tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TENANT\tMETRIC\tWINDOW\tSTART\tBEFORE\tAFTER")
		for _, c := range rep.Changes {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s (%d events)\t%s (%d events)\n", c.Tenant, c.Metric, c.Granularity,
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
