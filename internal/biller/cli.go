package biller

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/usagemeter/metering/internal/cli"
	"github.com/usagemeter/metering/internal/config"
	"github.com/usagemeter/metering/internal/periodclose"
	"github.com/usagemeter/metering/internal/stripesync"
)

// Commands are the biller's operator commands; each declares its own
// flags as a struct. Settings flags may stand anywhere on their command
// lines (see cli.Program).
var Commands = []cli.Command[config.Biller]{
	cli.New("reconcile", reconcile),
	cli.New("dlq list", dlqList),
	cli.New("dlq show", dlqShow),
	cli.New("dlq replay", dlqReplay),
	cli.New("dlq discard", dlqDiscard),
	cli.New("holds list", holdsList),
	cli.New("holds approve", holdsApprove),
	cli.New("holds reject", holdsReject),
	cli.New("credits list", creditsList),
	cli.New("credits resend", creditsResend),
	cli.New("audit", auditList),
}

// Env is what a biller command runs with.
type Env = cli.Env[config.Biller]

// ReconcileCommand runs `biller reconcile --period YYYY-MM [--format table|csv|json]`
// with args, its own flags and arguments.
func ReconcileCommand(ctx context.Context, cfg config.Biller, log *slog.Logger, args []string, out io.Writer) error {
	return cli.Run(ctx, Commands, "reconcile", Env{Config: cfg, Log: log, Out: out}, args)
}

// DLQCommand runs `biller dlq list|show ID|replay (ID...|--all)|discard ID...`;
// replay and discard take --actor and --note for the audit log.
func DLQCommand(ctx context.Context, cfg config.Biller, log *slog.Logger, sub string, args []string, out io.Writer) error {
	return cli.Run(ctx, Commands, "dlq "+sub, Env{Config: cfg, Log: log, Out: out}, args)
}

// HoldsCommand runs `biller holds list|approve ID|reject ID` (see
// holds.go); approve and reject take --note (required) and --actor.
func HoldsCommand(ctx context.Context, cfg config.Biller, log *slog.Logger, sub string, args []string, out io.Writer) error {
	return cli.Run(ctx, Commands, "holds "+sub, Env{Config: cfg, Log: log, Out: out}, args)
}

// CreditsCommand runs `biller credits list [--status S] [--format json]`
// or `biller credits resend (ID...|--all) [--actor NAME] [--note TEXT]`.
func CreditsCommand(ctx context.Context, cfg config.Biller, log *slog.Logger, sub string, args []string, out io.Writer) error {
	return cli.Run(ctx, Commands, "credits "+sub, Env{Config: cfg, Log: log, Out: out}, args)
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

func open(ctx context.Context, cfg config.Biller, log *slog.Logger) (*stripesync.Biller, func(), error) {
	b, _, closeFn, err := openWithCloser(ctx, cfg, log)
	return b, closeFn, err
}

// openWithCloser is open that also returns the period closer on the same
// pool.
func openWithCloser(ctx context.Context, cfg config.Biller, log *slog.Logger) (*stripesync.Biller, *periodclose.Closer, func(), error) {
	pool, err := Open(ctx, cfg.DatabaseURL, 0, log)
	if err != nil {
		return nil, nil, nil, err
	}
	b, err := NewBiller(pool, cfg, log, nil)
	if err != nil {
		pool.Close()
		return nil, nil, nil, err
	}
	return b, NewCloser(pool, cfg, log), pool.Close, nil
}

type reconcileFlags struct{ Period, Format string }

func (f *reconcileFlags) Bind(fs *flag.FlagSet) {
	fs.StringVar(&f.Period, "period", "", "month reconciled, YYYY-MM (default this month)")
	fs.StringVar(&f.Format, "format", "table", "table, csv or json")
}

func reconcile(ctx context.Context, env Env, f reconcileFlags, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("unexpected argument %q", args[0])
	}
	period, err := ParsePeriod(f.Period)
	if err != nil {
		return err
	}
	b, closer, closeFn, err := openWithCloser(ctx, env.Config, env.Log)
	if err != nil {
		return err
	}
	defer closeFn()
	rows, err := b.Reconcile(ctx, period)
	if err != nil {
		return err
	}
	if err := AddCompleteness(ctx, closer, period, rows); err != nil {
		return err
	}
	return WriteReport(env.Out, rows, f.Format)
}

// listFlags is --format of a list command (`dlq list`, `holds list`).
type listFlags struct{ Format string }

func (f *listFlags) Bind(fs *flag.FlagSet) {
	fs.StringVar(&f.Format, "format", "table", "table or json")
}

// list is what a list command prints: a table with a header, a row per
// item and a closing count, or the items as JSON.
type list[T any] struct {
	header string
	row    func(T) string
	// counted ends the table: "%d pushes held for approval".
	counted string
}

// runList runs a list command: args must be empty; read gives the items
// from a biller opened on env's configuration.
func runList[T any](ctx context.Context, env Env, f listFlags, args []string, l list[T], read func(*stripesync.Biller, context.Context) ([]T, error)) error {
	if len(args) > 0 {
		return fmt.Errorf("unexpected argument %q", args[0])
	}
	b, closeFn, err := open(ctx, env.Config, env.Log)
	if err != nil {
		return err
	}
	defer closeFn()
	items, err := read(b, ctx)
	if err != nil {
		return err
	}
	out := env.Out
	if f.Format == "json" {
		if items == nil {
			items = []T{} // none is [], not null
		}
		return json.NewEncoder(out).Encode(items)
	}
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, l.header)
	for _, it := range items {
		fmt.Fprintln(tw, l.row(it))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err = fmt.Fprintf(out, l.counted+"\n", len(items))
	return err
}

