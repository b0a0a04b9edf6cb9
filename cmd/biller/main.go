// Command biller makes Stripe agree with Postgres: it pushes each tenant's
// usage deltas as billing meter events, reconciles, and keeps a DLQ; the
// customer credits Stripe refused for good (dead) are listed and resent
// with `credits`. It also sends tenants' webhook notifications; `webhooks`
// lists endpoints and deliveries and redelivers them.
//
//	biller [flags]                                        serve (see -h)
//	biller migrate [flags]                                apply database migrations and exit
//	biller reconcile --period YYYY-MM [--format table|csv|json]
//	biller dlq list [--format json] | show ID | replay (ID... | --all) [--actor NAME] [--note TEXT] | discard ID... [--actor NAME] [--note TEXT]
//	biller holds list [--format json] | approve ID --note TEXT [--actor NAME] | reject ID --note TEXT [--actor NAME]
//	biller credits list [--status open|dead|sent|none|all] [--format json] [--limit N]
//	biller credits resend (ID... | --all) [--actor NAME] [--note TEXT]
//	biller webhooks endpoints [--tenant T] [--format json]
//	biller webhooks deliveries [--tenant T] [--endpoint E] [--status pending|delivered|dead] [--limit N] [--format json]
//	biller webhooks redeliver (ID... | --endpoint E --dead) [--actor NAME]
//	biller audit [--actor A] [--action A] [--target T] [--from TIME] [--to TIME] [--after ID] [--limit N] [--format json]
//
// Settings flags (-database-url, -stripe-api-key, ...) may stand anywhere.
package main

import (
	"io"
	"os"

	"github.com/usagemeter/metering/internal/biller"
	"github.com/usagemeter/metering/internal/cli"
	"github.com/usagemeter/metering/internal/config"
)

var program = cli.Program[config.Biller]{
	Name:     "biller",
	Load:     config.LoadBiller,
	Common:   func(c config.Biller) config.Common { return c.Common },
	Serve:    biller.Run,
	Migrate:  biller.Migrate,
	Commands: biller.Commands,
}

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// run is the whole command; it returns the exit status: 0 done, 1 the
// command failed, 2 the command line or settings are wrong.
func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	return program.Main(args, getenv, stdout, stderr)
}
