// Package cli is the one command model of the three binaries: a Program
// is a binary's settings, its service, its migrator and its operator
// commands; Main picks the command, loads the settings, binds the
// command's own flags into a typed struct with the standard flag package,
// runs it and maps the outcome to an exit status. It also names the person
// who runs a command for audit trails.
//
// Invariant: nothing here touches a database or the network.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/user"
	"strconv"
	"strings"

	"github.com/usagemeter/metering/internal/config"
	"github.com/usagemeter/metering/internal/service"
	"github.com/usagemeter/metering/internal/storage/auditlog"
)

// Exit statuses of every binary.
const (
	ExitOK     = 0 // done
	ExitFailed = 1 // the command failed
	ExitUsage  = 2 // the command line or the settings are wrong
)

// Env is what a command runs with: the loaded settings, the logger and
// where its output goes.
type Env[C any] struct {
	Config C
	Log    *slog.Logger
	Out    io.Writer
}

// Flags is a command's own flags: a struct whose Bind registers each
// field, typed, on a FlagSet.
type Flags interface{ Bind(fs *flag.FlagSet) }

// NoFlags is the flags of a command that has none.
type NoFlags struct{}

// Bind registers nothing.
func (*NoFlags) Bind(*flag.FlagSet) {}

// Command is one operator command.
type Command[C any] struct {
	// Name is the words after the binary's name: "rebuild", "dlq list".
	Name string
	// bind registers the command's flags on fs and returns what runs it
	// with their parsed values and its positional arguments.
	bind func(fs *flag.FlagSet) func(ctx context.Context, env Env[C], args []string) error
}

// New makes the command name, whose own flags are the fields of F, bound
// by (*F).Bind; run receives them parsed.
func New[C, F any, PF interface {
	*F
	Flags
}](name string, run func(ctx context.Context, env Env[C], flags F, args []string) error) Command[C] {
	return Command[C]{Name: name, bind: func(fs *flag.FlagSet) func(context.Context, Env[C], []string) error {
		var f F
		PF(&f).Bind(fs)
		return func(ctx context.Context, env Env[C], args []string) error { return run(ctx, env, f, args) }
	}}
}

// Program is one binary: without a command it serves; `migrate` applies
// the database migrations; Commands are its operator commands.
type Program[C any] struct {
	Name string
	// Load reads the settings from args (settings flags only) and the
	// environment; it returns the arguments it did not take.
	Load func(name string, args []string, getenv func(string) string, output io.Writer) (C, []string, error)
	// Common returns the settings every binary has.
	Common   func(C) config.Common
	Serve    func(ctx context.Context, cfg C, log *slog.Logger, ready func(net.Addr)) error
	Migrate  func(ctx context.Context, databaseURL string, log *slog.Logger) error
	Commands []Command[C]
}

// Main runs the command line args (without the program name) and returns
// the exit status. Settings flags may stand anywhere on the command line,
// before, between or after the command's own flags and arguments.
func (p Program[C]) Main(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	name, cmd, args, err := p.pick(args)
	if err != nil {
		fmt.Fprintf(stderr, "%s %s\n", p.Name, err)
		return ExitUsage
	}
	fs := flag.NewFlagSet(p.Name+" "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var run func(context.Context, Env[C], []string) error
	if cmd != nil {
		run = cmd.bind(fs)
	}
	settings, rest := split(args, fs)
	cfg, extra, err := p.Load(p.Name, settings, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		if run != nil {
			fmt.Fprintf(stderr, "\nflags of %s %s:\n", p.Name, name)
			fs.PrintDefaults()
		}
		return ExitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", p.Name, err)
		return ExitUsage
	}
	rest, err = parseInterspersed(fs, append(rest, extra...))
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", p.Name, err)
		return ExitUsage
	}
	if (name == "serve" || name == "migrate") && len(rest) > 0 {
		fmt.Fprintf(stderr, "%s: unknown argument %q; commands: %s\n", p.Name, rest[0], strings.Join(p.words(), ", "))
		return ExitUsage
	}
	common := p.Common(cfg)
	log, err := service.NewLogger(stderr, common.LogLevel, p.Name)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", p.Name, err)
		return ExitUsage
	}
	ctx, stop := service.SignalContext()
	defer stop()
	switch {
	case name == "serve":
		err = p.Serve(ctx, cfg, log, nil)
	case name == "migrate":
		err = p.Migrate(ctx, common.DatabaseURL, log)
	case run != nil:
		err = run(ctx, Env[C]{Config: cfg, Log: log, Out: stdout}, rest)
	default: // a group's word with a word after it that names no command
		group, sub, _ := strings.Cut(name, " ")
		err = fmt.Errorf("unknown %s command %q; want %s", group, sub, orList(p.subs(group)))
	}
	if err != nil {
		log.Error(p.Name+" failed", "command", name, "err", err)
		return ExitFailed
	}
	return ExitOK
}

// pick finds the command args name: "serve" when they name none,
// "migrate", or one of p.Commands (nil for serve, migrate and an unknown
// word in a group such as "dlq purge", which fails once the settings are
// loaded). It returns the arguments after the command's name.
func (p Program[C]) pick(args []string) (name string, cmd *Command[C], rest []string, err error) {
	if len(args) == 0 {
		return "serve", nil, args, nil
	}
	if args[0] == "migrate" {
		return "migrate", nil, args[1:], nil
	}
	for i := range p.Commands {
		if p.Commands[i].Name == args[0] {
			return args[0], &p.Commands[i], args[1:], nil
		}
	}
	subs := p.subs(args[0])
	if len(subs) == 0 {
		return "serve", nil, args, nil
	}
	if len(args) == 1 {
		return "", nil, nil, fmt.Errorf("%s: want %s", args[0], orList(subs))
	}
	name = args[0] + " " + args[1]
	for i := range p.Commands {
		if p.Commands[i].Name == name {
			return name, &p.Commands[i], args[2:], nil
		}
	}
	return name, nil, args[2:], nil
}

