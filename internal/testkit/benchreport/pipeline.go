package benchreport

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/testkit/chaos"
	"github.com/usagemeter/metering/internal/testkit/stack"
	"github.com/usagemeter/metering/internal/testkit/stripefake"
	"github.com/usagemeter/metering/internal/topics"
)

// Step is one level of offered load.
type Step struct {
	Offered   int           // events/s offered
	Accepted  float64       // events/s answered 202
	IngestP50 time.Duration // request latency, batches of Batch events
	IngestP99 time.Duration
	LagAfter  int64 // records behind, 2 s after the step
	Kept      bool  // the aggregator kept up
	// WindowP99 and BreachP99 are the probes' latencies in this step.
	WindowP99, BreachP99 time.Duration
	// Batches is how many batch transactions the aggregator committed
	// from the step's start until it had caught up (or the step ended
	// the run), BatchRecords their mean records and BatchTime their mean
	// time to apply and commit (its metrics).
	Batches      int64
	BatchRecords float64
	BatchTime    time.Duration
}

// Statement is one statement's share of the pipeline's Postgres time
// (pg_stat_statements), over the records the aggregator applied.
type Statement struct {
	Query        string
	Calls        int64
	Rows         int64
	Total        time.Duration // execution time summed over the calls
	PerEvent     time.Duration // Total over the records applied
	CallsPer1000 float64       // calls per 1,000 records applied
}

// PipelineResult is the end-to-end benchmark's outcome.
type PipelineResult struct {
	Batch     int
	Tenants   int
	Steps     []Step
	Sustained float64 // highest accepted events/s with bounded lag
	WindowP50 time.Duration
	WindowP99 time.Duration
	BreachP50 time.Duration
	BreachP99 time.Duration
	Breaches  int
	PeakRSS   map[string]int64
	// Events is how many events ingest accepted over the steps, and CPU
	// the CPU time each process (services, broker, Postgres) used from
	// the first step until the aggregator had counted them all.
	Events int64
	CPU    map[string]time.Duration
	// Statements are the statements that took the most Postgres time,
	// with Config.Statements, per record of Applied: the records of
	// usage.events the aggregator had applied when they were read.
	Statements []Statement
	Applied    int64
	// Meters is PipelineConfig.Meters: every event counted in three meters.
	Meters bool
}

// PipelineConfig sets the load.
type PipelineConfig struct {
	Root, Work string
	Steps      []int // offered events/s, rising
	StepTime   time.Duration
	Batch      int
	Tenants    int
	// Loading, when set, is called once the stack is up, before the first
	// step, and Loaded after the last step, before the stack stops (the
	// profiling command starts and collects its profiles there).
	Loading, Loaded func(ctx context.Context) error
	// Statements loads pg_stat_statements into the private Postgres and
	// fills PipelineResult.Statements.
	Statements bool
	// Meters defines, for both metrics, a sum grouped by project and a
	// unique count of users, and gives every event a project (1,000
	// values) and a user (10,000): each event counts in three meters, its
	// metric's implicit sum and those two.
	Meters bool
}

// pipelineMeters are the meters of a run with PipelineConfig.Meters.
var pipelineMeters = []struct{ name, body string }{
	{"api_calls_by_project", `{"metric":"api_calls","aggregation":"sum","group_by":["project"]}`},
	{"api_calls_users", `{"metric":"api_calls","aggregation":"unique_count","property":"user"}`},
	{"tokens_by_project", `{"metric":"tokens","aggregation":"sum","group_by":["project"]}`},
	{"tokens_users", `{"metric":"tokens","aggregation":"unique_count","property":"user"}`},
}

// batchWait is the aggregator's BATCH_WAIT in the pipeline benchmark: the
// product's default, not the stack's 20 ms (which the kill tests keep for
// their pace). A batch waits at most this long for more records, so it
// adds at most this much to event → window and event → breach, and under
// load batches grow with the time the previous one took to commit.
const batchWait = 100 * time.Millisecond

