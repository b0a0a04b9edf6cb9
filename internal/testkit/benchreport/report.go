// Package benchreport runs every benchmark of the project in one run on
// one machine (the Go benchmarks with their baselines, and the end-to-end
// pipeline as processes) and writes BENCHMARKS.md: each figure, its ratio
// to the ceilings and to the naive baseline, the targets, the machine and
// the commands.
//
// Invariant: every figure in the report comes from this run; nothing is
// copied from an earlier one.
//
// Test and dev tooling, not product (see internal/testkit): no product
// package imports it, and it does not import testing, since the dev
// binaries under tools/ link it.
package benchreport

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// GoBench runs `go test -run ^$ -bench pattern -benchtime t pkg` in root and
// returns each benchmark's metrics by unit ("ns/op", "events/s", ...).
func GoBench(ctx context.Context, root, pkg, pattern, benchtime string, env []string, out io.Writer) (map[string]map[string]float64, string, error) {
	args := []string{"test", "-run", "^$", "-bench", pattern, "-benchtime", benchtime, pkg}
	cmdline := "go " + strings.Join(args, " ")
	fmt.Fprintln(out, "running", cmdline)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), env...)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = io.MultiWriter(&buf, out), out
	if err := cmd.Run(); err != nil {
		return nil, cmdline, fmt.Errorf("%s: %w", cmdline, err)
	}
	res := map[string]map[string]float64{}
	sc := bufio.NewScanner(&buf)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		name := f[0][len("Benchmark"):]
		if i := strings.LastIndex(name, "-"); i > 0 {
			name = name[:i] // drop -GOMAXPROCS
		}
		m := map[string]float64{}
		for i := 2; i+1 < len(f); i += 2 {
			if v, err := strconv.ParseFloat(f[i], 64); err == nil {
				m[f[i+1]] = v
			}
		}
		res[name] = m
	}
	return res, cmdline, nil
}

// Run is one complete benchmark run.
type Run struct {
	Quick    bool
	Started  time.Time
	Took     time.Duration
	Machine  string
	Commands []string
	Bench    map[string]map[string]float64 // "pkg/Name" → unit → value
	Pipeline PipelineResult
	// PipelineMeters is the same pipeline benchmark with every event
	// counted in three meters (PipelineConfig.Meters); zero when not run.
	PipelineMeters PipelineResult
	// Kill is the kill tests of the pipeline and of the Redis baseline.
	Kill KillTests
}

func (r *Run) get(name, unit string) float64 { return r.Bench[name][unit] }