// subs lists the second words of the commands in group, in order.
func (p Program[C]) subs(group string) []string {
	var subs []string
	for _, c := range p.Commands {
		if g, sub, ok := strings.Cut(c.Name, " "); ok && g == group {
			subs = append(subs, sub)
		}
	}
	return subs
}

// words lists the first words of p's commands, migrate first.
func (p Program[C]) words() []string {
	words := []string{"migrate"}
	for _, c := range p.Commands {
		w, _, _ := strings.Cut(c.Name, " ")
		if words[len(words)-1] != w {
			words = append(words, w)
		}
	}
	return words
}

func orList(words []string) string {
	if len(words) < 2 {
		return strings.Join(words, "")
	}
	return strings.Join(words[:len(words)-1], ", ") + " or " + words[len(words)-1]
}

// Run runs the command name of cmds with args, which hold its own flags
// and positional arguments only (no settings): what Main does once the
// settings are loaded.
func Run[C any](ctx context.Context, cmds []Command[C], name string, env Env[C], args []string) error {
	for _, c := range cmds {
		if c.Name != name {
			continue
		}
		fs := flag.NewFlagSet(name, flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		run := c.bind(fs)
		rest, err := parseInterspersed(fs, args)
		if err != nil {
			return err
		}
		return run(ctx, env, rest)
	}
	group, sub, _ := strings.Cut(name, " ")
	var subs []string
	for _, c := range cmds {
		if g, s, ok := strings.Cut(c.Name, " "); ok && g == group {
			subs = append(subs, s)
		}
	}
	return fmt.Errorf("unknown %s command %q; want %s", group, sub, orList(subs))
}

// split separates the settings flags from the command's own flags (those
// fs knows) and positional arguments, so `biller dlq replay 7
// -database-url X` works in any order. A settings flag without "=" takes
// the next argument as its value.
func split(args []string, fs *flag.FlagSet) (settings, rest []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return settings, append(rest, args[i:]...)
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			rest = append(rest, a)
			continue
		}
		name, _, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if f := fs.Lookup(name); f != nil {
			rest = append(rest, a)
			if !hasVal && !isBool(f) && i+1 < len(args) {
				i++
				rest = append(rest, args[i])
			}
			continue
		}
		settings = append(settings, a)
		if !hasVal && i+1 < len(args) {
			i++
			settings = append(settings, args[i])
		}
	}
	return settings, rest
}

func isBool(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// parseInterspersed parses fs's flags wherever they stand in args and
// returns the positional arguments in order; everything after "--" is
// positional.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var rest []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		left := fs.Args()
		if len(left) == 0 {
			return rest, nil
		}
		if used := len(args) - len(left); used > 0 && args[used-1] == "--" {
			return append(rest, left...), nil
		}
		rest = append(rest, left[0])
		args = left[1:]
	}
}

// PositiveInt registers --name, a positive integer, default def.
func PositiveInt(fs *flag.FlagSet, p *int, name string, def int, usage string) {
	*p = def
	fs.Func(name, fmt.Sprintf("%s (default %d)", usage, def), func(s string) error {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			return errors.New("must be a positive number")
		}
		*p = n
		return nil
	})
}

// IDs parses positional arguments as record ids; what names them in the
// error ("dead letter", "push").
func IDs(args []string, what string) ([]int64, error) {
	var ids []int64
	for _, a := range args {
		id, err := strconv.ParseInt(a, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s ids are numbers, got %q", what, a)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// Audit is the flags of a command that changes something on someone's
// behalf: who (--actor) and why (--note), kept in the audit trail.
type Audit struct{ Actor, Note string }

// Bind registers --actor and --note.
func (a *Audit) Bind(fs *flag.FlagSet) {
	fs.StringVar(&a.Actor, "actor", "", "who runs this, for the audit trail (default user@host)")
	fs.StringVar(&a.Note, "note", "", "why, kept in the audit trail")
}

// Selection is the flags of an audited action on queued records (replay
// dead letters, resend credits): Audit, and --all for every waiting
// record instead of the ids named.
type Selection struct {
	Audit
	All bool
}

// Bind registers --actor, --note and --all.
func (s *Selection) Bind(fs *flag.FlagSet) {
	s.Audit.Bind(fs)
	fs.BoolVar(&s.All, "all", false, "every waiting record instead of the ids named")
}

// IDs parses the ids named (what names them in errors), refusing ids
// beside --all.
func (s Selection) IDs(args []string, what string) ([]int64, error) {
	ids, err := IDs(args, what)
	if err != nil {
		return nil, err
	}
	if s.All && len(ids) > 0 {
		return nil, fmt.Errorf("name %ss by id or use --all, not both", what)
	}
	return ids, nil
}

// Who is the audit log's actor of the command: "cli:" and --actor, or
// user@host when it is unset. The prefix keeps an operator's name apart
// from an API key's actor ("key:<id>"), whatever --actor says.
func (a Audit) Who() string {
	if a.Actor != "" {
		return auditlog.CLIActor(a.Actor)
	}
	return auditlog.CLIActor(Actor())
}

// Actor names whoever runs the command: user@host.
func Actor() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return name + "@" + host
}
