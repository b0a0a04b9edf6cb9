// Command aggregator consumes usage.events and keeps per-tenant usage
// windows, quota breaches and dead letters in Postgres, exactly once.
//
//	aggregator [flags]                         serve (see -h)
//	aggregator migrate [flags]                 apply database migrations and exit
//	aggregator dlq list [--status S] [--limit N] [--format json]
//	aggregator dlq replay (ID... | --all) [--actor NAME] [--note TEXT]
//	aggregator dlq discard ID... [--actor NAME] [--note TEXT]
//	aggregator rebuild --from TIME [--dry-run]   recompute windows from the Kafka log
//	aggregator conflicts list [--tenant T] [--status held|resolved|all|RESOLUTION] [--limit N] [--format json]
//	aggregator conflicts count ID --note TEXT [--actor NAME]     count a held conflict's event
//	aggregator conflicts dismiss ID --note TEXT [--actor NAME]   leave it uncounted
//
// Settings flags (-database-url, -kafka-brokers, ...) may stand anywhere.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/usagemeter/metering/internal/aggregator"
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
	cmd := "serve"
	if len(args) > 0 && (args[0] == "migrate" || args[0] == "dlq" || args[0] == "rebuild" || args[0] == "conflicts") {
		cmd, args = args[0], args[1:]
	}
	sub := ""
	if cmd == "dlq" {
		if len(args) == 0 {
			fmt.Fprintln(stderr, "aggregator dlq: want list, replay or discard")
			return 2
		}
		sub, args = args[0], args[1:]
	}
	if cmd == "conflicts" {
		if len(args) == 0 {
			fmt.Fprintln(stderr, "aggregator conflicts: want list, count or dismiss")
			return 2
		}
		sub, args = args[0], args[1:]
	}
	settings, rest := cli.SplitOwn(args, aggregator.DLQFlags, aggregator.RebuildFlags, aggregator.ConflictsFlags)
	cfg, extra, err := config.LoadAggregator("aggregator", settings, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "aggregator:", err)
		return 2
	}
	rest = append(rest, extra...)
	log, err := service.NewLogger(stderr, cfg.LogLevel, "aggregator")
	if err != nil {
		fmt.Fprintln(stderr, "aggregator:", err)
		return 2
	}
	ctx, stop := service.SignalContext()
	defer stop()
	switch cmd {
	case "serve":
		if len(rest) > 0 {
			fmt.Fprintf(stderr, "aggregator: unknown argument %q; commands: migrate, dlq, rebuild, conflicts\n", rest[0])
			return 2
		}
		err = aggregator.Run(ctx, cfg, log, nil)
	case "migrate":
		var pool interface{ Close() }
		pool, err = aggregator.Open(ctx, cfg.DatabaseURL, 0, log)
		if err == nil {
			pool.Close()
		}
	case "dlq":
		err = aggregator.DLQCommand(ctx, cfg, log, sub, rest, stdout)
	case "rebuild":
		err = aggregator.RebuildCommand(ctx, cfg, log, rest, stdout)
	case "conflicts":
		err = aggregator.ConflictsCommand(ctx, cfg, log, sub, rest, stdout)
	}
	if err != nil {
		log.Error("aggregator failed", "command", cmd, "err", err)
		return 1
	}
	return 0
}
