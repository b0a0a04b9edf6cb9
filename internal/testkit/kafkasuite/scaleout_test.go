package kafkasuite_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
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
)

// scaleOutPartitions is usage.events' partition count in BenchmarkScaleOut:
// divisible by 1, 2 and 3 members, so each member of a group owns as many
// partitions as the others.
const scaleOutPartitions = 6

// BenchmarkScaleOut measures the aggregator's throughput with 1, 2 and 3
// processes in one consumer group on a three-broker Apache Kafka cluster
// (replication 3, min.insync.replicas 2). The log is written once, before
// any aggregator runs (BENCH_SCALEOUT_EVENTS unique events, default
// 400,000, over 10,000 tenants); then for each count a fresh database and
// a fresh group consume all of it. The rate is taken between 10 % and
// 90 % of the log consumed, so start-up and the group's first rebalance
// are left out, and every run ends with the month windows' total equal to
// the sum of the events' values. Metrics: events/s per instance count
// (one process is the baseline of the others).
func BenchmarkScaleOut(b *testing.B) {
	n := 400_000
	if v, err := strconv.Atoi(os.Getenv("BENCH_SCALEOUT_EVENTS")); err == nil && v > 0 {
		n = v
	}
	ctx := context.Background()
	root, err := repoRootPath()
	if err != nil {
		b.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	c, err := kafkacluster.Start(cctx, kafkacluster.Options{Version: kafkacluster.DefaultVersion, Nodes: 3, Root: root, Log: io.Discard})
	cancel()
	if err != nil {
		b.Fatalf("starting Apache Kafka: %v", err)
	}
	b.Cleanup(c.Stop)
	if err := c.CreateTopic(ctx, topics.UsageEvents, scaleOutPartitions, 3, map[string]string{"min.insync.replicas": "2"}); err != nil {
		b.Fatalf("creating %s: %v", topics.UsageEvents, err)
	}

	fake := stripefake.New(stripefake.Config{})
	srv := httptest.NewServer(fake)
	b.Cleanup(func() { srv.Close(); fake.Close() })
	st, err := stack.Start(ctx, stack.Options{Root: root, Work: stacktest.TempWork(b, "scaleout-"), StripeBase: srv.URL, Brokers: c.BrokerList(),
		Env: map[string][]string{"aggregator": {"CONSUMER_GROUP=scale-idle"}}}, io.Discard)
	if err != nil {
		b.Fatalf("starting the pipeline: %v", err)
	}
	b.Cleanup(st.Stop)
	// Only the measured aggregators may use the two cores.
	for _, name := range stack.Services {
		st.Procs[name].Stop()
	}

	total, err := writeScaleOutLog(ctx, c.Brokers(), n)
	if err != nil {
		b.Fatalf("writing the log: %v", err)
	}
	end, err := kafkatest.EndOffsets(ctx, c.Brokers(), topics.UsageEvents)
	if err != nil {
		b.Fatal(err)
	}
	var logLen int64
	for _, off := range end {
		logLen += off
	}
	b.Logf("%d events (value total %d) in %d partitions on Apache Kafka %s, 3 brokers", logLen, total, len(end), kafkacluster.DefaultVersion)

	for _, k := range []int{1, 2, 3} {
		b.Run(fmt.Sprintf("instances=%d", k), func(b *testing.B) {
			for b.Loop() {
				rate := scaleOutRun(b, st, k, logLen, total)
				b.ReportMetric(rate, "events/s")
			}
		})
	}
}

// repoRootPath is the repository root seen from this package.
func repoRootPath() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(wd, "/internal/testkit/kafkasuite"), nil
}

// writeScaleOutLog produces n unique events and returns the sum of their
// values.
func writeScaleOutLog(ctx context.Context, brokers []string, n int) (int64, error) {
	p, err := events.NewProducer(events.ProducerConfig{Brokers: brokers, BatchSize: 5000, Linger: 10 * time.Millisecond})
	if err != nil {
		return 0, err
	}
	defer p.Close()
	rng := rand.New(rand.NewPCG(3, 5))
	now := time.Now().UTC()
	var total int64
	const chunk = 20_000
	for sent := 0; sent < n; sent += chunk {
		batch := make([]events.Event, 0, min(chunk, n-sent))
		for range cap(batch) {
			e := events.Event{ID: events.NewID(), Tenant: fmt.Sprint("tenant-", rng.IntN(10_000)),
				Metric: []string{"api_calls", "tokens"}[rng.IntN(2)], Value: rng.Int64N(1000),
				Time: now.Add(-time.Duration(rng.IntN(3600)) * time.Second)}
			total += e.Value
			batch = append(batch, e)
		}
		if err := p.Emit(ctx, batch...); err != nil {
			return 0, err
		}
	}
	return total, nil
}

