// Command biller makes Stripe agree with Postgres: it pushes each tenant's
// usage deltas as billing meter events, reconciles, and keeps a DLQ.
//
//	biller [flags]                                        serve (see -h)
//	biller migrate [flags]                                apply database migrations and exit
//	biller reconcile --period YYYY-MM [--format table|csv|json]
//	biller dlq list | show ID | replay (ID... | --all) | discard ID... [--actor NAME] [--note TEXT]
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"

	"github.com/usagemeter/metering/internal/biller"
	"github.com/usagemeter/metering/internal/cli"
	"github.com/usagemeter/metering/internal/config"
	"github.com/usagemeter/metering/internal/service"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// run is the whole command; it returns the exit status: 0 done, 1 the
// command failed, 2 the command line or settings are wrong.
func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cmd, sub := "serve", ""
	if len(args) > 0 && slices.Contains([]string{"migrate", "reconcile", "dlq"}, args[0]) {
		cmd, args = args[0], args[1:]
	}
	if cmd == "dlq" {
		if len(args) == 0 {
			fmt.Fprintln(stderr, "biller dlq: want list, show, replay or discard")
			return 2
		}
		sub, args = args[0], args[1:]
	}
	settings, rest := cli.SplitOwn(args, biller.SubcommandFlags)
	cfg, extra, err := config.LoadBiller("biller", settings, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "biller:", err)
		return 2
	}
	rest = append(rest, extra...)
	log, err := service.NewLogger(stderr, cfg.LogLevel, "biller")
	if err != nil {
		fmt.Fprintln(stderr, "biller:", err)
		return 2
	}
	ctx, stop := service.SignalContext()
	defer stop()
	switch cmd {
	case "serve":
		if len(rest) > 0 {
			fmt.Fprintf(stderr, "biller: unknown argument %q; commands: migrate, reconcile, dlq\n", rest[0])
			return 2
		}
		err = biller.Run(ctx, cfg, log, nil)
	case "migrate":
		var pool interface{ Close() }
		if pool, err = biller.Open(ctx, cfg.DatabaseURL, 0, log); err == nil {
			pool.Close()
		}
	case "reconcile":
		err = biller.ReconcileCommand(ctx, cfg, log, rest, stdout)
	case "dlq":
		err = biller.DLQCommand(ctx, cfg, log, sub, rest, stdout)
	}
	if err != nil {
		log.Error("biller failed", "command", cmd, "err", err)
		return 1
	}
	return 0
}