// Machine describes this machine.
func Machine() string {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])
		if len(f) >= 2 {
			kb, _ := strconv.ParseFloat(f[1], 64)
			mem = fmt.Sprintf(", %.0f GiB", kb/1024/1024)
		}
	}
	return fmt.Sprintf("%d cores (%s)%s, %s %s/%s", runtime.NumCPU(), cpu, mem, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

func ratio(a, b float64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", a/b)
}

func n0(v float64) string {
	s := strconv.FormatFloat(v, 'f', 0, 64)
	var out []byte
	for i, c := range []byte(s) {
		if i > 0 && (len(s)-i)%3 == 0 && s[0] != '-' {
			out = append(out, ',')
		}
		out = append(out, c)
	}
	return string(out)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**not met**"
}

// Write renders the report.
func (r *Run) Write(w io.Writer) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	title := "Benchmarks"
	if r.Quick {
		title += " (quick run: smaller sizes, a smoke check, not for the record)"
	}
	p("# %s\n", title)
	p("Written by `make bench` (`go run ./tools/benchreport`) from one run on one machine: every figure below was measured in that run, beside its baseline. Nothing in the tests asserts these numbers.\n")
	p("- machine: %s; Postgres, the Kafka broker (kfake) and the services share its cores", r.Machine)
	p("- run: %s, took %s\n", r.Started.UTC().Format(time.RFC3339), r.Took.Round(time.Second))

	agg := r.get("aggregator/Aggregate/pipeline-kafka", "events/s")
	ceiling := r.get("aggregator/Aggregate/ceiling-postgres-copy", "events/s")
	naive := r.get("aggregator/Aggregate/naive-tx-per-event", "events/s")
	apply := r.get("aggregator/Aggregate/apply-no-kafka", "events/s")
	breachP99 := r.Pipeline.BreachP99
	if breachP99 == 0 {
		breachP99 = time.Duration(r.get("aggregator/BreachLatency", "p99-ms") * float64(time.Millisecond))
	}
	p("## Targets\n")
	p("| target | measured | verdict |")
	p("|---|---|---|")
	p("| pipeline ≥ 30k events/s sustained end to end | %s events/s | %s |", n0(r.Pipeline.Sustained), verdict(r.Pipeline.Sustained >= 30000))
	like := r.get("aggregator/CeilingLikePipeline", "events/s")
	p("| pipeline ≥ 0.8 × the Postgres ceiling of the same run (the aggregator's events / the pipeline's events and batches) | %s × / %s × | %s |", ratio(r.Pipeline.Sustained, ceiling), ratio(r.Pipeline.Sustained, like),
		verdict(ceiling > 0 && r.Pipeline.Sustained/ceiling >= 0.8))
	if pm := r.PipelineMeters; pm.Meters {
		p("| the same with three meters per event (implicit sum, a sum by project, a unique count of users), event → breach p99 ≤ 1 s | %s × / %s ×, %s events/s, breach p99 %s | %s |",
			ratio(pm.Sustained, ceiling), ratio(pm.Sustained, like), n0(pm.Sustained), ms(pm.BreachP99),
			verdict(ceiling > 0 && pm.Sustained/ceiling >= 0.8 && pm.BreachP99 > 0 && pm.BreachP99 <= time.Second))
	}
	p("| aggregator ≥ 50k events/s exactly once | %s events/s | %s |", n0(agg), verdict(agg >= 50000))
	p("| aggregator ≥ 0.9 × the Postgres ceiling | %s × | %s |", ratio(agg, ceiling), verdict(ceiling > 0 && agg/ceiling >= 0.9))
	p("| aggregator ≥ 80 × the naive baseline | %s × | %s |", ratio(agg, naive), verdict(naive > 0 && agg/naive >= 80))
	p("| event → breach p99 ≤ 1 s (pipeline, sustained load) | %s | %s |", ms(breachP99), verdict(breachP99 > 0 && breachP99 <= time.Second))
	p("| aggregator RSS ≤ 256 MiB at %s tenants | %.0f MiB | %s |", n0(float64(r.Pipeline.Tenants)), float64(r.Pipeline.PeakRSS["aggregator"])/(1<<20),
		verdict(r.Pipeline.PeakRSS["aggregator"] > 0 && r.Pipeline.PeakRSS["aggregator"] <= 256<<20))
	p("| HTTP ingest ≥ 100k events/s (batches of 1000) | %s events/s | %s |", n0(r.get("ingest/Ingest/http-ingest/batch-1000", "events/s")), verdict(r.get("ingest/Ingest/http-ingest/batch-1000", "events/s") >= 100000))
	p("| `GET /v1/usage` p99 ≤ 20 ms (a month of hourly windows) | %.1f ms | %s |", r.get("ingest/UsageQuery", "p99-ms"), verdict(r.get("ingest/UsageQuery", "p99-ms") > 0 && r.get("ingest/UsageQuery", "p99-ms") <= 20))
	grouped := r.get("ingest/UsageQueryGrouped/packed", "p99-ms")
	p("| `GET /v1/usage?meter=&group_by=` p99 ≤ 50 ms (a past month of hourly windows of 100 groups, packed, folded into 10) | %.1f ms (unpacked: %.1f ms) | %s |", grouped, r.get("ingest/UsageQueryGrouped/unpacked", "p99-ms"), verdict(grouped > 0 && grouped <= 50))
	p("| biller: Stripe calls per tenant-metric with a delta = 1, without = 0 | %.3f / %.3f | %s |", r.get("billing/Sync10kTenants", "calls/pair-with-delta"), r.get("billing/Sync10kTenants", "calls/pair-without-delta"),
		verdict(r.get("billing/Sync10kTenants", "calls/pair-with-delta") == 1 && r.get("billing/Sync10kTenants", "calls/pair-without-delta") == 0))
	ledger := r.get("aggregator/MeterStorage/implicit-only", "ledger-bytes/event")
	p("| dedup ledger ≤ 150 bytes per counted event (heap and indexes) | %.0f bytes | %s |", ledger, verdict(ledger > 0 && ledger <= 150))
	ap, ar := r.get("anomaly/Detector", "precision"), r.get("anomaly/Detector", "recall")
	p("| anomalies: precision ≥ 0.9 and recall ≥ 0.9 at the default sensitivity (labelled synthetic set, per episode) | %.3f / %.3f (naive 3σ over 24 h: %.3f / %.3f) | %s |",
		ap, ar, r.get("anomaly/NaiveDetector", "precision"), r.get("anomaly/NaiveDetector", "recall"), verdict(ap >= 0.9 && ar >= 0.9))
	p("")

	p("## Ceilings and baselines\n")
	p("| path | events/s | vs Postgres ceiling | vs naive |")
	p("|---|---|---|---|")
	p("| ceiling: kafka-go produce to the broker (batches of 1000, acks=all) | %s | | |", n0(r.get("ingest/Ingest/ceiling-producer/batch-1000", "events/s")))
	p("| ceiling: kafka-go consume from the broker (4 partition readers) | %s | | |", n0(r.get("consumer/KafkaConsumeCeiling", "events/s")))
	p("| ceiling: Postgres COPY + ledger + window upsert, no Kafka (4 workers) | %s | 1.00 | %s |", n0(ceiling), ratio(ceiling, naive))
	p("| ceiling like the pipeline: the same Postgres work on the pipeline's events (%s tenants, at the current time) in its largest batches (%s events, below), no Kafka (4 workers) | %s | %s | %s |",
		n0(float64(r.Pipeline.Tenants)), n0(r.get("aggregator/CeilingLikePipeline", "events/batch")), n0(like), ratio(like, ceiling), ratio(like, naive))
	p("| naive: one transaction per event (4 workers) | %s | %s | 1.00 |", n0(naive), ratio(naive, ceiling))
	p("| `rollup.Apply` without Kafka (4 workers) | %s | %s | %s |", n0(apply), ratio(apply, ceiling), ratio(apply, naive))
	p("| aggregator: kfake → consumer group → Apply (4 partitions, backlog) | %s | %s | %s |", n0(agg), ratio(agg, ceiling), ratio(agg, naive))
	p("| **pipeline**: HTTP ingest → Kafka → aggregator → Postgres, sustained | %s | %s | %s |", n0(r.Pipeline.Sustained), ratio(r.Pipeline.Sustained, ceiling), ratio(r.Pipeline.Sustained, naive))
	p("| **pipeline** vs the ceiling like the pipeline | | %s | |", ratio(r.Pipeline.Sustained, like))
	if pm := r.PipelineMeters; pm.Meters {
		p("| **pipeline**, three meters per event (below) | %s | %s | %s |", n0(pm.Sustained), ratio(pm.Sustained, ceiling), ratio(pm.Sustained, naive))
	}
	redis := r.get("redis/RedisBaseline", "events/s")
	p("| baseline users would pick: kfake → consumer group → Lua SET NX + INCRBY per event → Redis (4 partitions, backlog; below) | %s | %s | %s |", n0(redis), ratio(redis, ceiling), ratio(redis, naive))
	p("")
	p("%s\n", likeCeilingWhy)
	r.Kill.write(p, agg, redis, r.get("redis/RedisBaseline", "redis-bytes/event"))

	p("## Meters\n")
	p("`rollup.Apply` without Kafka (4 workers), events with two properties (a project of 1,000 values, a user of 10,000, drawn uniformly for every tenant, so that nearly every event is a new group and a new unique value in each of its windows), counted in their metric's implicit meter only, then also in defined meters. Target: ≥ 0.7 × the implicit meter alone, with three meters per event.\n")
	one := r.get("aggregator/Aggregate/apply-properties-implicit-meter", "events/s")
	three := r.get("aggregator/Aggregate/apply-properties-3-meters", "events/s")
	two := r.get("aggregator/Aggregate/apply-properties-grouped-and-unique", "events/s")
	p("| path | events/s | vs implicit meter only | verdict |")
	p("|---|---|---|---|")
	p("| implicit meter only (a plain sum) | %s | 1.00 | |", n0(one))
	p("| + a sum by project and a unique count of users (3 meters per event) | %s | %s | %s |", n0(two), ratio(two, one), verdict(one > 0 && two/one >= 0.7))
	p("| + a plain sum, a sum by project and a unique count of users (3 defined meters, 4 per event) | %s | %s | %s |", n0(three), ratio(three, one), verdict(one > 0 && three/one >= 0.7))
	c1, c3 := r.get("aggregator/Aggregate/ceiling-postgres-copy-sparse", "events/s"), r.get("aggregator/Aggregate/ceiling-postgres-copy-3-meters", "events/s")
	p("| Postgres ceiling of the same writes in SQL alone (COPY, ledger, the implicit meter's windows; then also the 3 defined meters' windows and unique values) | %s → %s | %s | |", n0(c1), n0(c3), ratio(c3, c1))
	p("")
	p("The last row bounds the ratio: the rows three defined meters need cost Postgres alone that share of the implicit meter's ceiling, before any decoding or quota work. The aggregator folds each batch's windows in Go before writing, so its own ratio may come out above that bound, never near 0.7 while each meter's windows are rows written in the transaction that counts the events.\n")
	p("Why the ratio is what it is: exact windows cost Postgres one row per window and group, and for a unique count one more per window and distinct value, that a batch touches. With these properties nearly every event opens a new group in each of its hour, day and month windows and brings a new unique value to each, so the grouped sum adds about 3 rows per event and the unique count about 4, beside about 2 for the implicit meter (table below), and events/s falls with the rows written. Events whose groups and values repeat within a batch fold into one row per window before Postgres sees them, so the cost per event is lower when they do.\n")
	p("What each meter kind adds to Postgres per event (usage_windows, meter_uniques, meter_group_keys; heap and indexes), the same events, one meter of the kind per metric:\n")
	p("| meter | rows per event | bytes per event | events/s |")
	p("|---|---|---|---|")
	for _, k := range []string{"implicit-only", "sum", "sum-by-project", "count", "max", "latest", "unique_count-users"} {
		m := "aggregator/MeterStorage/" + k
		p("| %s | %.2f | %.0f | %s |", k, r.get(m, "rows/event"), r.get(m, "bytes/event"), n0(r.get(m, "events/s")))
	}
	p("")

	p("## Scale-out on Apache Kafka\n")
	p("The aggregator consuming one log (written once before, 6 partitions on a three-broker Apache Kafka cluster, replication 3) into a fresh database, with 1, 2 and 3 processes in one consumer group; events/s between 10 %% and 90 %% of the log, once the group is stable. The processes share this machine's cores with the brokers and Postgres, so the ratios show what this machine gives, not what separate machines would (README, \"Capacity\").\n")
	p("| aggregator processes | events/s | vs one process |")
	p("|---|---|---|")
	one1 := r.get("scaleout/ScaleOut/instances=1", "events/s")
	for _, k := range []string{"1", "2", "3"} {
		v := r.get("scaleout/ScaleOut/instances="+k, "events/s")
		p("| %s | %s | %s |", k, n0(v), ratio(v, one1))
	}
	p("")
	r.writePipeline(p)

	p("## Components\n")
	p("| benchmark | figure | baseline | ratio |")
	p("|---|---|---|---|")
	for _, n := range []int{100, 1000} {
		base := r.get(fmt.Sprintf("events/Decode/baseline-encoding-json/array-%d", n), "ns/event")
		for _, kind := range []string{"array", "ndjson"} {
			v := r.get(fmt.Sprintf("events/Decode/decode-validate/%s-%d", kind, n), "ns/event")
			p("| decode + validate, %s of %d | %.0f ns/event | encoding/json, no checks: %.0f ns/event | %s |", kind, n, v, base, ratio(v, base))
		}
	}
	for _, n := range []int{100, 1000} {
		v := r.get(fmt.Sprintf("ingest/Ingest/http-ingest/batch-%d", n), "events/s")
		c := r.get(fmt.Sprintf("ingest/Ingest/ceiling-producer/batch-%d", n), "events/s")
		p("| HTTP ingest, batches of %d | %s events/s | producer straight to Kafka: %s events/s | %s |", n, n0(v), n0(c), ratio(v, c))
	}
	p("| ingest latency at 20k events/s offered | p50 %.1f ms, p99 %.1f ms | | |", r.get("ingest/IngestLatency", "p50-ms"), r.get("ingest/IngestLatency", "p99-ms"))
	p("| `GET /v1/usage`, 744 hourly windows | p50 %.1f ms, p99 %.1f ms | | |", r.get("ingest/UsageQuery", "p50-ms"), r.get("ingest/UsageQuery", "p99-ms"))
	p("| `GET /v1/usage?meter=&group_by=`, 74,400 hourly windows of 100 groups folded into 10, days packed (3,100 rows) | p50 %.1f ms, p99 %.1f ms | the same days unpacked: p50 %.1f ms, p99 %.1f ms | |",
		r.get("ingest/UsageQueryGrouped/packed", "p50-ms"), r.get("ingest/UsageQueryGrouped/packed", "p99-ms"),
		r.get("ingest/UsageQueryGrouped/unpacked", "p50-ms"), r.get("ingest/UsageQueryGrouped/unpacked", "p99-ms"))
	if _, ok := r.Bench["aggregator/BreachLatency"]; ok {
		p("| event → breach row at 20k events/s (in-process aggregator) | p50 %.0f ms, p99 %.0f ms | | |", r.get("aggregator/BreachLatency", "p50-ms"), r.get("aggregator/BreachLatency", "p99-ms"))
	}
	b := "billing/Sync10kTenants"
	p("| biller: first sync, a delta for every tenant-metric | %.1f s | %.3f calls per pair | |", r.get(b, "sync-all-s"), r.get(b, "calls/pair-with-delta"))
	p("| biller: sync with nothing new | %.2f s | %.3f calls per pair | |", r.get(b, "sync-idle-s"), r.get(b, "calls/pair-without-delta"))
	p("| biller: reconcile every tenant-metric | %.1f s | one summary each | |", r.get(b, "reconcile-s"))
	p("| anomalies: one hour judged for 10,000 series (aggregator's loop, Postgres) | %.0f ms | %.0f µs per series | |", r.get("anomaly/AnomalyRound", "ms/hour"), r.get("anomaly/AnomalyRound", "µs/series"))
	p("| anomaly detector alone (no SQL) | %.0f ns per series-hour | | |", r.get("anomaly/Detector", "ns/series-hour"))
	p("")
	p("## Commands\n")
	p("```sh")
	for _, c := range r.Commands {
		p("%s", c)
	}
	p("```")
}

