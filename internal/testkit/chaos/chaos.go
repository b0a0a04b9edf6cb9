// Package chaos runs the whole pipeline as separate processes and breaks
// it while it works: SIGKILLs of ingest, the aggregator and the biller at
// random moments, one restart of the Kafka broker (from its data dir) and
// one of Postgres, 30 % duplicate resends and 10 % Stripe faults. Then it
// proves the invariants: every window equals the ground truth, Stripe's
// totals equal Postgres's after the DLQ is replayed, nothing is left in
// flight, and Stripe's running total was never above the metered total at
// any moment of the run.
//
// The replicas mode (Config.Replicas) runs 2 ingest, 3 aggregators and 2
// billers on one database, kills any of them, and writes hostile records
// (bad keys, tombstones, empty, huge, garbage and control-character
// values, binary headers) straight to usage.events: each must end as a
// dead letter holding its bytes, or be counted if it is a valid event,
// and no partition may stall.
//
// Invariant: it judges the system only by its outputs (windows, ledger,
// dead letters, stored offsets, Stripe totals, queues, metrics) against a
// ground truth it keeps itself.
//
// Test and dev tooling, not product (see internal/testkit): no product
// package imports it, and it does not import testing, since the dev
// binaries under tools/ link it.
package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/testkit/stack"
	"github.com/usagemeter/metering/internal/testkit/stripefake"
	"github.com/usagemeter/metering/internal/topics"
	"github.com/usagemeter/metering/internal/windows"
)

// Config of a run.
type Config struct {
	// Root is the repository root (for building binaries and scripts).
	Root string
	// Work is a directory for binaries, data and logs.
	Work      string
	Events    int     // unique events
	DupShare  float64 // share of resends
	FaultRate float64 // Stripe fault rate
	MinKills  int     // SIGKILLs of services in all
	Tenants   int
	Seed      uint64
	// Replicas runs 2 ingest, 3 aggregators and 2 billers, and mixes
	// hostile records into usage.events.
	Replicas bool
	// HostilePerClass is how many records of each hostile class the
	// replicas mode writes (default 5).
	HostilePerClass int
	// Batch is the number of events per request (default 500).
	Batch int
}

// Report is what a run counted and found.
type Report struct {
	Sent, Unique, Resent int
	Retried              int // requests resent after a kill, 503 or timeout
	Kills                map[string]int
	BrokerRestarts       int
	PostgresRestarts     int
	Faults               map[string]int
	WindowsChecked       int
	WindowDiff           int
	PairsChecked         int
	StripeDiff           int
	DLQReplayed          int
	Elapsed              time.Duration

	// Replicas names the processes of each service ("ingest": 2, ...).
	Replicas map[string]int
	// Hostile records by class, and what became of them.
	HostileSent           map[string]int
	HostileDeadLettered   int // dead letters holding the record's bytes
	HostileCounted        int // valid events among them, counted
	HostileMissing        int // neither: lost or stuck
	HostileCopies         int // dead letters of copies written by attempts that got no answer
	HostileEmptyAsNull    int // dead letters holding null for the record's empty key or value
	UsageDeadLetters      int // rows of usage_dlq in all
	UnexpectedDeadLetters int // dead letters of records that are no hostile record
	// PartitionsStalled counts partitions whose stored offset did not
	// reach the log end within the bound, or whose stalled gauge was 1 at
	// the end; StalledMax is the largest metering_aggregator_partition_stalled
	// sampled during the run (StalledSeen lists the partitions) over
	// StalledSamples scrapes.
	PartitionsStalled int
	StalledMax        float64
	StalledSeen       []string
	StalledSamples    int
	// Stripe running totals compared with the metered total as they were
	// recorded (TotalsDeferred of them later, Postgres being down), how
	// many were above it, and by how much at most.
	TotalsChecked, TotalsDeferred, OverReports int
	MaxOverReport                              int64
	// HostileDiscarded dead letters were discarded by on-call's command.
	HostileDiscarded int
}