// scaleOutRun consumes the whole log with k aggregator processes in a new
// group on a new database and returns their events/s between 10 % and
// 90 % of the log.
func scaleOutRun(b *testing.B, st *stack.Stack, k int, logLen, total int64) float64 {
	b.Helper()
	ctx := context.Background()
	dbName := fmt.Sprintf("scale_%d_%d", k, time.Now().UnixNano())
	admin, err := pgxpool.New(ctx, st.DBURL)
	if err != nil {
		b.Fatal(err)
	}
	defer admin.Close()
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+dbName); err != nil {
		b.Fatal(err)
	}
	dbURL := strings.Replace(st.DBURL, "/metering?", "/"+dbName+"?", 1)
	group := "scale-" + dbName
	procs := make([]*stack.Proc, 0, k)
	defer func() {
		for _, p := range procs {
			p.Stop()
		}
	}()
	for i := range k {
		p, err := st.Spawn(ctx, fmt.Sprintf("%s-%d", group, i), "aggregator",
			"DATABASE_URL="+dbURL, "CONSUMER_GROUP="+group, "SESSION_TIMEOUT=6s", "BATCH_WAIT=20ms")
		if p != nil {
			procs = append(procs, p)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	kc := &kafka.Client{Addr: kafka.TCP(strings.Split(st.Brokers, ",")...), Timeout: 5 * time.Second}
	// The rate is taken from the first sample after the group is stable
	// with all k members (no rebalance left to pay for) and at least 10 %
	// of the log is consumed, to the first sample past 90 %.
	var at10, at90 time.Time
	var done10, done90 int64
	stable := false
	deadline := time.Now().Add(10 * time.Minute)
	for {
		if !stable {
			stable = groupStable(ctx, kc, group, k)
		}
		var consumed int64
		if err := pool.QueryRow(ctx, `SELECT coalesce(sum(next_offset), 0)::bigint FROM consumer_offsets WHERE consumer_group = $1 AND topic = $2`,
			group, topics.UsageEvents).Scan(&consumed); err != nil && !strings.Contains(err.Error(), "does not exist") {
			b.Fatal(err)
		}
		now := time.Now()
		if at90.IsZero() && consumed*10 >= logLen*9 {
			if at10.IsZero() {
				b.Fatalf("%d aggregators consumed 90 %% of the log before their group was stable: raise BENCH_SCALEOUT_EVENTS (now %d)", k, logLen)
			}
			at90, done90 = now, consumed
		}
		if at10.IsZero() && stable && consumed*10 >= logLen {
			at10, done10 = now, consumed
		}
		if consumed >= logLen {
			break
		}
		if now.After(deadline) {
			b.Fatalf("%d aggregators consumed %d of %d events in 10 minutes", k, consumed, logLen)
		}
		time.Sleep(100 * time.Millisecond)
	}
	var counted int64
	if err := pool.QueryRow(ctx, `SELECT coalesce(sum(value), 0)::bigint FROM usage_windows WHERE granularity = 'month' AND group_key = ''`).Scan(&counted); err != nil {
		b.Fatal(err)
	}
	if counted != total {
		b.Fatalf("%d aggregators: the month windows hold %d, the events' values sum to %d", k, counted, total)
	}
	return float64(done90-done10) / at90.Sub(at10).Seconds()
}

// groupStable reports whether group is Stable with k members, each with
// partitions assigned.
func groupStable(ctx context.Context, kc *kafka.Client, group string, k int) bool {
	resp, err := kc.DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{group}})
	if err != nil || len(resp.Groups) != 1 {
		return false
	}
	g := resp.Groups[0]
	if g.Error != nil || g.GroupState != "Stable" || len(g.Members) != k {
		return false
	}
	for _, m := range g.Members {
		owned := 0
		for _, t := range m.MemberAssignments.Topics {
			owned += len(t.Partitions)
		}
		if owned == 0 {
			return false
		}
	}
	return true
}