// likeCeilingWhy says why the pipeline has two Postgres ceilings.
const likeCeilingWhy = "Two Postgres ceilings, the same statements (COPY into a staging table, the new ids into the ledger, the new events' minute, hour, day and month windows upserted, one transaction per batch), on different events. The first runs the aggregator benchmark's events: batches of 10,000 over 4 × 1,000 tenants spread over two hours, so a batch folds into a few thousand window rows. The pipeline offers 100,000 tenants with events at the current time, and its aggregator commits batches of the size the offered rate and the time of the previous commit fill (the ceiling uses the largest mean batch of a step, in the table below: its last step, where Postgres bounds it): nearly every event is its tenant's only one in the batch and brings its own four window rows, and smaller batches pay the per-transaction cost more often. The second ceiling runs that shape, so it is what Postgres alone gives for the pipeline's work; the pipeline's ratio to it is the like-for-like one."

// writePipeline renders the pipeline sections: the plain run, then the
// run with meters when there was one.
func (r *Run) writePipeline(p func(format string, args ...any)) {
	p("## Pipeline under rising load\n")
	writeSteps(p, r.Pipeline)
	if r.PipelineMeters.Meters {
		p("## Pipeline under rising load, three meters per event\n")
		p("The same benchmark, with a sum grouped by project and a unique count of users defined for both metrics, and every event given a project (1,000 values) and a user (10,000), drawn uniformly: each event counts in its metric's implicit sum and in those two meters.\n")
		writeSteps(p, r.PipelineMeters)
	}
}

