// Command chaos breaks the pipeline while it works and proves it still
// counts exactly once (see internal/testkit/chaos). `make chaos` runs it
// with 1,000,000 events; `make chaos ARGS=-replicas` runs 2 ingest, 3
// aggregators and 2 billers and mixes hostile records into usage.events.
//
//	chaos [-events 1000000] [-dups 0.3] [-stripe-faults 0.1] [-kills 20] [-tenants 50]
//	      [-replicas [-hostile 20]] [-seed N] [-work DIR]
//
// Dev tooling, not product (see internal/testkit): it links no testing.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/usagemeter/metering/internal/service"
	"github.com/usagemeter/metering/internal/testkit/chaos"
)

func main() {
	cfg := chaos.Config{}
	flag.IntVar(&cfg.Events, "events", 1_000_000, "unique events to send")
	flag.Float64Var(&cfg.DupShare, "dups", 0.3, "share of resent events")
	flag.Float64Var(&cfg.FaultRate, "stripe-faults", 0.1, "share of Stripe calls that fail")
	flag.IntVar(&cfg.MinKills, "kills", 20, "SIGKILLs of ingest, aggregator and biller, at least")
	flag.IntVar(&cfg.Tenants, "tenants", 50, "tenants")
	flag.BoolVar(&cfg.Replicas, "replicas", false, "run 2 ingest, 3 aggregators and 2 billers, and write hostile records to usage.events")
	flag.IntVar(&cfg.HostilePerClass, "hostile", 20, "hostile records of each class (with -replicas)")
	seed := flag.Uint64("seed", uint64(time.Now().UnixNano()), "random seed")
	work := flag.String("work", "", "working directory (default: a new one under .dev/chaos)")
	flag.Parse()
	cfg.Seed = *seed
	root, _ := os.Getwd()
	cfg.Root = root
	cfg.Work = *work
	if cfg.Work == "" {
		_ = os.MkdirAll(filepath.Join(root, ".dev"), 0o755)
		dir, err := os.MkdirTemp(filepath.Join(root, ".dev"), "chaos-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "chaos:", err)
			os.Exit(1)
		}
		_ = os.Chmod(dir, 0o755)
		cfg.Work = dir
	}
	ctx, stop := service.SignalContext()
	defer stop()
	rep, err := chaos.Run(ctx, cfg, os.Stdout)
	fmt.Println()
	fmt.Println(rep)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos: FAILED:", err)
		fmt.Fprintln(os.Stderr, "service logs:", filepath.Join(cfg.Work, "services.log"))
		os.Exit(1)
	}
	fmt.Println("chaos: every invariant held (final diff 0)")
}