// Pipeline runs HTTP ingest → Kafka → aggregator → Postgres as processes
// and offers rising load until the aggregator's lag grows.
func Pipeline(ctx context.Context, cfg PipelineConfig, out io.Writer) (PipelineResult, error) {
	res := PipelineResult{Batch: cfg.Batch, Tenants: cfg.Tenants, PeakRSS: map[string]int64{}, Meters: cfg.Meters}
	fake := stripefake.New(stripefake.Config{})
	srv := httptest.NewServer(fake)
	defer func() { fake.Close(); srv.Close() }()
	st, err := stack.Start(ctx, stack.Options{Root: cfg.Root, Work: cfg.Work, StripeBase: srv.URL,
		Env: map[string][]string{"biller": {"SYNC_INTERVAL=1h"}, "aggregator": {"BATCH_WAIT=" + batchWait.String()}}, Statements: cfg.Statements}, out)
	if err != nil {
		return res, err
	}
	defer st.Stop()
	pool, err := pgxpool.New(ctx, st.DBURL)
	if err != nil {
		return res, err
	}
	defer pool.Close()
	ingest := st.URLs["ingest"]
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	post := func(body []byte) (int, error) {
		req, _ := http.NewRequestWithContext(ctx, "POST", ingest+"/v1/events", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+stack.AdminKey)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	if err := st.Put(ctx, "/v1/admin/plans/probe", `{"quotas":[{"metric":"probe","limit":1,"hard":true}]}`); err != nil {
		return res, err
	}
	if cfg.Meters {
		for _, m := range pipelineMeters {
			if err := st.Put(ctx, "/v1/admin/meters/"+m.name, m.body); err != nil {
				return res, err
			}
		}
		// The aggregator loads meter changes on a notification; give it
		// time to, so that the first step's events count in them.
		time.Sleep(2 * time.Second)
	}
	const breachProbes = 100
	for i := range breachProbes {
		if err := st.Put(ctx, fmt.Sprintf("/v1/admin/tenants/bprobe-%d", i), `{"plan":"probe"}`); err != nil {
			return res, err
		}
	}

	if cfg.Loading != nil {
		if err := cfg.Loading(ctx); err != nil {
			return res, err
		}
	}
	cpuBefore, err := st.CPUTimes()
	if err != nil {
		return res, err
	}
	if cfg.Statements {
		if _, err := pool.Exec(ctx, `SELECT pg_stat_statements_reset()`); err != nil {
			return res, fmt.Errorf("resetting pg_stat_statements: %w", err)
		}
	}
	aggMetrics := st.URLs["aggregator"] + "/metrics"
	rng := rand.New(rand.NewPCG(1, 2))
	var windowLat, breachLat []time.Duration // over the steps that were kept
	probeN, breachN := 0, 0
	for _, offered := range cfg.Steps {
		fmt.Fprintf(out, "  offering %d events/s for %s...\n", offered, cfg.StepTime)
		batchesBefore, err := scrapeBatches(ctx, aggMetrics)
		if err != nil {
			return res, err
		}
		var mu sync.Mutex
		var lat, stepWindow, stepBreach []time.Duration
		accepted := 0
		bodies := make(chan []byte, 64)
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for b := range bodies {
					start := time.Now()
					code, err := post(b)
					d := time.Since(start)
					mu.Lock()
					lat = append(lat, d)
					if err == nil && code == http.StatusAccepted {
						accepted += cfg.Batch
					}
					mu.Unlock()
				}
			})
		}
		// Probes: single events for fresh tenants, timed to their window and breach.
		probeCtx, stopProbes := context.WithCancel(ctx)
		var pwg sync.WaitGroup
		pwg.Go(func() {
			for probeCtx.Err() == nil {
				time.Sleep(250 * time.Millisecond)
				tenant := fmt.Sprintf("probe-%d", probeN)
				probeN++
				body := events.New(tenant, "probe", 1).AppendJSON(nil)
				start := time.Now()
				if code, err := post(body); err != nil || code != 202 {
					continue
				}
				if d, ok := waitRow(probeCtx, pool, `SELECT count(*) FROM usage_windows WHERE tenant = $1 AND granularity = 'minute'`, tenant, start); ok {
					mu.Lock()
					stepWindow = append(stepWindow, d)
					mu.Unlock()
				}
				if breachN < breachProbes {
					tenant := fmt.Sprintf("bprobe-%d", breachN)
					breachN++
					body := events.New(tenant, "probe", 5).AppendJSON(nil)
					start := time.Now()
					if code, err := post(body); err == nil && code == 202 {
						if d, ok := waitRow(probeCtx, pool, `SELECT count(*) FROM quota_breaches WHERE tenant = $1 AND threshold = 'blocked'`, tenant, start); ok {
							mu.Lock()
							stepBreach = append(stepBreach, d)
							mu.Unlock()
						}
					}
				}
			}
		})
		interval := time.Duration(float64(time.Second) * float64(cfg.Batch) / float64(offered))
		stepStart := time.Now()
		next := stepStart
		for time.Since(stepStart) < cfg.StepTime && ctx.Err() == nil {
			evs := make([]events.Event, cfg.Batch)
			for i := range evs {
				evs[i] = events.New(fmt.Sprint("tenant-", rng.IntN(cfg.Tenants)), []string{"api_calls", "tokens"}[i%2], 1+rng.Int64N(100))
				if cfg.Meters {
					evs[i].Properties = map[string]string{"project": fmt.Sprint("p", rng.IntN(1000)), "user": fmt.Sprint("u", rng.IntN(10000))}
				}
			}
			time.Sleep(time.Until(next))
			next = next.Add(interval)
			bodies <- events.AppendArray(nil, evs)
		}
		close(bodies)
		wg.Wait()
		elapsed := time.Since(stepStart)
		time.Sleep(2 * time.Second)
		stopProbes()
		pwg.Wait()
		lag, err := chaos.Lag(ctx, pool, st.Brokers)
		if err != nil {
			return res, err
		}
		slices.Sort(lat)
		slices.Sort(stepWindow)
		slices.Sort(stepBreach)
		s := Step{Offered: offered, Accepted: float64(accepted) / elapsed.Seconds(), IngestP50: pct(lat, 0.5), IngestP99: pct(lat, 0.99),
			LagAfter: lag, WindowP99: pct(stepWindow, 0.99), BreachP99: pct(stepBreach, 0.99)}
		s.Kept = float64(lag) <= float64(offered) && s.Accepted >= 0.9*float64(offered)
		if s.Kept {
			windowLat = append(windowLat, stepWindow...)
			breachLat = append(breachLat, stepBreach...)
		}
		res.Steps = append(res.Steps, s)
		res.Events += int64(accepted)
		fmt.Fprintf(out, "    accepted %.0f events/s, ingest p50 %s p99 %s, lag after %d, window p99 %s, breach p99 %s\n",
			s.Accepted, s.IngestP50, s.IngestP99, lag, s.WindowP99, s.BreachP99)
		if s.Kept {
			res.Sustained = max(res.Sustained, s.Accepted)
			// Let the aggregator catch up before the next step.
			if err := chaos.WaitConsumed(ctx, pool, st.Brokers, 5*time.Minute); err != nil {
				return res, err
			}
		}
		batchesAfter, err := scrapeBatches(ctx, aggMetrics)
		if err != nil {
			return res, err
		}
		step := &res.Steps[len(res.Steps)-1]
		d := batchesAfter.minus(batchesBefore)
		step.Batches = int64(d.count)
		if d.count > 0 {
			step.BatchRecords = d.records / d.count
			step.BatchTime = time.Duration(d.seconds / d.count * float64(time.Second))
		}
		fmt.Fprintf(out, "    the aggregator committed %d batches, %.0f records each on average, %s each\n", step.Batches, step.BatchRecords, step.BatchTime.Round(time.Millisecond))
		if !s.Kept {
			break
		}
	}
	// The CPU each process spent on the steps' events, once all are
	// counted (not when profiling: its last step is overload on purpose).
	if cfg.Loaded == nil {
		if err := chaos.WaitConsumed(ctx, pool, st.Brokers, 5*time.Minute); err != nil {
			return res, err
		}
		cpuAfter, err := st.CPUTimes()
		if err != nil {
			return res, err
		}
		res.CPU = map[string]time.Duration{}
		for n, d := range cpuAfter {
			res.CPU[n] = d - cpuBefore[n]
		}
	}
	if cfg.Statements {
		// Per record the aggregator applied (in an overloaded step far
		// fewer than ingest accepted).
		var applied int64
		if err := pool.QueryRow(ctx, `SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets WHERE topic = $1`, topics.UsageEvents).Scan(&applied); err != nil {
			return res, fmt.Errorf("reading the records applied: %w", err)
		}
		res.Applied = applied
		if res.Statements, err = topStatements(ctx, pool, applied); err != nil {
			return res, err
		}
	}
	if cfg.Loaded != nil {
		if err := cfg.Loaded(ctx); err != nil {
			return res, err
		}
	}
	slices.Sort(windowLat)
	slices.Sort(breachLat)
	res.WindowP50, res.WindowP99 = pct(windowLat, 0.5), pct(windowLat, 0.99)
	res.BreachP50, res.BreachP99 = pct(breachLat, 0.5), pct(breachLat, 0.99)
	res.Breaches = len(breachLat)
	for _, n := range stack.Services {
		if rss, err := st.Procs[n].PeakRSS(); err == nil {
			res.PeakRSS[n] = rss
		}
	}
	return res, nil
}