func (r Report) String() string {
	kills := 0
	for _, n := range r.Kills {
		kills += n
	}
	faults := 0
	for _, n := range r.Faults {
		faults += n
	}
	s := fmt.Sprintf(`chaos run in %s
  events: %d sent, %d unique, %d resends, %d requests retried after failures
  kills: %d (%v); broker restarts: %d; Postgres restarts: %d
  Stripe faults injected: %d (%v); billing DLQ replayed: %d
  windows checked: %d, differing from the ground truth: %d
  tenant-metrics checked against Stripe: %d, differing: %d
  Stripe running totals checked against Postgres as recorded: %d (%d later, Postgres down), above the metered total: %d; maximum over-report: %d
  partitions stalled at the end: %d; metering_aggregator_partition_stalled max during the run: %g (%d scrapes%s)`,
		r.Elapsed.Round(time.Second), r.Sent, r.Unique, r.Resent, r.Retried, kills, r.Kills, r.BrokerRestarts, r.PostgresRestarts,
		faults, r.Faults, r.DLQReplayed, r.WindowsChecked, r.WindowDiff, r.PairsChecked, r.StripeDiff,
		r.TotalsChecked, r.TotalsDeferred, r.OverReports, r.MaxOverReport,
		r.PartitionsStalled, r.StalledMax, r.StalledSamples, seen(r.StalledSeen))
	if r.Replicas != nil {
		sent := 0
		for _, n := range r.HostileSent {
			sent += n
		}
		s += fmt.Sprintf(`
  replicas: %v
  hostile records: %d sent (%v); dead-lettered: %d (%d with null for an empty key or value); counted as valid events: %d; neither: %d
  usage dead letters: %d in all (%d of copies from unanswered writes, %d of records that are not hostile); discarded by on-call: %d`,
			r.Replicas, sent, r.HostileSent, r.HostileDeadLettered, r.HostileEmptyAsNull, r.HostileCounted, r.HostileMissing,
			r.UsageDeadLetters, r.HostileCopies, r.UnexpectedDeadLetters, r.HostileDiscarded)
	}
	return s
}

func seen(partitions []string) string {
	if len(partitions) == 0 {
		return ""
	}
	return "; stalled: " + strings.Join(partitions, ", ")
}

const adminKey = stack.AdminKey

var chaosMetrics = []string{"api_calls", "tokens", "bytes"}

