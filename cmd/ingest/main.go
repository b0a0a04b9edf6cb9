// Command ingest serves the HTTP API that accepts usage events and
// publishes them to Kafka, and the admin API for plans, tenants and keys.
//
//	ingest [flags]          serve (see -h for every setting and its variable)
//	ingest migrate [flags]  apply pending database migrations and exit
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/usagemeter/metering/internal/config"
	"github.com/usagemeter/metering/internal/ingest"
	"github.com/usagemeter/metering/internal/service"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	cmd := "serve"
	if len(args) > 0 && args[0] == "migrate" {
		cmd, args = "migrate", args[1:]
	}
	cfg, rest, err := config.LoadIngest("ingest", args, os.Getenv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ingest:", err)
		return 2
	}
	if len(rest) > 0 {
		fmt.Fprintf(os.Stderr, "ingest: unknown argument %q; commands: migrate\n", rest[0])
		return 2
	}
	log, err := service.NewLogger(os.Stderr, cfg.LogLevel, "ingest")
	if err != nil {
		fmt.Fprintln(os.Stderr, "ingest:", err)
		return 2
	}
	ctx, stop := service.SignalContext()
	defer stop()
	if cmd == "migrate" {
		err = ingest.Migrate(ctx, cfg.DatabaseURL, log)
	} else {
		err = ingest.Run(ctx, cfg, log, nil)
	}
	if err != nil {
		log.Error("ingest failed", "err", err)
		return 1
	}
	return 0
}