func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	return d[int(p*float64(len(d)-1))]
}

// waitRow polls query (with arg) until it counts a row, and returns the
// time since start.
func waitRow(ctx context.Context, pool *pgxpool.Pool, query, arg string, start time.Time) (time.Duration, bool) {
	for ctx.Err() == nil && time.Since(start) < 30*time.Second {
		var n int
		if err := pool.QueryRow(ctx, query, arg).Scan(&n); err == nil && n > 0 {
			return time.Since(start), true
		}
		time.Sleep(5 * time.Millisecond)
	}
	return 0, false
}

// batchMetrics are the sums of the aggregator's batch histograms.
type batchMetrics struct{ count, records, seconds float64 }

func (a batchMetrics) minus(b batchMetrics) batchMetrics {
	return batchMetrics{a.count - b.count, a.records - b.records, a.seconds - b.seconds}
}

// scrapeBatches reads the batch histograms' sums from the aggregator's
// metrics at url.
func scrapeBatches(ctx context.Context, url string) (batchMetrics, error) {
	var m batchMetrics
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return m, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return m, fmt.Errorf("reading the aggregator's metrics: %w", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		var dst *float64
		switch name {
		case "metering_aggregator_batch_records_count":
			dst = &m.count
		case "metering_aggregator_batch_records_sum":
			dst = &m.records
		case "metering_aggregator_batch_seconds_sum":
			dst = &m.seconds
		default:
			continue
		}
		if *dst, err = strconv.ParseFloat(strings.TrimSpace(value), 64); err != nil {
			return m, fmt.Errorf("reading the aggregator's metrics: %s: %w", name, err)
		}
	}
	if err := sc.Err(); err != nil {
		return m, fmt.Errorf("reading the aggregator's metrics: %w", err)
	}
	return m, nil
}

