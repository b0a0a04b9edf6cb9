// Package chaos runs the whole pipeline as separate processes and breaks
// it while it works: SIGKILLs of ingest, the aggregator and the biller at
// random moments, one restart of the Kafka broker (from its data dir) and
// one of Postgres, 30 % duplicate resends and 10 % Stripe faults. Then it
// proves the invariants: every window equals the ground truth, Stripe's
// totals equal Postgres's after the DLQ is replayed, nothing is left in
// flight.
//
// Invariant: it judges the system only by its outputs (windows, Stripe
// totals, queues) against a ground truth it keeps itself.
package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/stack"
	"github.com/usagemeter/metering/internal/stripefake"
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
	return fmt.Sprintf(`chaos run in %s
  events: %d sent, %d unique, %d resends, %d requests retried after failures
  kills: %d (%v); broker restarts: %d; Postgres restarts: %d
  Stripe faults injected: %d (%v); billing DLQ replayed: %d
  windows checked: %d, differing from the ground truth: %d
  tenant-metrics checked against Stripe: %d, differing: %d`,
		r.Elapsed.Round(time.Second), r.Sent, r.Unique, r.Resent, r.Retried, kills, r.Kills, r.BrokerRestarts, r.PostgresRestarts,
		faults, r.Faults, r.DLQReplayed, r.WindowsChecked, r.WindowDiff, r.PairsChecked, r.StripeDiff)
}

const adminKey = stack.AdminKey

var chaosMetrics = []string{"api_calls", "tokens", "bytes"}