// Run performs a chaos run and returns its report; err is non-nil when an
// invariant does not hold (the report says which).
func Run(ctx context.Context, cfg Config, out io.Writer) (rep Report, err error) {
	started := time.Now()
	rep = Report{Kills: map[string]int{}}
	over := &overReport{}
	defer func() {
		over.fill(&rep)
		rep.Elapsed = time.Since(started)
	}()
	rng := rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0xc4a05))
	if cfg.Replicas && cfg.HostilePerClass <= 0 {
		cfg.HostilePerClass = 5
	}

	// Stripe: the test server, in this process, with faults; every running
	// total it records is compared with Postgres at once.
	fake := stripefake.New(stripefake.Config{FaultRate: cfg.FaultRate, Seed: cfg.Seed, OnTotal: over.onTotal})
	for _, m := range chaosMetrics {
		fake.EnsureMeter(m)
	}
	stripeSrv := httptest.NewServer(fake)
	defer func() { fake.Close(); stripeSrv.Close() }()

	st, err := stack.Start(ctx, stack.Options{Root: cfg.Root, Work: cfg.Work, StripeBase: stripeSrv.URL, Env: map[string][]string{
		"aggregator": {"BATCH_SIZE=2000"},
		"biller":     {"SYNC_INTERVAL=300ms", "STRIPE_MAX_ATTEMPTS=3", "STRIPE_TIMEOUT=1s"},
	}}, out)
	if err != nil {
		return rep, err
	}
	defer st.Stop()
	pool, err := pgxpool.New(ctx, st.DBURL)
	if err != nil {
		return rep, fmt.Errorf("connecting to the stack's database: %w", err)
	}
	defer pool.Close()
	over.pool.Store(pool)
	overCtx, stopOver := context.WithCancel(ctx)
	stallCtx, stopStalls := context.WithCancel(ctx)
	var overWG, stallWG sync.WaitGroup
	defer func() { stopOver(); stopStalls(); overWG.Wait(); stallWG.Wait() }()
	overWG.Go(func() { over.run(overCtx) })

	// The processes: one of each service, or the replicas.
	byService := map[string][]string{}
	for _, n := range stack.Services {
		byService[n] = []string{n}
	}
	if cfg.Replicas {
		fmt.Fprintln(out, "starting the replicas: 2 ingest, 3 aggregators, 2 billers...")
		for _, r := range []struct{ name, service string }{{"ingest-2", "ingest"}, {"aggregator-2", "aggregator"},
			{"aggregator-3", "aggregator"}, {"biller-2", "biller"}} {
			if _, err := st.Spawn(ctx, r.name, r.service); err != nil {
				return rep, fmt.Errorf("starting replica %s: %w", r.name, err)
			}
			byService[r.service] = append(byService[r.service], r.name)
		}
		rep.Replicas, rep.HostileSent = map[string]int{}, map[string]int{}
		for n, names := range byService {
			rep.Replicas[n] = len(names)
		}
	}
	var procs, ingestURLs, aggURLs []string
	for _, n := range stack.Services {
		procs = append(procs, byService[n]...)
	}
	for _, n := range byService["ingest"] {
		ingestURLs = append(ingestURLs, st.URLs[n])
	}
	for _, n := range byService["aggregator"] {
		aggURLs = append(aggURLs, st.URLs[n])
	}
	stalls := &stallSampler{stalled: map[string]bool{}}
	stallWG.Go(func() { stalls.run(stallCtx, aggURLs) })
	if err := setup(ctx, st, cfg.Tenants); err != nil {
		return rep, err
	}

	// Load, with the killer (and the hostile writer) running beside it.
	truth := map[string]int64{} // tenant/metric/granularity/start → value
	var loadDone atomic.Bool
	var progress atomic.Uint64 // math.Float64bits of the fraction sent
	var killerErr, restartErr, hostileErr error
	var killerWG sync.WaitGroup
	killerWG.Go(func() {
		krng := rand.New(rand.NewPCG(cfg.Seed^1, cfg.Seed^2))
		// Every process is killed once, in a random order, then a service
		// is picked at random and one of its processes.
		order := slices.Clone(procs)
		krng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		kills := 0
		for !loadDone.Load() || kills < cfg.MinKills {
			if ctx.Err() != nil {
				return
			}
			time.Sleep(time.Duration(300+krng.IntN(900)) * time.Millisecond)
			n := ""
			if kills < len(order) && cfg.Replicas {
				n = order[kills]
			} else {
				names := byService[stack.Services[krng.IntN(len(stack.Services))]]
				n = names[krng.IntN(len(names))]
			}
			st.Procs[n].Kill()
			rep.Kills[n]++
			kills++
			if err := st.Procs[n].Start(); err != nil {
				killerErr = fmt.Errorf("restarting %s after a kill: %w", n, err)
				return
			}
		}
	})
	var hostile *hostileSender
	if cfg.Replicas {
		if hostile, err = newHostileSender(ctx, st.Brokers); err != nil {
			return rep, err
		}
		defer hostile.close()
		hrng := rand.New(rand.NewPCG(cfg.Seed^3, cfg.Seed^4))
		var recs []*hostileRecord
		now := time.Now().UTC()
		for _, c := range HostileClasses {
			for range cfg.HostilePerClass {
				recs = append(recs, makeHostile(hrng, c, cfg.Tenants, now))
			}
		}
		hrng.Shuffle(len(recs), func(i, j int) { recs[i], recs[j] = recs[j], recs[i] })
		killerWG.Go(func() {
			// Spread over the load: record i goes once i/len of it is sent.
			for i, h := range recs {
				for !loadDone.Load() && math.Float64frombits(progress.Load()) < float64(i)/float64(len(recs)) && ctx.Err() == nil {
					time.Sleep(20 * time.Millisecond)
				}
				if err := hostile.send(ctx, hrng, h); err != nil {
					hostileErr = err
					return
				}
			}
		})
	}
	fmt.Fprintf(out, "sending %d events (%.0f%% resends) while killing services...\n", cfg.Events, cfg.DupShare*100)
	err = load(ctx, cfg, rng, ingestURLs, truth, &rep, out, func(fraction float64) {
		progress.Store(math.Float64bits(fraction))
		switch {
		case rep.BrokerRestarts == 0 && fraction >= 0.4:
			fmt.Fprintln(out, "\n  restarting the Kafka broker (SIGKILL, same data dir)")
			st.Broker.Kill()
			rep.BrokerRestarts++
			if err := st.Broker.Start(); err != nil {
				restartErr = fmt.Errorf("restarting the broker: %w", err)
			}
		case rep.PostgresRestarts == 0 && fraction >= 0.7:
			fmt.Fprintln(out, "\n  restarting Postgres")
			if err := st.RestartPostgres(); err != nil {
				restartErr = fmt.Errorf("restarting Postgres: %w", err)
			}
			rep.PostgresRestarts++
		}
	})
	loadDone.Store(true)
	killerWG.Wait()
	if hostile != nil {
		for _, h := range hostile.records() {
			rep.HostileSent[h.class]++
		}
	}
	if err != nil {
		return rep, err
	}
	if err := errors.Join(killerErr, restartErr, hostileErr); err != nil {
		return rep, err
	}
	for _, n := range procs {
		if err := stack.WaitHTTP(ctx, st.URLs[n]+"/healthz", time.Minute); err != nil {
			return rep, fmt.Errorf("%s after the chaos: %w", n, err)
		}
	}

	fmt.Fprintln(out, "\nwaiting for the aggregators to drain usage.events...")
	lags, err := waitPartitions(ctx, pool, st.Brokers, 10*time.Minute)
	for p, lag := range lags {
		if lag > 0 && ctx.Err() == nil { // an interrupted wait proves no stall
			rep.PartitionsStalled++
			rep.StalledSeen = append(rep.StalledSeen, fmt.Sprintf("partition %d %d records behind at the end", p, lag))
		}
	}
	// The gauges at the end, after the last scrape of the run.
	stopStalls()
	stallWG.Wait()
	if now := stalls.sample(ctx, &http.Client{Timeout: 2 * time.Second}, aggURLs); len(now) > 0 {
		rep.PartitionsStalled += len(now)
		err = errors.Join(err, fmt.Errorf("stalled gauge is 1 at the end: %s", strings.Join(now, ", ")))
	}
	rep.StalledMax, rep.StalledSamples = stalls.max, stalls.samples
	for p := range stalls.stalled {
		rep.StalledSeen = append(rep.StalledSeen, "{"+p+"}")
	}
	slices.Sort(rep.StalledSeen)
	if err != nil {
		return rep, err
	}
	if hostile != nil {
		ids, err := auditHostile(ctx, pool, hostile.records(), truth, &rep)
		if err != nil {
			return rep, err
		}
		if err := discard(ctx, st, ids, &rep); err != nil {
			return rep, err
		}
	}
	if err := checkWindows(ctx, pool, truth, &rep); err != nil {
		return rep, err
	}

	fmt.Fprintln(out, "waiting for the billers to bring Stripe up to date...")
	fake.SetFaultRate(0) // the cause is fixed; what failed waits in the DLQ
	if err := waitBilled(ctx, pool, 5*time.Minute); err != nil {
		return rep, err
	}
	var dead int
	_ = pool.QueryRow(ctx, `SELECT count(*) FROM billing_pushes WHERE status = 'dead'`).Scan(&dead)
	if dead > 0 {
		fmt.Fprintf(out, "replaying %d dead-lettered pushes...\n", dead)
		replay := exec.CommandContext(ctx, st.Bin("biller"), "dlq", "replay", "--all", "--actor", "chaos")
		replay.Env = append(os.Environ(), append(st.Env(), "STRIPE_API_KEY=sk_test_stack", "STRIPE_API_BASE="+stripeSrv.URL)...)
		if b, err := replay.CombinedOutput(); err != nil {
			return rep, fmt.Errorf("biller dlq replay: %v\n%s", err, b)
		}
		rep.DLQReplayed = dead
	}
	if err := waitBilled(ctx, pool, time.Minute); err != nil {
		return rep, err
	}
	rep.Faults = fake.Faults()
	if err := checkStripe(ctx, pool, fake, &rep); err != nil {
		return rep, err
	}
	if err := checkNothingInFlight(ctx, pool); err != nil {
		return rep, err
	}
	stopOver()
	overWG.Wait()
	return rep, over.finish(ctx, &rep)
}

