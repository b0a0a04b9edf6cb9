package redisbaseline_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/record"
	"github.com/usagemeter/metering/internal/testkit/kafkatest"
	"github.com/usagemeter/metering/internal/testkit/redisbaseline"
	"github.com/usagemeter/metering/internal/topics"
)

const benchBatch = 10000

// benchRecords returns n distinct events over 1000 tenants and two
// metrics in the last two hours, keyed by tenant: the events of the
// aggregator's pipeline-kafka benchmark.
func benchRecords(rng *rand.Rand, n int) []record.Record {
	base := time.Now().UTC().Add(-2 * time.Hour)
	recs := make([]record.Record, n)
	for i := range recs {
		e := events.Event{ID: events.NewID(), Tenant: fmt.Sprint("tenant-", rng.IntN(1000)), Metric: []string{"api_calls", "tokens"}[i%2],
			Value: rng.Int64N(1000), Time: base.Add(time.Duration(rng.IntN(7200)) * time.Second)}
		recs[i] = record.Record{Key: []byte(e.Tenant), Value: e.AppendJSON(nil)}
	}
	return recs
}

// BenchmarkRedisBaseline is the baseline beside the aggregator's
// pipeline-kafka benchmark: the same backlog (b.N batches of 10,000
// events, 4 partitions, the in-process broker) consumed by one group
// member counting into a private redis-server with Debian's default
// persistence, in batches of 10,000, until the group's committed offsets
// reach the log ends. It also reports what Redis holds per event
// (used_memory, the dedup keys and the counters).
func BenchmarkRedisBaseline(b *testing.B) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	srv := redisServer(b, redisbaseline.Snapshots)
	kc := kafkatest.Start(b, kfake.GroupMinSessionTimeout(100*time.Millisecond))
	kc.CreateTopic(b, topics.UsageEvents, redisbaseline.Partitions)
	w := kafkatest.NewWriter(kc.Brokers(), topics.UsageEvents)
	defer w.Close()
	total := b.N * benchBatch
	for sent := 0; sent < total; sent += benchBatch {
		if err := w.Write(ctx, benchRecords(rng, benchBatch)...); err != nil {
			b.Fatal(err)
		}
	}
	before := usedMemory(b, srv.Addr)
	c := redisbaseline.NewConsumer(redisbaseline.ConsumerConfig{Brokers: kc.Brokers(), Topic: topics.UsageEvents, Group: "bench",
		RedisAddr: srv.Addr, BatchSize: benchBatch, BatchWait: 100 * time.Millisecond, SessionTimeout: time.Second})
	defer c.Close()
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	b.ResetTimer()
	go func() { done <- c.Run(cctx) }()
	for {
		lag, err := redisbaseline.Lag(ctx, kc.Addr(), "bench", topics.UsageEvents, redisbaseline.Partitions)
		if err == nil && lag == 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	b.StopTimer()
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(total)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(usedMemory(b, srv.Addr)-before)/float64(total), "redis-bytes/event")
}

func usedMemory(tb testing.TB, addr string) int64 {
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	info, err := rdb.Info(context.Background(), "memory").Result()
	if err != nil {
		tb.Fatal(err)
	}
	for _, l := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "used_memory:"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				tb.Fatal(err)
			}
			return n
		}
	}
	tb.Fatal("no used_memory in INFO memory")
	return 0
}