// writeSteps renders one pipeline run: its steps, latencies, CPU and memory.
func writeSteps(p func(format string, args ...any), res PipelineResult) {
	p("Separate processes (ingest, aggregator, biller, broker, private Postgres); %s tenants; batches of %d events from 8 clients. A step is kept when the aggregator ends it less than one second of load behind and ingest accepted ≥ 90 %% of the offered rate.\n", n0(float64(res.Tenants)), res.Batch)
	p("| offered events/s | accepted events/s | ingest p50 | ingest p99 | event → window p99 | event → breach p99 | lag after (records) | aggregator batches: records, time | kept |")
	p("|---|---|---|---|---|---|---|---|---|")
	for _, s := range res.Steps {
		p("| %s | %s | %s | %s | %s | %s | %s | %s, %s | %v |", n0(float64(s.Offered)), n0(s.Accepted), ms(s.IngestP50), ms(s.IngestP99),
			ms(s.WindowP99), ms(s.BreachP99), n0(float64(s.LagAfter)), n0(s.BatchRecords), ms(s.BatchTime), s.Kept)
	}
	p("\nOver the steps the pipeline sustained: event → window (minute window visible in Postgres) p50 %s, p99 %s; event → breach row p50 %s, p99 %s (%d breach probes). The step that was not kept is overload by definition: its latencies grow with the backlog.", ms(res.WindowP50), ms(res.WindowP99), ms(res.BreachP50), ms(res.BreachP99), res.Breaches)
	if res.Events > 0 && len(res.CPU) > 0 {
		capacity := "; the capacity model in the README uses these"
		if res.Meters {
			capacity = ""
		}
		p("CPU per event over the steps (user and system time each process used from the first step until every accepted event was counted, over the %s events accepted), and what one core gives at that cost%s:\n", n0(float64(res.Events)), capacity)
		p("| process | CPU per event | events/s per core |")
		p("|---|---|---|")
		for _, n := range []string{"ingest", "broker", "aggregator", "postgres", "biller"} {
			d, ok := res.CPU[n]
			if !ok {
				continue
			}
			per := float64(d.Nanoseconds()) / float64(res.Events)
			perCore := "—"
			if per > 0 {
				perCore = n0(1e9 / per)
			}
			p("| %s | %.1f µs | %s |", n, per/1e3, perCore)
		}
		p("")
	}
	p("Peak RSS (VmHWM): ingest %.0f MiB, aggregator %.0f MiB, biller %.0f MiB.\n", float64(res.PeakRSS["ingest"])/(1<<20), float64(res.PeakRSS["aggregator"])/(1<<20), float64(res.PeakRSS["biller"])/(1<<20))

}

