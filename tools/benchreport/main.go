// Command benchreport runs every benchmark in one run and writes
// BENCHMARKS.md (`make bench`), or a quick smoke run in under a minute to
// .dev/BENCHMARKS.quick.md (`make bench-quick`).
//
// Dev tooling, not product (see internal/testkit): it links no testing.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/usagemeter/metering/internal/service"
	"github.com/usagemeter/metering/internal/testkit/benchreport"
)

func main() {
	quick := flag.Bool("quick", false, "smaller sizes, under a minute, a smoke check")
	outPath := flag.String("out", "", "report path (default BENCHMARKS.md, or .dev/BENCHMARKS.quick.md with -quick)")
	flag.Parse()
	root, _ := os.Getwd()
	if *outPath == "" {
		*outPath = "BENCHMARKS.md"
		if *quick {
			*outPath = filepath.Join(".dev", "BENCHMARKS.quick.md")
		}
	}
	ctx, stop := service.SignalContext()
	defer stop()
	if err := run(ctx, root, *quick, *outPath); err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, root string, quick bool, outPath string) error {
	r := &benchreport.Run{Quick: quick, Started: time.Now(), Machine: benchreport.Machine(), Bench: map[string]map[string]float64{}}
	type job struct{ key, pkg, pattern, full, quick string }
	jobs := []job{
		{"events", "./events", "Decode", "3s", "200ms"},
		{"ingest", "./internal/ingest", "Ingest$", "3s", "300ms"},
		{"ingest", "./internal/ingest", "IngestLatency", "1x", "1x"},
		{"ingest", "./internal/ingest", "UsageQuery$", "2000x", "200x"},
		{"ingest", "./internal/ingest", "UsageQueryGrouped", "200x", "20x"},
		{"consumer", "./internal/consumer", "KafkaConsumeCeiling", "30x", "3x"},
		{"aggregator", "./internal/aggregator", "Aggregate/(ceiling|apply|pipeline)", "24x", "4x"},
		{"aggregator", "./internal/aggregator", "Aggregate/naive", "3s", "300ms"},
		{"aggregator", "./internal/aggregator", "MeterStorage", "3x", "1x"},
		{"aggregator", "./internal/aggregator", "BreachLatency", "1x", "1x"},
		{"billing", "./internal/stripesync", "Sync10kTenants", "1x", "1x"},
	}
	env := []string{}
	if quick {
		env = append(env, "BENCH_TENANTS=300")
	}
	for _, j := range jobs {
		if quick && j.pattern == "BreachLatency" {
			continue // the pipeline's breach probes cover it
		}
		bt := j.full
		if quick {
			bt = j.quick
		}
		res, cmdline, err := benchreport.GoBench(ctx, root, j.pkg, j.pattern, bt, env, os.Stdout)
		if err != nil {
			return err
		}
		r.Commands = append(r.Commands, cmdline)
		for name, m := range res {
			r.Bench[j.key+"/"+name] = m
		}
	}
	work, err := os.MkdirTemp(filepath.Join(root, ".dev"), "bench-")
	if err != nil {
		if err := os.MkdirAll(filepath.Join(root, ".dev"), 0o755); err != nil {
			return err
		}
		if work, err = os.MkdirTemp(filepath.Join(root, ".dev"), "bench-"); err != nil {
			return err
		}
	}
	_ = os.Chmod(work, 0o755)
	defer os.RemoveAll(work)
	pc := benchreport.PipelineConfig{Root: root, Work: work, Steps: []int{10000, 20000, 30000, 40000, 50000, 60000, 80000},
		StepTime: 8 * time.Second, Batch: 500, Tenants: 100000}
	if quick {
		pc.Steps, pc.StepTime, pc.Tenants = []int{5000, 15000}, 2*time.Second, 10000
	}
	fmt.Println("running the pipeline benchmark (processes, rising load)...")
	if r.Pipeline, err = benchreport.Pipeline(ctx, pc, os.Stdout); err != nil {
		return err
	}
	r.Commands = append(r.Commands, fmt.Sprintf("go run ./tools/benchreport%s   # the pipeline: steps %v events/s, %s each, %d tenants",
		map[bool]string{true: " -quick", false: ""}[quick], pc.Steps, pc.StepTime, pc.Tenants))
	r.Took = time.Since(r.Started)
	f, err := os.Create(outPath)
	if err != nil {
		return err
	}
	defer f.Close()
	r.Write(f)
	r.Write(os.Stdout)
	fmt.Println("\nwrote", outPath)
	return nil
}
