package biller

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/usagemeter/metering/internal/billing"
	"github.com/usagemeter/metering/internal/cli"
	"github.com/usagemeter/metering/internal/config"
)

// SubcommandFlags are the operator commands' own flags; every other flag
// is a service setting.
var SubcommandFlags = cli.Own{
	Valued:  []string{"period", "format", "actor", "note"},
	Boolean: []string{"all"},
}

func open(ctx context.Context, cfg config.Biller, log *slog.Logger) (*billing.Biller, func(), error) {
	pool, err := Open(ctx, cfg.DatabaseURL, 0, log)
	if err != nil {
		return nil, nil, err
	}
	b, err := NewBiller(pool, cfg, log, nil)
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	return b, pool.Close, nil
}

// ReconcileCommand runs `biller reconcile --period YYYY-MM [--format table|csv|json]`.
func ReconcileCommand(ctx context.Context, cfg config.Biller, log *slog.Logger, args []string, out io.Writer) error {
	flags, rest, err := SubcommandFlags.Parse(args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return fmt.Errorf("unexpected argument %q", rest[0])
	}
	period, err := ParsePeriod(flags["period"])
	if err != nil {
		return err
	}
	b, closeFn, err := open(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer closeFn()
	rows, err := b.Reconcile(ctx, period)
	if err != nil {
		return err
	}
	return WriteReport(out, rows, flags["format"])
}

// DLQCommand runs `biller dlq list|show ID|replay (ID...|--all)|discard ID...`.
func DLQCommand(ctx context.Context, cfg config.Biller, log *slog.Logger, sub string, args []string, out io.Writer) error {
	flags, rest, err := SubcommandFlags.Parse(args)
	if err != nil {
		return err
	}
	var ids []int64
	for _, r := range rest {
		id, err := strconv.ParseInt(r, 10, 64)
		if err != nil {
			return fmt.Errorf("push ids are numbers, got %q", r)
		}
		ids = append(ids, id)
	}
	actor := flags["actor"]
	if actor == "" {
		actor = cli.Actor()
	}
	b, closeFn, err := open(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer closeFn()
	switch sub {
	case "list":
		dead, err := b.DeadLetters(ctx)
		if err != nil {
			return err
		}
		if flags["format"] == "json" {
			return json.NewEncoder(out).Encode(dead)
		}
		tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tDEAD SINCE\tTENANT\tMETRIC\tPERIOD\tVALUE\tATTEMPTS\tLAST ERROR")
		for _, d := range dead {
			msg := terminalText(d.LastError, 80)
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", d.ID, d.DeadSince.UTC().Format(time.RFC3339), d.Tenant, d.Metric, d.Period, d.Value, d.Attempts, msg)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintf(out, "%d pushes in the billing DLQ\n", len(dead))
		return nil
	case "show":
		if len(ids) != 1 {
			return fmt.Errorf("show takes one push id")
		}
		d, err := b.DeadLetter(ctx, ids[0])
		if err != nil {
			return err
		}
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(d)
	case "replay":
		r, err := b.Replay(ctx, ids, flags["all"] == "true", actor)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "replayed: %d sent, %d back in the DLQ\n", r.Sent, r.Dead)
		if r.Landed+r.Replaced+r.Waiting > 0 {
			fmt.Fprintf(out, "created more than %s ago, so checked against Stripe's summaries first (Stripe may have forgotten their identifiers): "+
				"%d had arrived and are marked sent without a call; %d had not (all) arrived and were replaced by new pushes, under new identifiers, "+
				"for what was missing; %d customer-meter-months wait until nothing of theirs was sent for a while, and the biller's next sync settles them\n",
				billing.DedupHorizon, r.Landed, r.Replaced, r.Waiting)
		}
		return nil
	case "discard":
		n, err := b.Discard(ctx, ids, actor, flags["note"])
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "discarded %d pushes; their usage stays unbilled and shows as drift in the reconciliation\n", n)
		return nil
	}
	return fmt.Errorf("unknown dlq command %q; want list, show, replay or discard", sub)
}

// terminalText makes s, which may come from Stripe, safe to print on a
// terminal: control characters (escape sequences among them) and invalid
// UTF-8 are shown as Go escapes, and it is cut to at most max bytes on a
// rune boundary.
func terminalText(s string, max int) string {
	if !utf8.ValidString(s) || strings.IndexFunc(s, unicode.IsControl) >= 0 {
		q := strconv.Quote(s)
		s = q[1 : len(q)-1]
	}
	if len(s) <= max {
		return s
	}
	cut := max - len("...")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}
