// Command ingest serves the HTTP API that accepts usage events and
// publishes them to Kafka, and the admin API for plans, tenants and keys.
//
//	ingest [flags]          serve (see -h for every setting and its variable)
//	ingest migrate [flags]  apply pending database migrations and exit
package main

import (
	"io"
	"os"

	"github.com/usagemeter/metering/internal/cli"
	"github.com/usagemeter/metering/internal/config"
	"github.com/usagemeter/metering/internal/ingest"
)

var program = cli.Program[config.Ingest]{
	Name:     "ingest",
	Load:     config.LoadIngest,
	Common:   func(c config.Ingest) config.Common { return c.Common },
	Serve:    ingest.Run,
	Migrate:  ingest.Migrate,
	Commands: nil,
}

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// run is the whole command; it returns the exit status: 0 done, 1 the
// command failed, 2 the command line or settings are wrong.
func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	return program.Main(args, getenv, stdout, stderr)
}
