// Command loadgen sends realistic usage traffic to a running stack (see
// `make demo`) and prints usage, quota states, breaches and the
// reconciliation report.
//
//	loadgen [-events 20000] [-rate 5000] [-batch 200] [-tenants 20] [-dups 0.3] [-late 0.02] [-workers 4]
//
// Dev tooling, not product (see internal/testkit): it links no testing.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/usagemeter/metering/internal/service"
	"github.com/usagemeter/metering/internal/testkit/loadgen"
)

func main() {
	cfg := loadgen.Config{}
	flag.StringVar(&cfg.IngestURL, "ingest", "http://127.0.0.1:8080", "ingest API")
	flag.StringVar(&cfg.BillerURL, "biller", "http://127.0.0.1:8082", "biller API (empty: skip the reconciliation)")
	brokers := flag.String("kafka-brokers", envOr("KAFKA_BROKERS", "127.0.0.1:9092"), "Kafka brokers, to read quota.breaches")
	flag.StringVar(&cfg.AdminKey, "admin-key", os.Getenv("ADMIN_API_KEY"), "admin API key (default: ADMIN_API_KEY, or the one make run keeps)")
	flag.IntVar(&cfg.Events, "events", 20000, "unique events to send")
	flag.IntVar(&cfg.Rate, "rate", 5000, "events per second offered")
	flag.IntVar(&cfg.Batch, "batch", 200, "events per request")
	flag.IntVar(&cfg.Tenants, "tenants", 20, "tenants on the pro plan")
	flag.Float64Var(&cfg.DupShare, "dups", 0.3, "share of resent events")
	flag.Float64Var(&cfg.LateShare, "late", 0.02, "share of events three days old")
	flag.IntVar(&cfg.Workers, "workers", 4, "concurrent requests")
	flag.Parse()
	cfg.Brokers = strings.Split(*brokers, ",")
	if cfg.AdminKey == "" {
		b, err := os.ReadFile(filepath.Join(envOr("DEV_DIR", ".dev"), "admin-key"))
		if err != nil {
			fmt.Fprintln(os.Stderr, "loadgen: no admin key: start the stack with `make run`, or set ADMIN_API_KEY")
			os.Exit(2)
		}
		cfg.AdminKey = strings.TrimSpace(string(b))
	}
	ctx, stop := service.SignalContext()
	defer stop()
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "\nloadgen:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg loadgen.Config) error {
	fmt.Printf("setting up demo plans and %d tenants...\n", cfg.Tenants+1)
	if err := loadgen.Setup(ctx, cfg); err != nil {
		return err
	}
	fmt.Printf("sending %d events at %d/s in batches of %d (%.0f%% resends, %.0f%% late)...\n", cfg.Events, cfg.Rate, cfg.Batch, cfg.DupShare*100, cfg.LateShare*100)
	res, err := loadgen.Send(ctx, cfg, os.Stdout)
	if err != nil {
		return err
	}
	return loadgen.Report(ctx, cfg, res, os.Stdout)
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