// Run performs a chaos run and returns its report; err is non-nil when an
// invariant does not hold (the report says which).
func Run(ctx context.Context, cfg Config, out io.Writer) (Report, error) {
	started := time.Now()
	rep := Report{Kills: map[string]int{}}
	rng := rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0xc4a05))

	// Stripe: the test server, in this process, with faults.
	fake := stripefake.New(stripefake.Config{FaultRate: cfg.FaultRate, Seed: cfg.Seed})
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
	services := st.Procs
	ingestURL := st.URLs["ingest"]
	if err := setup(ctx, st, cfg.Tenants); err != nil {
		return rep, err
	}

	// Load, with the killer running beside it.
	truth := map[string]int64{} // tenant/metric/granularity/start → value
	var loadDone atomic.Bool
	var killerErr, restartErr error
	var killerWG sync.WaitGroup
	killerWG.Go(func() {
		names := []string{"ingest", "aggregator", "biller"}
		krng := rand.New(rand.NewPCG(cfg.Seed^1, cfg.Seed^2))
		kills := 0
		for !loadDone.Load() || kills < cfg.MinKills {
			time.Sleep(time.Duration(300+krng.IntN(900)) * time.Millisecond)
			n := names[krng.IntN(len(names))]
			services[n].Kill()
			rep.Kills[n]++
			kills++
			if err := services[n].Start(); err != nil {
				killerErr = err
				return
			}
		}
	})
	fmt.Fprintf(out, "sending %d events (%.0f%% resends) while killing services...\n", cfg.Events, cfg.DupShare*100)
	err = load(ctx, cfg, rng, ingestURL, truth, &rep, out, func(fraction float64) {
		switch {
		case rep.BrokerRestarts == 0 && fraction >= 0.4:
			fmt.Fprintln(out, "\n  restarting the Kafka broker (SIGKILL, same data dir)")
			st.Broker.Kill()
			rep.BrokerRestarts++
			if err := st.Broker.Start(); err != nil {
				restartErr = err
			}
		case rep.PostgresRestarts == 0 && fraction >= 0.7:
			fmt.Fprintln(out, "\n  restarting Postgres")
			if err := st.RestartPostgres(); err != nil {
				restartErr = err
			}
			rep.PostgresRestarts++
		}
	})
	loadDone.Store(true)
	killerWG.Wait()
	if err != nil {
		return rep, err
	}
	if err := errors.Join(killerErr, restartErr); err != nil {
		return rep, err
	}
	for _, n := range stack.Services {
		if err := stack.WaitHTTP(ctx, st.URLs[n]+"/healthz", time.Minute); err != nil {
			return rep, fmt.Errorf("%s after the chaos: %w", n, err)
		}
	}

	pool, err := pgxpool.New(ctx, st.DBURL)
	if err != nil {
		return rep, err
	}
	defer pool.Close()
	fmt.Fprintln(out, "\nwaiting for the aggregator to drain usage.events...")
	if err := WaitConsumed(ctx, pool, st.Brokers, 10*time.Minute); err != nil {
		return rep, err
	}
	if err := checkWindows(ctx, pool, truth, &rep); err != nil {
		return rep, err
	}

	fmt.Fprintln(out, "waiting for the biller to bring Stripe up to date...")
	fake.SetFaultRate(0) // the cause is fixed; what failed waits in the DLQ
	if err := waitBilled(ctx, pool, 5*time.Minute); err != nil {
		return rep, err
	}
	var dead int
	_ = pool.QueryRow(ctx, `SELECT count(*) FROM billing_pushes WHERE status = 'dead'`).Scan(&dead)
	if dead > 0 {
		fmt.Fprintf(out, "replaying %d dead-lettered pushes...\n", dead)
		replay := exec.Command(st.Bin("biller"), "dlq", "replay", "--all", "--actor", "chaos")
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
	rep.Elapsed = time.Since(started)
	return rep, nil
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

// load sends the events in batches from four workers, each batch retried
// (same ids) until it gets 202; at is called with the fraction sent.
func load(ctx context.Context, cfg Config, rng *rand.Rand, ingestURL string, truth map[string]int64, rep *Report, out io.Writer, at func(float64)) error {
	const batch = 500
	seen := map[string]bool{}
	var sent []events.Event
	now := time.Now().UTC()
	bodies := make(chan []byte, 4)
	var retried atomic.Int64
	var wg sync.WaitGroup
	var firstErr error
	var errOnce sync.Once
	client := &http.Client{Timeout: 10 * time.Second}
	for range 4 {
		wg.Go(func() {
			for body := range bodies {
				for attempt := 0; ; attempt++ {
					if attempt > 600 {
						errOnce.Do(func() { firstErr = errors.New("a batch was not accepted after 600 tries") })
						break
					}
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

// Lag returns how many records of usage.events the aggregator has not
// committed yet.
func Lag(ctx context.Context, pool *pgxpool.Pool, brokers string) (int64, error) {
	conn, err := kafka.DialContext(ctx, "tcp", brokers)
	if err != nil {
		return 0, err
	}
	parts, err := conn.ReadPartitions(topics.UsageEvents)
	conn.Close()
	if err != nil {
		return 0, err
	}
	var end int64
	for _, p := range parts {
		lc, err := kafka.DialLeader(ctx, "tcp", brokers, topics.UsageEvents, p.ID)
		if err != nil {
			return 0, err
		}
		last, err := lc.ReadLastOffset()
		lc.Close()
		if err != nil {
			return 0, err
		}
		end += last
	}
	var consumed int64
	if err := pool.QueryRow(ctx, `SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets WHERE topic = $1`, topics.UsageEvents).Scan(&consumed); err != nil {
		return 0, err
	}
	return end - consumed, nil
}

// WaitConsumed waits until the aggregator's stored offsets reach every
// partition's end of usage.events.
func WaitConsumed(ctx context.Context, pool *pgxpool.Pool, brokers string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		lag, err := Lag(ctx, pool, brokers)
		if err == nil && lag == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the aggregator is still %d records behind after %s (%v)", lag, d, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func checkWindows(ctx context.Context, pool *pgxpool.Pool, truth map[string]int64, rep *Report) error {
	rows, err := pool.Query(ctx, `SELECT tenant, metric, granularity, window_start, value::bigint FROM usage_windows`)
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
		_ = pool.QueryRow(ctx, `SELECT count(*) FROM usage_windows w WHERE granularity = 'month' AND value >
			coalesce((SELECT sum(delta) FROM billing_pushes p WHERE p.tenant = w.tenant AND p.metric = w.metric
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
	rows, err := pool.Query(ctx, `SELECT w.tenant, w.metric, w.window_start, w.value::bigint, t.stripe_customer_id
		FROM usage_windows w JOIN tenants t USING (tenant) WHERE w.granularity = 'month'`)
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
