package kafkasuite_test

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
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/testkit/kafkacluster"
	"github.com/usagemeter/metering/internal/testkit/kafkatest"
	"github.com/usagemeter/metering/internal/testkit/stack"
	"github.com/usagemeter/metering/internal/testkit/stack/stacktest"
	"github.com/usagemeter/metering/internal/testkit/stripefake"
	"github.com/usagemeter/metering/internal/topics"
	"github.com/usagemeter/metering/internal/windows"
)

// sessionTimeout is the aggregators' SESSION_TIMEOUT in the suite.
const sessionTimeout = 6 * time.Second

// versions are the Apache Kafka releases the suite runs on.
func versions() []string {
	if v := strings.Fields(os.Getenv("KAFKA_SUITE_VERSIONS")); len(v) > 0 {
		return v
	}
	return []string{kafkacluster.DefaultVersion, "3.9.1"}
}

// figures collects what each scenario did, printed at the end of the
// test so that a run's log carries them.
type figures struct {
	mu    sync.Mutex
	lines []string
}

func (f *figures) add(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lines = append(f.lines, fmt.Sprintf(format, args...))
}

// env is one scenario's world: a three-broker cluster and the pipeline's
// services as processes on a private Postgres.
type env struct {
	t       *testing.T
	cluster *kafkacluster.Cluster
	st      *stack.Stack
	pool    *pgxpool.Pool
	truth   *truth
	group   string // the aggregators' consumer group
	// ingestURL is read by the senders while the test spawns processes
	// (which adds to the stack's maps), so it is kept apart.
	ingestURL string
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// startCluster starts a three-broker cluster of version; owner's cleanup
// stops it.
func startCluster(t, owner *testing.T, version string) *kafkacluster.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	started := time.Now()
	c, err := kafkacluster.Start(ctx, kafkacluster.Options{Version: version, Nodes: 3, Root: repoRoot(t), Log: io.Discard})
	if err != nil {
		t.Fatalf("starting Apache Kafka %s: %v", version, err)
	}
	owner.Cleanup(c.Stop)
	t.Logf("Apache Kafka %s, 3 brokers (%s), up in %s", version, c.BrokerList(), time.Since(started).Round(100*time.Millisecond))
	return c
}

