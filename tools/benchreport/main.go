// Command benchreport runs every benchmark in one run and writes
// BENCHMARKS.md (`make bench`), or a quick smoke run in a few minutes to
// .dev/BENCHMARKS.quick.md (`make bench-quick`). With -profile DIR it runs
// only the pipeline benchmark, with the services and the broker built
// with a profiling hook (`go build -overlay`, never in the product's
// builds), and writes each one's CPU and allocation profiles to DIR
// (`make profile`). With -only pipeline it runs only the pipeline
// benchmark and its two Postgres ceilings, and writes
// .dev/BENCHMARKS.pipeline.md.
//
// Dev tooling, not product (see internal/testkit): it links no testing.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/usagemeter/metering/internal/service"
	"github.com/usagemeter/metering/internal/testkit/benchreport"
)

func main() {
	quick := flag.Bool("quick", false, "smaller sizes, under a minute, a smoke check")
	outPath := flag.String("out", "", "report path (default BENCHMARKS.md, or .dev/BENCHMARKS.quick.md with -quick)")
	profileDir := flag.String("profile", "", "run only the pipeline benchmark and write each process's CPU and allocation profiles to this directory")
	only := flag.String("only", "", "run only one part: pipeline (the pipeline benchmark and its Postgres ceilings; report in .dev/BENCHMARKS.pipeline.md)")
	statements := flag.Bool("statements", false, "with -profile or -only pipeline: load pg_stat_statements into the pipeline's Postgres and print the statements that took the most time per event")
	flag.Parse()
	root, _ := os.Getwd()
	if *outPath == "" {
		*outPath = "BENCHMARKS.md"
		if *quick {
			*outPath = filepath.Join(".dev", "BENCHMARKS.quick.md")
		}
		if *only != "" {
			*outPath = filepath.Join(".dev", "BENCHMARKS."+*only+".md")
		}
	}
	ctx, stop := service.SignalContext()
	defer stop()
	if *profileDir != "" {
		if err := profile(ctx, root, *quick, *profileDir, *statements); err != nil {
			fmt.Fprintln(os.Stderr, "benchreport:", err)
			os.Exit(1)
		}
		return
	}
	switch *only {
	case "":
	case "pipeline":
		if err := runPipeline(ctx, root, *quick, *statements, *outPath); err != nil {
			fmt.Fprintln(os.Stderr, "benchreport:", err)
			os.Exit(1)
		}
		return
	default:
		fmt.Fprintf(os.Stderr, "benchreport: -only %q: the only part is pipeline\n", *only)
		os.Exit(2)
	}
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
		{"redis", "./internal/testkit/redisbaseline", "RedisBaseline", "24x", "4x"},
		{"aggregator", "./internal/aggregator", "MeterStorage", "3x", "1x"},
		{"aggregator", "./internal/aggregator", "BreachLatency", "1x", "1x"},
		{"billing", "./internal/stripesync", "Sync10kTenants", "1x", "1x"},
		{"anomaly", "./internal/anomaly", "Detector", "3x", "1x"},
		{"anomaly", "./internal/aggregator", "AnomalyRound", "3x", "1x"},
		{"scaleout", "./internal/testkit/kafkasuite", "ScaleOut", "1x", "1x"},
	}
	env := []string{}
	if quick {
		env = append(env, "BENCH_TENANTS=300", "BENCH_SCALEOUT_EVENTS=150000")
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
	work, err := makeWork(root)
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	pc := pipelineConfig(root, work, quick)
	fmt.Println("running the pipeline benchmark (processes, rising load)...")
	if r.Pipeline, err = benchreport.Pipeline(ctx, pc, os.Stdout); err != nil {
		return err
	}
	r.Commands = append(r.Commands, fmt.Sprintf("go run ./tools/benchreport%s   # the pipeline: steps %v events/s, %s each, %d tenants",
		map[bool]string{true: " -quick", false: ""}[quick], pc.Steps, pc.StepTime, pc.Tenants))
	if err := likePipelineCeiling(ctx, root, quick, r); err != nil {
		return err
	}
	if err := pipelineWithMeters(ctx, root, quick, "", nil, r); err != nil {
		return err
	}
	events, kills := 30000, 10
	if quick {
		events, kills = 5000, 4
	}
	seed := uint64(time.Now().UnixNano())
	if r.Kill, err = benchreport.RunKillTests(ctx, root, work, events, kills, seed, os.Stdout); err != nil {
		return err
	}
	r.Commands = append(r.Commands, fmt.Sprintf("go run ./tools/benchreport%s   # the kill tests: %d events, %d kills, seed %d (the pipeline's alone: go run ./tools/chaos -events %d -kills %d -seed %d)",
		map[bool]string{true: " -quick", false: ""}[quick], events, kills, seed, events, kills, seed))
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

// makeWork makes a directory under .dev for the run's binaries, data and
// logs, traversable by the postgres user.
func makeWork(root string) (string, error) {
	if err := os.MkdirAll(filepath.Join(root, ".dev"), 0o755); err != nil {
		return "", err
	}
	work, err := os.MkdirTemp(filepath.Join(root, ".dev"), "bench-")
	if err != nil {
		return "", err
	}
	_ = os.Chmod(work, 0o755)
	return work, nil
}

func pipelineConfig(root, work string, quick bool) benchreport.PipelineConfig {
	pc := benchreport.PipelineConfig{Root: root, Work: work, Steps: []int{5000, 10000, 20000, 30000, 40000, 50000, 60000, 80000},
		StepTime: 8 * time.Second, Batch: 500, Tenants: 100000}
	if quick {
		pc.Steps, pc.StepTime, pc.Tenants = []int{5000, 15000}, 2*time.Second, 10000
	}
	return pc
}

// profile runs the pipeline benchmark with every process profiled from
// the first step to the last, and writes the profiles to dir.
func profile(ctx context.Context, root string, quick bool, dir string, statements bool) error {
	work, err := makeWork(root)
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	if !filepath.IsAbs(dir) {
		dir = filepath.Join(root, dir)
	}
	prof, err := setupProfiling(root, work, dir)
	if err != nil {
		return err
	}
	defer prof.close()
	// One step above what the pipeline sustains, so that every process
	// works as fast as it can for the whole profile.
	pc := pipelineConfig(root, work, quick)
	pc.Steps, pc.StepTime = []int{60000}, 20*time.Second
	if quick {
		pc.Steps, pc.StepTime = []int{30000}, 5*time.Second
	}
	pc.Loading, pc.Loaded, pc.Statements = prof.start, prof.collect, statements
	fmt.Println("running the pipeline benchmark with the processes profiled...")
	res, err := benchreport.Pipeline(ctx, pc, os.Stdout)
	if err != nil {
		return err
	}
	for _, st := range res.Steps {
		fmt.Printf("offered %d events/s for %s: ingest accepted %.0f events/s, %d records behind at the end; the aggregator committed %d batches of %.0f records on average, %s each\n",
			st.Offered, pc.StepTime, st.Accepted, st.LagAfter, st.Batches, st.BatchRecords, st.BatchTime.Round(time.Millisecond))
	}
	res.WriteStatements(os.Stdout)
	fmt.Printf("profiles of %d processes in %s\n", len(profiled), dir)
	return nil
}

// ceilingJob is the Postgres ceiling of the aggregator benchmark.
var ceilingJob = struct{ pkg, pattern, full, quick string }{"./internal/aggregator", "Aggregate/ceiling-postgres-copy$", "24x", "4x"}

// pipelineWithMeters runs the pipeline benchmark again, on a stack of its
// own (a stopped stack keeps its data), with every event counted in three
// meters, into r.PipelineMeters; steps, when set, replace the default
// steps, and a full run adds four lower ones.
func pipelineWithMeters(ctx context.Context, root string, quick bool, only string, steps []int, r *benchreport.Run) error {
	work, err := makeWork(root)
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	pc := pipelineConfig(root, work, quick)
	if steps != nil {
		pc.Steps = steps
	}
	if !quick {
		// Each event writes about three times the rows (BENCHMARKS.md,
		// "Meters"): the steps start lower, so that some are kept.
		pc.Steps = append([]int{1000, 2000, 3000, 4000}, slices.DeleteFunc(slices.Clone(pc.Steps), func(n int) bool { return n <= 4000 })...)
	}
	pc.Meters = true
	fmt.Println("running the pipeline benchmark with three meters per event...")
	if r.PipelineMeters, err = benchreport.Pipeline(ctx, pc, os.Stdout); err != nil {
		return err
	}
	r.Commands = append(r.Commands, fmt.Sprintf("go run ./tools/benchreport%s%s   # the pipeline again, every event in three meters: steps %v events/s, %s each, %d tenants",
		map[bool]string{true: " -quick", false: ""}[quick], only, pc.Steps, pc.StepTime, pc.Tenants))
	return nil
}

// likePipelineCeiling runs the Postgres ceiling on the pipeline's events
// and mean batch (after the pipeline, which measures that batch) into r.
func likePipelineCeiling(ctx context.Context, root string, quick bool, r *benchreport.Run) error {
	batch := r.Pipeline.LikeBatch()
	events := 240000
	if quick {
		events = 24000
	}
	n := max(events/batch, 2*4) // batches, at least two per worker
	env := []string{fmt.Sprintf("BENCH_PIPELINE_BATCH=%d", batch), fmt.Sprintf("BENCH_PIPELINE_TENANTS=%d", r.Pipeline.Tenants)}
	res, cmdline, err := benchreport.GoBench(ctx, root, "./internal/aggregator", "CeilingLikePipeline", fmt.Sprintf("%dx", n), env, os.Stdout)
	if err != nil {
		return err
	}
	r.Commands = append(r.Commands, strings.Join(env, " ")+" "+cmdline)
	for name, m := range res {
		r.Bench["aggregator/"+name] = m
	}
	return nil
}

// runPipeline runs the pipeline benchmark and its two Postgres ceilings
// (the aggregator's events, and the pipeline's events and batches) and
// writes their report to outPath.
func runPipeline(ctx context.Context, root string, quick, statements bool, outPath string) error {
	loadBefore := loadAverage()
	r := &benchreport.Run{Quick: quick, Started: time.Now(), Machine: benchreport.Machine(), Bench: map[string]map[string]float64{}}
	bt := ceilingJob.full
	if quick {
		bt = ceilingJob.quick
	}
	res, cmdline, err := benchreport.GoBench(ctx, root, ceilingJob.pkg, ceilingJob.pattern, bt, nil, os.Stdout)
	if err != nil {
		return err
	}
	r.Commands = append(r.Commands, cmdline)
	for name, m := range res {
		r.Bench["aggregator/"+name] = m
	}
	work, err := makeWork(root)
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	pc := pipelineConfig(root, work, quick)
	if !quick {
		// Finer steps from a quarter of the first: the ratio to the
		// ceilings is the point here, on a machine that may be shared.
		pc.Steps = []int{2500, 5000, 7500, 10000, 15000, 20000, 25000, 30000, 40000, 50000, 60000}
	}
	pc.Statements = statements
	fmt.Println("running the pipeline benchmark (processes, rising load)...")
	if r.Pipeline, err = benchreport.Pipeline(ctx, pc, os.Stdout); err != nil {
		return err
	}
	r.Commands = append(r.Commands, fmt.Sprintf("go run ./tools/benchreport%s -only pipeline   # the pipeline: steps %v events/s, %s each, %d tenants",
		map[bool]string{true: " -quick", false: ""}[quick], pc.Steps, pc.StepTime, pc.Tenants))
	if err := likePipelineCeiling(ctx, root, quick, r); err != nil {
		return err
	}
	if err := pipelineWithMeters(ctx, root, quick, " -only pipeline", pc.Steps, r); err != nil {
		return err
	}
	r.Took = time.Since(r.Started)
	if err := os.MkdirAll(filepath.Dir(outPath), 0o755); err != nil {
		return err
	}
	f, err := os.Create(outPath)
	if err != nil {
		return err
	}
	defer f.Close()
	loadAfter := loadAverage()
	r.WritePipelineOnly(f, loadBefore, loadAfter)
	r.WritePipelineOnly(os.Stdout, loadBefore, loadAfter)
	r.Pipeline.WriteStatements(os.Stdout)
	fmt.Println("\nwrote", outPath)
	return nil
}

// loadAverage is the machine's load average over 1, 5 and 15 minutes.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], ", ")
}