// topStatements are the 15 statements that took the most execution time
// since the steps began, per record applied.
func topStatements(ctx context.Context, pool *pgxpool.Pool, events int64) ([]Statement, error) {
	rows, err := pool.Query(ctx, `SELECT regexp_replace(query, '\s+', ' ', 'g'), calls, rows, total_exec_time
		FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
		ORDER BY total_exec_time DESC LIMIT 15`)
	if err != nil {
		return nil, fmt.Errorf("reading pg_stat_statements: %w", err)
	}
	defer rows.Close()
	var out []Statement
	for rows.Next() {
		var st Statement
		var ms float64
		if err := rows.Scan(&st.Query, &st.Calls, &st.Rows, &ms); err != nil {
			return nil, fmt.Errorf("reading pg_stat_statements: %w", err)
		}
		st.Total = time.Duration(ms * float64(time.Millisecond))
		if events > 0 {
			st.PerEvent = st.Total / time.Duration(events)
			st.CallsPer1000 = float64(st.Calls) * 1000 / float64(events)
		}
		out = append(out, st)
	}
	return out, rows.Err()
}

// LikeBatch is the largest mean batch the pipeline's aggregator committed
// in a step, in events (at least 1): the batch of its last step, where
// Postgres bounds it and the batches grow with the time each commit
// takes. The ceiling like the pipeline runs batches of this size; the
// smaller batches of the lighter steps would give a lower ceiling.
func (res PipelineResult) LikeBatch() int {
	best := 1.0
	for _, s := range res.Steps {
		best = max(best, s.BatchRecords)
	}
	return int(best + 0.5)
}