// discard resolves the hostile dead letters as on-call would, with the
// aggregator's command, once they have been checked.
func discard(ctx context.Context, st *stack.Stack, ids []int64, rep *Report) error {
	for chunk := range slices.Chunk(ids, 500) {
		args := []string{"dlq", "discard"}
		for _, id := range chunk {
			args = append(args, strconv.FormatInt(id, 10))
		}
		args = append(args, "--actor", "chaos", "--note", "hostile records written by the chaos run")
		cmd := exec.CommandContext(ctx, st.Bin("aggregator"), args...)
		cmd.Env = append(os.Environ(), st.Env()...)
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("aggregator dlq discard: %v\n%s", err, b)
		}
		rep.HostileDiscarded += len(chunk)
	}
	return nil
}

func setup(ctx context.Context, st *stack.Stack, tenants int) error {
	if err := st.Put(ctx, "/v1/admin/plans/chaos", `{"quotas":[{"metric":"api_calls","limit":5000,"hard":true},{"metric":"tokens","limit":null},{"metric":"bytes","limit":null}]}`); err != nil {
		return err
	}
	for i := range tenants {
		if err := st.Put(ctx, fmt.Sprintf("/v1/admin/tenants/t%d", i), fmt.Sprintf(`{"plan":"chaos","stripe_customer_id":"cus_t%d"}`, i)); err != nil {
			return err
		}
	}
	return nil
}

