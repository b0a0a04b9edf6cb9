// Command aggregator consumes usage.events and keeps per-tenant usage
// windows, quota breaches and dead letters in Postgres, exactly once.
//
//	aggregator [flags]                         serve (see -h)
//	aggregator migrate [flags]                 apply database migrations and exit
//	aggregator dlq list [--status S] [--limit N] [--format json]
//	aggregator dlq replay (ID... | --all) [--actor NAME] [--note TEXT]
//	aggregator dlq discard ID... [--actor NAME] [--note TEXT]
//	aggregator rebuild --from TIME [--meter M]... [--dry-run] [--actor NAME] [--note TEXT]   recompute windows from the Kafka log
//	aggregator conflicts list [--tenant T] [--status held|resolved|all|RESOLUTION] [--limit N] [--format json]
//	aggregator conflicts count ID --note TEXT [--actor NAME]     count a held conflict's event
//	aggregator conflicts dismiss ID --note TEXT [--actor NAME]   leave it uncounted
//
// Settings flags (-database-url, -kafka-brokers, ...) may stand anywhere.
package main

import (
	"io"
	"os"

	"github.com/usagemeter/metering/internal/aggregator"
	"github.com/usagemeter/metering/internal/cli"
	"github.com/usagemeter/metering/internal/config"
)

var program = cli.Program[config.Aggregator]{
	Name:     "aggregator",
	Load:     config.LoadAggregator,
	Common:   func(c config.Aggregator) config.Common { return c.Common },
	Serve:    aggregator.Run,
	Migrate:  aggregator.Migrate,
	Commands: aggregator.Commands,
}

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// run is the whole command; it returns the exit status: 0 done, 1 the
// command failed, 2 the command line or settings are wrong.
func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	return program.Main(args, getenv, stdout, stderr)
}
