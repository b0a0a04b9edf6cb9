// Command aggregator consumes usage.events and keeps per-tenant usage
// windows, quota breaches and dead letters in Postgres, exactly once.
//
//	aggregator [flags]                         serve (see -h)
//	aggregator migrate [flags]                 apply database migrations and exit
//	aggregator dlq list [--status S] [--limit N]
//	aggregator dlq replay (ID... | --all) [--actor NAME]
//	aggregator dlq discard ID... [--actor NAME] [--note TEXT]
//	aggregator rebuild --from TIME             recompute windows from the Kafka log
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/usagemeter/metering/internal/aggregator"
	"github.com/usagemeter/metering/internal/config"
	"github.com/usagemeter/metering/internal/service"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	cmd := "serve"
	if len(args) > 0 && (args[0] == "migrate" || args[0] == "dlq" || args[0] == "rebuild") {
		cmd, args = args[0], args[1:]
	}
	sub := ""
	if cmd == "dlq" {
		if len(args) == 0 {
			fmt.Fprintln(os.Stderr, "aggregator dlq: want list, replay or discard")
			return 2
		}
		sub, args = args[0], args[1:]
	}
	cfg, rest, err := config.LoadAggregator("aggregator", args, os.Getenv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "aggregator:", err)
		return 2
	}
	log, err := service.NewLogger(os.Stderr, cfg.LogLevel, "aggregator")
	if err != nil {
		fmt.Fprintln(os.Stderr, "aggregator:", err)
		return 2
	}
	ctx, stop := service.SignalContext()
	defer stop()
	switch cmd {
	case "serve":
		if len(rest) > 0 {
			fmt.Fprintf(os.Stderr, "aggregator: unknown argument %q; commands: migrate, dlq, rebuild\n", rest[0])
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
		err = aggregator.DLQCommand(ctx, cfg, log, sub, rest, os.Stdout)
	case "rebuild":
		err = aggregator.RebuildCommand(ctx, cfg, log, rest, os.Stdout)
	}
	if err != nil {
		log.Error("aggregator failed", "command", cmd, "err", err)
		return 1
	}
	return 0
}