// resetTopics deletes the pipeline's topics, so that a scenario starts
// from none, and waits until the brokers no longer list them.
func resetTopics(t *testing.T, c *kafkacluster.Cluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cl := &kafka.Client{Addr: kafka.TCP(c.Brokers()...), Timeout: 10 * time.Second}
	for {
		meta, err := cl.Metadata(ctx, &kafka.MetadataRequest{})
		if err != nil {
			t.Fatalf("metadata: %v", err)
		}
		var left []string
		for _, tp := range meta.Topics {
			if slices.Contains(topics.All, tp.Name) {
				left = append(left, tp.Name)
			}
		}
		if len(left) == 0 {
			return
		}
		if _, err := cl.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: left}); err != nil {
			t.Logf("deleting %v: %v", left, err)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the pipeline's topics %v are still there after a minute", left)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// startPipeline starts the services on the cluster. Operator-made topics,
// if any, must exist before: services create only missing ones.
func startPipeline(t *testing.T, c *kafkacluster.Cluster, group string) *env {
	t.Helper()
	return startPipelineOn(t, c, group, c.BrokerList(), nil)
}

// startPipelineOn starts the services with KAFKA_BROKERS=brokers (one of
// the cluster's listeners) and kafkaEnv added to every service's
// settings. The test's own checks use the cluster's PLAINTEXT listener.
func startPipelineOn(t *testing.T, c *kafkacluster.Cluster, group, brokers string, kafkaEnv []string) *env {
	t.Helper()
	ctx := context.Background()
	fake := stripefake.New(stripefake.Config{})
	srv := httptest.NewServer(fake)
	t.Cleanup(func() { srv.Close(); fake.Close() })
	work := stacktest.TempWork(t, "kafkasuite-")
	var log bytes.Buffer
	st, err := stack.Start(ctx, stack.Options{Root: repoRoot(t), Work: work, StripeBase: srv.URL, Brokers: brokers,
		Env: map[string][]string{
			"ingest":     append([]string{"PUBLISH_TIMEOUT=4s"}, kafkaEnv...),
			"aggregator": append([]string{"SESSION_TIMEOUT=" + sessionTimeout.String(), "BATCH_SIZE=500", "CONSUMER_GROUP=" + group}, kafkaEnv...),
			// The biller judges period completeness on the aggregator's group.
			"biller": append([]string{"CONSUMER_GROUP=" + group}, kafkaEnv...),
		}}, &log)
	if err != nil {
		t.Fatalf("starting the pipeline: %v\n%s", err, log.String())
	}
	t.Cleanup(func() {
		if t.Failed() {
			if b, err := os.ReadFile(st.LogFile); err == nil {
				t.Logf("services' log (last 6 KiB):\n%s", tail(b, 6<<10))
			}
		}
		st.Stop()
	})
	pool, err := pgxpool.New(ctx, st.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := stack.WaitHTTP(ctx, st.URLs["aggregator"]+"/readyz", 2*time.Minute); err != nil {
		t.Fatalf("aggregator: %v", err)
	}
	return &env{t: t, cluster: c, st: st, pool: pool, truth: newTruth(), group: group, ingestURL: st.URLs["ingest"]}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// truth is the ground truth the windows must equal: unique events only.
type truth struct {
	mu   sync.Mutex
	seen map[string]bool
	sums map[string]int64 // tenant/metric/granularity/start → value
	sent []events.Event
	rng  *rand.Rand
}

func newTruth() *truth {
	return &truth{seen: map[string]bool{}, sums: map[string]int64{}, rng: rand.New(rand.NewPCG(7, 9))}
}

func windowKey(tenant, metric string, g windows.Granularity, start time.Time) string {
	return fmt.Sprintf("%s/%s/%s/%d", tenant, metric, g, start.Unix())
}

// next returns n events, about resendShare of them resends of events
// already made (same id, same payload), and records them.
func (tr *truth) next(n int, resendShare float64) []events.Event {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	now := time.Now().UTC()
	out := make([]events.Event, 0, n)
	for range n {
		if len(tr.sent) > 0 && tr.rng.Float64() < resendShare {
			out = append(out, tr.sent[tr.rng.IntN(len(tr.sent))])
			continue
		}
		e := events.Event{ID: events.NewID(), Tenant: fmt.Sprint("tenant-", tr.rng.IntN(40)),
			Metric: []string{"api_calls", "tokens"}[tr.rng.IntN(2)], Value: tr.rng.Int64N(1000),
			Time: now.Add(-time.Duration(tr.rng.IntN(3600)) * time.Second)}
		tr.sent = append(tr.sent, e)
		tr.seen[e.Tenant+"\x00"+e.ID] = true
		for _, g := range windows.All {
			tr.sums[windowKey(e.Tenant, e.Metric, g, g.Start(e.Time))] += e.Value
		}
		out = append(out, e)
	}
	return out
}

func (tr *truth) unique() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return len(tr.seen)
}

// sendStats counts what ingest answered.
type sendStats struct {
	requests, accepted, retried, unavailable, noAnswer atomic.Int64
	missingRetryAfter                                  atomic.Int64
	events                                             atomic.Int64
}

// send posts batches of events to ingest from workers until ctx ends or
// total events were sent; every batch is resent unchanged (same ids) until
// it gets 202, as the API asks of clients. Any answer other than 202 or
// 503 fails the test, and so does a 503 without Retry-After.
func (e *env) send(ctx context.Context, total, batch, workers int, resendShare float64, stats *sendStats) {
	e.t.Helper()
	bodies := make(chan []byte)
	client := &http.Client{Timeout: 15 * time.Second}
	var wg sync.WaitGroup
	var failure atomic.Value
	for range workers {
		wg.Go(func() {
			for body := range bodies {
				if err := e.post(ctx, client, body, stats); err != nil {
					failure.CompareAndSwap(nil, err)
				}
			}
		})
	}
	for sent := 0; sent < total && ctx.Err() == nil && failure.Load() == nil; sent += batch {
		evs := e.truth.next(min(batch, total-sent), resendShare)
		stats.events.Add(int64(len(evs)))
		bodies <- events.AppendArray(nil, evs)
	}
	close(bodies)
	wg.Wait()
	if err, _ := failure.Load().(error); err != nil {
		e.t.Fatal(err)
	}
}

// sendInBackground is send in its own goroutine; the channel closes when
// it is done.
func (e *env) sendInBackground(ctx context.Context, total, batch, workers int, resendShare float64, stats *sendStats) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.send(ctx, total, batch, workers, resendShare, stats)
	}()
	return done
}