// load sends the events in batches from four workers, spread over the
// ingest URLs, each batch retried (same ids, the next URL) until it gets
// 202; at is called with the fraction sent.
func load(ctx context.Context, cfg Config, rng *rand.Rand, ingestURLs []string, truth map[string]int64, rep *Report, out io.Writer, at func(float64)) error {
	batch := cfg.Batch
	if batch <= 0 {
		batch = 500
	}
	seen := map[string]bool{}
	var sent []events.Event
	now := time.Now().UTC()
	bodies := make(chan []byte, 4)
	var retried atomic.Int64
	var wg sync.WaitGroup
	var firstErr error
	var errOnce sync.Once
	client := &http.Client{Timeout: 10 * time.Second}
	for w := range 4 {
		wg.Go(func() {
			for body := range bodies {
				for attempt := 0; ; attempt++ {
					if attempt > 600 {
						errOnce.Do(func() { firstErr = errors.New("a batch was not accepted after 600 tries") })
						break
					}
					ingestURL := ingestURLs[(w+attempt)%len(ingestURLs)]
					req, _ := http.NewRequestWithContext(ctx, "POST", ingestURL+"/v1/events", bytes.NewReader(body))
					req.Header.Set("Authorization", "Bearer "+adminKey)
					req.Header.Set("Content-Type", "application/json")
					resp, err := client.Do(req)
					if err == nil {
						code := resp.StatusCode
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if code == http.StatusAccepted {
							break
						}
						if code != http.StatusServiceUnavailable && code != http.StatusTooManyRequests && code != http.StatusInternalServerError {
							errOnce.Do(func() { firstErr = fmt.Errorf("POST /v1/events: %d", code) })
							break
						}
					}
					retried.Add(1)
					time.Sleep(100 * time.Millisecond)
				}
			}
		})
	}
	lastReport := time.Now()
	// Spread the load over at least the time the kills take (one every
	// 0.75 s on average), so that they land while events flow.
	minDuration := time.Duration(cfg.MinKills) * 750 * time.Millisecond
	perBatch := minDuration / time.Duration(max(1, cfg.Events/batch))
	next := time.Now()
	for rep.Unique < cfg.Events && ctx.Err() == nil && firstErr == nil {
		time.Sleep(time.Until(next))
		next = next.Add(perBatch)
		var evs []events.Event
		for len(evs) < batch && rep.Unique < cfg.Events {
			if len(sent) > 0 && rng.Float64() < cfg.DupShare {
				evs = append(evs, sent[rng.IntN(len(sent))])
				rep.Resent++
				continue
			}
			e := events.Event{ID: events.NewID(), Tenant: fmt.Sprint("t", rng.IntN(cfg.Tenants)), Metric: chaosMetrics[rng.IntN(len(chaosMetrics))],
				Value: rng.Int64N(1000), Time: now.Add(-time.Duration(rng.IntN(3600)) * time.Second)}
			evs = append(evs, e)
			sent = append(sent, e)
			if !seen[e.Tenant+e.ID] {
				seen[e.Tenant+e.ID] = true
				for _, g := range windows.All {
					truth[fmt.Sprintf("%s/%s/%s/%d", e.Tenant, e.Metric, g, g.Start(e.Time).Unix())] += e.Value
				}
			}
			rep.Unique++
		}
		rep.Sent += len(evs)
		bodies <- events.AppendArray(nil, evs)
		at(float64(rep.Unique) / float64(cfg.Events))
		if time.Since(lastReport) > time.Second {
			lastReport = time.Now()
			fmt.Fprintf(out, "\r  %d/%d unique events sent, %d requests retried   ", rep.Unique, cfg.Events, retried.Load())
		}
	}
	close(bodies)
	wg.Wait()
	rep.Retried = int(retried.Load())
	fmt.Fprintf(out, "\r  %d/%d unique events sent (%d with resends), %d requests retried   \n", rep.Unique, cfg.Events, rep.Sent, rep.Retried)
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}