// dlqList runs `biller dlq list [--format json]`.
func dlqList(ctx context.Context, env Env, f listFlags, args []string) error {
	return runList(ctx, env, f, args, list[stripesync.DeadPush]{
		header: "ID\tDEAD SINCE\tTENANT\tMETRIC\tPERIOD\tVALUE\tATTEMPTS\tLAST ERROR",
		row: func(d stripesync.DeadPush) string {
			return fmt.Sprintf("%d\t%s\t%s\t%s\t%s\t%s\t%d\t%s", d.ID, d.DeadSince.UTC().Format(time.RFC3339), d.Tenant, d.Metric, d.Period, d.Value,
				d.Attempts, terminalText(d.LastError, 80))
		},
		counted: "%d pushes in the billing DLQ",
	}, (*stripesync.Biller).DeadLetters)
}

func dlqShow(ctx context.Context, env Env, _ cli.NoFlags, args []string) error {
	ids, err := cli.IDs(args, "push")
	if err != nil {
		return err
	}
	if len(ids) != 1 {
		return fmt.Errorf("show takes one push id")
	}
	b, closeFn, err := open(ctx, env.Config, env.Log)
	if err != nil {
		return err
	}
	defer closeFn()
	d, err := b.DeadLetter(ctx, ids[0])
	if err != nil {
		return err
	}
	enc := json.NewEncoder(env.Out)
	enc.SetIndent("", "  ")
	return enc.Encode(d)
}

func dlqReplay(ctx context.Context, env Env, f cli.Selection, args []string) error {
	ids, err := f.IDs(args, "push")
	if err != nil {
		return err
	}
	b, closeFn, err := open(ctx, env.Config, env.Log)
	if err != nil {
		return err
	}
	defer closeFn()
	r, err := b.ReplayWithNote(ctx, ids, f.All, f.Who(), f.Note)
	if err != nil {
		return err
	}
	out := env.Out
	fmt.Fprintf(out, "replayed: %d sent, %d back in the DLQ\n", r.Sent, r.Dead)
	if r.Landed+r.Replaced+r.Waiting > 0 {
		fmt.Fprintf(out, "created more than %s ago, so checked against Stripe's summaries first (Stripe may have forgotten their identifiers): "+
			"%d had arrived and are marked sent without a call; %d had not (all) arrived and were replaced by new pushes, under new identifiers, "+
			"for what was missing; %d customer-meter-months wait until nothing of theirs was sent for a while, and the biller's next sync settles them\n",
			stripesync.DedupHorizon, r.Landed, r.Replaced, r.Waiting)
	}
	return nil
}

func dlqDiscard(ctx context.Context, env Env, f cli.Audit, args []string) error {
	ids, err := cli.IDs(args, "push")
	if err != nil {
		return err
	}
	b, closeFn, err := open(ctx, env.Config, env.Log)
	if err != nil {
		return err
	}
	defer closeFn()
	n, err := b.Discard(ctx, ids, f.Who(), f.Note)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Out, "discarded %d pushes; their usage stays unbilled and shows as drift in the reconciliation\n", n)
	return nil
}

type creditsListFlags struct {
	Status, Format string
	Limit          int
}

func (f *creditsListFlags) Bind(fs *flag.FlagSet) {
	fs.StringVar(&f.Status, "status", "dead", "which credits: "+strings.Join(stripesync.CreditStatuses, ", ")+" (open: not sent yet)")
	fs.StringVar(&f.Format, "format", "table", "table or json")
	cli.PositiveInt(fs, &f.Limit, "limit", 100, "most credits listed")
}

// creditsList lists customer credits: by default the dead ones, which
// Stripe refused for good and wait for `credits resend`.
func creditsList(ctx context.Context, env Env, f creditsListFlags, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("unexpected argument %q; filter with --status", args[0])
	}
	if f.Format != "table" && f.Format != "json" {
		return fmt.Errorf("format %q: want table or json", f.Format)
	}
	b, closeFn, err := open(ctx, env.Config, env.Log)
	if err != nil {
		return err
	}
	defer closeFn()
	credits, err := b.Credits(ctx, f.Status, f.Limit)
	if err != nil {
		return err
	}
	out := env.Out
	if f.Format == "json" {
		if credits == nil {
			credits = []stripesync.Credit{}
		}
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(credits)
	}
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tUPDATED\tSTATUS\tTENANT\tMETER\tGROUP\tPERIOD\tCUSTOMER\tQUANTITY\tAMOUNT\tATTEMPTS\tLAST ERROR")
	for _, c := range credits {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d %s\t%d\t%s\n", c.ID, c.Updated.UTC().Format(time.RFC3339), c.Status,
			terminalText(c.Tenant, 64), terminalText(c.Metric, 64), terminalText(c.GroupKey, 64), c.Period.Format("2006-01"),
			terminalText(c.Customer, 64), c.Quantity, c.Amount, c.Currency, c.Attempts, terminalText(c.LastError, 80))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(out, "%d credits\n", len(credits))
	return nil
}

// creditsResend sends dead credits to Stripe again, audited.
func creditsResend(ctx context.Context, env Env, f cli.Selection, args []string) error {
	ids, err := f.IDs(args, "credit")
	if err != nil {
		return err
	}
	b, closeFn, err := open(ctx, env.Config, env.Log)
	if err != nil {
		return err
	}
	defer closeFn()
	r, err := b.ResendCredits(ctx, ids, f.All, f.Who(), f.Note)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Out, "resent %d dead credits %v: %d sent, %d refused again (still dead), %d not settled yet (still dead, resend later)\n",
		len(r.IDs), r.IDs, r.Sent, r.Dead, r.Waiting)
	return nil
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