func (e *env) post(ctx context.Context, client *http.Client, body []byte, stats *sendStats) error {
	deadline := time.Now().Add(3 * time.Minute)
	for attempt := 0; ; attempt++ {
		if time.Now().After(deadline) {
			return errors.New("a batch was not accepted within 3 minutes")
		}
		if attempt > 0 {
			stats.retried.Add(1)
			time.Sleep(200 * time.Millisecond)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.ingestURL+"/v1/events", bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+stack.AdminKey)
		req.Header.Set("Content-Type", "application/json")
		stats.requests.Add(1)
		resp, err := client.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			stats.noAnswer.Add(1)
			continue
		}
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusAccepted:
			stats.accepted.Add(1)
			return nil
		case http.StatusServiceUnavailable:
			stats.unavailable.Add(1)
			if resp.Header.Get("Retry-After") == "" {
				stats.missingRetryAfter.Add(1)
			}
		default:
			return fmt.Errorf("POST /v1/events answered %d: %s", resp.StatusCode, msg)
		}
	}
}

// endOffsets returns the partitions' end offsets of usage.events.
func endOffsets(ctx context.Context, brokers []string) (map[int]int64, error) {
	return kafkatest.EndOffsets(ctx, brokers, topics.UsageEvents)
}

// storedOffsets returns the aggregator's next offsets from Postgres.
func (e *env) storedOffsets(ctx context.Context) (map[int]int64, error) {
	rows, err := e.pool.Query(ctx, `SELECT partition, next_offset FROM consumer_offsets WHERE topic = $1`, topics.UsageEvents)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[int]int64{}
	for rows.Next() {
		var p int
		var next int64
		if err := rows.Scan(&p, &next); err != nil {
			return nil, err
		}
		out[p] = next
	}
	return out, rows.Err()
}

// waitConsumed waits until every partition's stored offset reaches the
// partition's end; it fails the test after d.
func (e *env) waitConsumed(d time.Duration) {
	e.t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(d)
	var last string
	for {
		end, err := endOffsets(ctx, e.cluster.Brokers())
		if err == nil {
			stored, serr := e.storedOffsets(ctx)
			if serr == nil {
				behind := 0
				for p, off := range end {
					if stored[p] < off || (off > 0 && stored[p] == 0) {
						behind++
					}
				}
				if behind == 0 {
					return
				}
				last = fmt.Sprintf("%d partitions behind: end %v, stored %v", behind, end, stored)
			} else {
				last = serr.Error()
			}
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("the aggregator has not consumed usage.events after %s: %s", d, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// checkTruth compares every window with the ground truth and the ledger
// with the number of unique events.
func (e *env) checkTruth() int {
	e.t.Helper()
	ctx := context.Background()
	rows, err := e.pool.Query(ctx, `SELECT tenant, meter, granularity, window_start, value::bigint FROM usage_windows`)
	if err != nil {
		e.t.Fatal(err)
	}
	got := map[string]int64{}
	for rows.Next() {
		var tenant, metric, g string
		var start time.Time
		var v int64
		if err := rows.Scan(&tenant, &metric, &g, &start, &v); err != nil {
			e.t.Fatal(err)
		}
		got[windowKey(tenant, metric, windows.Granularity(g), start)] = v
	}
	rows.Close()
	e.truth.mu.Lock()
	defer e.truth.mu.Unlock()
	diff := 0
	for k, want := range e.truth.sums {
		if got[k] != want {
			diff++
			if diff <= 10 {
				e.t.Errorf("window %s = %d, want %d", k, got[k], want)
			}
		}
	}
	for k, v := range got {
		if _, ok := e.truth.sums[k]; !ok {
			diff++
			e.t.Errorf("unexpected window %s = %d", k, v)
		}
	}
	var ids int
	if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM ledger`).Scan(&ids); err != nil {
		e.t.Fatal(err)
	}
	if ids != len(e.truth.seen) {
		e.t.Errorf("the ledger holds %d ids, want %d unique events", ids, len(e.truth.seen))
	}
	if diff > 0 {
		e.t.Fatalf("%d of %d windows differ from the ground truth", diff, len(e.truth.sums))
	}
	return len(e.truth.sums)
}