// PartitionLags returns, per partition of usage.events, how many records
// lie between the offset the aggregators stored in Postgres and the log end.
func PartitionLags(ctx context.Context, pool *pgxpool.Pool, brokers string) (map[int]int64, error) {
	conn, err := kafka.DialContext(ctx, "tcp", brokers)
	if err != nil {
		return nil, fmt.Errorf("dialing %s: %w", brokers, err)
	}
	parts, err := conn.ReadPartitions(topics.UsageEvents)
	conn.Close()
	if err != nil {
		return nil, fmt.Errorf("reading the partitions of %s: %w", topics.UsageEvents, err)
	}
	lags := map[int]int64{}
	for _, p := range parts {
		lc, err := kafka.DialLeader(ctx, "tcp", brokers, topics.UsageEvents, p.ID)
		if err != nil {
			return nil, fmt.Errorf("dialing the leader of partition %d: %w", p.ID, err)
		}
		last, err := lc.ReadLastOffset()
		lc.Close()
		if err != nil {
			return nil, fmt.Errorf("reading the end of partition %d: %w", p.ID, err)
		}
		lags[p.ID] = last
	}
	rows, err := pool.Query(ctx, `SELECT partition, max(next_offset) FROM consumer_offsets WHERE topic = $1 GROUP BY partition`, topics.UsageEvents)
	if err != nil {
		return nil, fmt.Errorf("reading consumer_offsets: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var p int
		var next int64
		if err := rows.Scan(&p, &next); err != nil {
			return nil, fmt.Errorf("reading consumer_offsets: %w", err)
		}
		if _, ok := lags[p]; ok {
			lags[p] -= next
		}
	}
	return lags, rows.Err()
}

// Lag returns how many records of usage.events the aggregators have not
// committed yet.
func Lag(ctx context.Context, pool *pgxpool.Pool, brokers string) (int64, error) {
	lags, err := PartitionLags(ctx, pool, brokers)
	var sum int64
	for _, l := range lags {
		sum += l
	}
	return sum, err
}

// WaitConsumed waits until the aggregators' stored offsets reach every
// partition's end of usage.events.
func WaitConsumed(ctx context.Context, pool *pgxpool.Pool, brokers string, d time.Duration) error {
	_, err := waitPartitions(ctx, pool, brokers, d)
	return err
}

// waitPartitions waits up to d until every partition's stored offset
// reaches its log end, and returns the last lags it read. It gives up
// sooner when no partition's offset has moved for stuckAfter: a partition
// that has records waiting and stays put that long is stalled.
func waitPartitions(ctx context.Context, pool *pgxpool.Pool, brokers string, d time.Duration) (map[int]int64, error) {
	const stuckAfter = 2 * time.Minute
	deadline := time.Now().Add(d)
	moved := time.Now()
	var last map[int]int64
	for {
		lags, err := PartitionLags(ctx, pool, brokers)
		behind := int64(0)
		for p, l := range lags {
			behind += l
			if prev, ok := last[p]; !ok || l < prev {
				moved = time.Now()
			}
		}
		if err == nil {
			last = lags
		}
		if err == nil && behind == 0 {
			return lags, nil
		}
		if ctx.Err() != nil {
			return last, fmt.Errorf("waiting for the aggregators to drain usage.events: %w", ctx.Err())
		}
		if time.Since(moved) > stuckAfter {
			return last, fmt.Errorf("the aggregators are %d records behind and no partition has moved for %s (%v)", behind, stuckAfter, err)
		}
		if time.Now().After(deadline) {
			return last, fmt.Errorf("the aggregators are still %d records behind after %s (%v)", behind, d, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func checkWindows(ctx context.Context, pool *pgxpool.Pool, truth map[string]int64, rep *Report) error {
	rows, err := pool.Query(ctx, `SELECT tenant, meter, granularity, window_start, value::bigint FROM usage_windows`)
	if err != nil {
		return err
	}
	got := map[string]int64{}
	for rows.Next() {
		var tenant, metric, g string
		var start time.Time
		var v int64
		if err := rows.Scan(&tenant, &metric, &g, &start, &v); err != nil {
			rows.Close()
			return err
		}
		got[fmt.Sprintf("%s/%s/%s/%d", tenant, metric, g, start.Unix())] = v
	}
	rows.Close()
	for k, v := range truth {
		if got[k] != v {
			rep.WindowDiff++
		}
	}
	for k := range got {
		if _, ok := truth[k]; !ok {
			rep.WindowDiff++
		}
	}
	rep.WindowsChecked = len(truth)
	if rep.WindowDiff > 0 {
		return fmt.Errorf("%d of %d windows differ from the ground truth", rep.WindowDiff, len(truth))
	}
	return nil
}

// waitBilled waits until no push is an intent and every month's claimed
// total reaches its metered total.
func waitBilled(ctx context.Context, pool *pgxpool.Pool, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		var open, behind int
		_ = pool.QueryRow(ctx, `SELECT count(*) FROM billing_pushes WHERE status = 'intent'`).Scan(&open)
		_ = pool.QueryRow(ctx, `SELECT count(*) FROM usage_windows w WHERE group_key = '' AND granularity = 'month' AND value >
			coalesce((SELECT sum(delta) FROM billing_pushes p WHERE p.tenant = w.tenant AND p.metric = w.meter
				AND p.period_start = w.window_start AND p.status <> 'cancelled'), 0)`).Scan(&behind)
		if open == 0 && behind == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("billing not caught up after %s: %d intents open, %d months behind", d, open, behind)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func checkStripe(ctx context.Context, pool *pgxpool.Pool, fake *stripefake.Server, rep *Report) error {
	rows, err := pool.Query(ctx, `SELECT w.tenant, w.meter, w.window_start, w.value::bigint, t.stripe_customer_id
		FROM usage_windows w JOIN tenants t USING (tenant) WHERE w.group_key = '' AND w.granularity = 'month'`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var tenant, metric, customer string
		var start time.Time
		var metered int64
		if err := rows.Scan(&tenant, &metric, &start, &metered, &customer); err != nil {
			return err
		}
		rep.PairsChecked++
		if got := fake.Total(metric, customer, start, windows.Month.End(start)); got != metered {
			rep.StripeDiff++
		}
	}
	if rep.StripeDiff > 0 {
		return fmt.Errorf("%d of %d tenant-metrics differ between Stripe and Postgres", rep.StripeDiff, rep.PairsChecked)
	}
	return rows.Err()
}

func checkNothingInFlight(ctx context.Context, pool *pgxpool.Pool) error {
	deadline := time.Now().Add(time.Minute)
	for {
		var pendingOutbox, usageDLQ, billingDead int
		_ = pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE published_at IS NULL`).Scan(&pendingOutbox)
		_ = pool.QueryRow(ctx, `SELECT count(*) FROM usage_dlq WHERE status = 'pending'`).Scan(&usageDLQ)
		_ = pool.QueryRow(ctx, `SELECT count(*) FROM billing_pushes WHERE status IN ('intent', 'dead')`).Scan(&billingDead)
		if pendingOutbox == 0 && usageDLQ == 0 && billingDead == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still in flight: %d outbox messages, %d usage dead letters, %d open pushes", pendingOutbox, usageDLQ, billingDead)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