// WritePipelineOnly renders the report of a run of the pipeline and its
// ceilings alone (benchreport -only pipeline), with the machine's load
// average before and after.
func (r *Run) WritePipelineOnly(w io.Writer, loadBefore, loadAfter string) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	p("# The pipeline and its Postgres ceilings\n")
	p("Written by `go run ./tools/benchreport -only pipeline` from one run on one machine: the pipeline benchmark of `make bench` and the two Postgres ceilings, nothing else.\n")
	p("- machine: %s; Postgres, the Kafka broker and the services share its cores", r.Machine)
	p("- run: %s, took %s", r.Started.UTC().Format(time.RFC3339), r.Took.Round(time.Second))
	p("- load average (1, 5, 15 min) before: %s; after: %s\n", loadBefore, loadAfter)
	ceiling := r.get("aggregator/Aggregate/ceiling-postgres-copy", "events/s")
	like := r.get("aggregator/CeilingLikePipeline", "events/s")
	p("| path | events/s | vs Postgres ceiling | vs the ceiling like the pipeline |")
	p("|---|---|---|---|")
	p("| ceiling: Postgres COPY + ledger + window upsert, no Kafka (4 workers) | %s | 1.00 | %s |", n0(ceiling), ratio(ceiling, like))
	p("| ceiling like the pipeline (%s tenants, at the current time, batches of %s events) | %s | %s | 1.00 |", n0(float64(r.Pipeline.Tenants)),
		n0(r.get("aggregator/CeilingLikePipeline", "events/batch")), n0(like), ratio(like, ceiling))
	p("| **pipeline**: HTTP ingest → Kafka → aggregator → Postgres, sustained | %s | %s | %s |", n0(r.Pipeline.Sustained), ratio(r.Pipeline.Sustained, ceiling), ratio(r.Pipeline.Sustained, like))
	if pm := r.PipelineMeters; pm.Meters {
		p("| **pipeline**, three meters per event (below) | %s | %s | %s |", n0(pm.Sustained), ratio(pm.Sustained, ceiling), ratio(pm.Sustained, like))
	}
	p("")
	p("%s\n", likeCeilingWhy)
	r.writePipeline(p)
	p("## Commands\n")
	p("```sh")
	for _, c := range r.Commands {
		p("%s", c)
	}
	p("```")
}

// WriteStatements renders the statements that took the most of the
// pipeline's Postgres time, per record the aggregator applied.
func (res PipelineResult) WriteStatements(w io.Writer) {
	if len(res.Statements) == 0 {
		return
	}
	fmt.Fprintf(w, "\nPostgres statements by execution time (pg_stat_statements; per record the aggregator applied, %s of the %s events ingest accepted):\n", n0(float64(res.Applied)), n0(float64(res.Events)))
	fmt.Fprintf(w, "%10s %10s %12s %10s  %s\n", "µs/record", "calls/1k", "rows", "total ms", "statement")
	for _, st := range res.Statements {
		q := st.Query
		if len(q) > 140 {
			q = q[:140] + "…"
		}
		fmt.Fprintf(w, "%10.1f %10.2f %12d %10.0f  %s\n", float64(st.PerEvent.Nanoseconds())/1e3, st.CallsPer1000, st.Rows, float64(st.Total.Microseconds())/1e3, q)
	}
}
