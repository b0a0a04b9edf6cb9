package kafkasuite_test

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/metering/internal/testkit/kafkacluster"
	"github.com/usagemeter/metering/internal/testkit/stack"
	"github.com/usagemeter/metering/internal/topics"
)

// TestOnApacheKafka runs every scenario on each Kafka version, each on a
// fresh three-broker cluster (replication factor 3, min.insync.replicas 2).
func TestOnApacheKafka(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Apache Kafka clusters; not in -short")
	}
	figs := &figures{}
	t.Cleanup(func() {
		for _, l := range figs.lines {
			t.Log(l)
		}
	})
	for _, version := range versions() {
		t.Run(version, func(t *testing.T) {
			// One cluster per version, started by the first scenario that
			// runs; each scenario starts from no pipeline topics, its own
			// database and its own group.
			var c *kafkacluster.Cluster
			scenarios := []struct {
				name string
				run  func(*testing.T, *kafkacluster.Cluster, string, *figures)
			}{
				{"PipelineWithResendsAndForeignProducers", pipelineWithResends},
				{"AggregatorsJoinAndLeave", aggregatorsJoinAndLeave},
				{"LeaderKilledDuringIngest", leaderKilledDuringIngest},
				{"OperatorTopicWithOtherPartitions", operatorTopic},
			}
			owner := t
			for _, sc := range scenarios {
				if !t.Run(sc.name, func(t *testing.T) {
					if c == nil {
						c = startCluster(t, owner, version)
					}
					resetTopics(t, c)
					sc.run(t, c, version, figs)
				}) {
					return // a broken cluster would fail the rest for the wrong reason
				}
			}
			if c != nil {
				c.Stop() // before the next cluster starts: two cores
			}
			t.Run("SASLSSL", func(t *testing.T) { saslSSL(t, version, figs) })
		})
	}
}

// pipelineWithResends: HTTP ingest with 30 % resends, plus events written
// straight to usage.events by librdkafka (kcat, its default partitioner),
// some of them resends of events that came through HTTP. The windows
// equal the ground truth, and Kafka's copy of the group offsets reaches
// the log's end, so lag tools see the real lag.
func pipelineWithResends(t *testing.T, c *kafkacluster.Cluster, version string, figs *figures) {
	started := time.Now()
	e := startPipeline(t, c, "pipeline")
	var stats sendStats
	e.send(context.Background(), 10000, 200, 4, 0.3, &stats)
	kcatEvents := e.produceWithKcat(2000, 0.3)
	e.waitConsumed(2 * time.Minute)
	windows := e.checkTruth()
	e.checkKafkaGroupOffsets(30 * time.Second)
	figs.add("%s pipeline: %d events over HTTP (%d unique in all), %d through kcat, %d windows equal the ground truth, %s",
		version, stats.events.Load(), e.truth.unique(), kcatEvents, windows, time.Since(started).Round(time.Second))
}

// produceWithKcat writes n events (resendShare of them resends, possibly
// of events sent over HTTP) to usage.events with kcat, keyed by tenant,
// with librdkafka's default partitioner and acks=all.
func (e *env) produceWithKcat(n int, resendShare float64) int {
	e.t.Helper()
	kcat, err := exec.LookPath("kcat")
	if err != nil {
		e.t.Fatalf("kcat is missing (Debian's kcat; make test installs it): %v", err)
	}
	var in strings.Builder
	for _, ev := range e.truth.next(n, resendShare) {
		in.WriteString(ev.Tenant)
		in.WriteByte('\t')
		in.Write(ev.AppendJSON(nil))
		in.WriteByte('\n')
	}
	cmd := exec.Command(kcat, "-P", "-b", e.cluster.BrokerList(), "-t", topics.UsageEvents, "-K", "\t",
		"-X", "acks=all", "-X", "enable.idempotence=true")
	cmd.Stdin = strings.NewReader(in.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		e.t.Fatalf("kcat: %v\n%s", err, out)
	}
	return n
}

// checkKafkaGroupOffsets waits until the group's committed offsets in
// Kafka equal the partitions' ends (the aggregator's informational copy).
func (e *env) checkKafkaGroupOffsets(d time.Duration) {
	e.t.Helper()
	ctx := context.Background()
	cl := &kafka.Client{Addr: kafka.TCP(e.cluster.Brokers()...), Timeout: 10 * time.Second}
	deadline := time.Now().Add(d)
	for {
		end, err := endOffsets(ctx, e.cluster.Brokers())
		if err != nil {
			e.t.Fatal(err)
		}
		parts := make([]int, 0, len(end))
		for p := range end {
			parts = append(parts, p)
		}
		resp, err := cl.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: e.group, Topics: map[string][]int{topics.UsageEvents: parts}})
		behind := -1
		if err == nil && resp.Error == nil {
			behind = 0
			for _, p := range resp.Topics[topics.UsageEvents] {
				if p.CommittedOffset != end[p.Partition] {
					behind++
				}
			}
		}
		if behind == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("Kafka's committed offsets of %s do not reach the log's end after %s (%d partitions behind, %v)", e.group, d, behind, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// aggregatorsJoinAndLeave: three aggregator processes in one group while
// events flow; members join, leave cleanly, are SIGKILLed and come back,
// each change a rebalance. Totals stay exact: a partition that moved is
// never counted twice.
func aggregatorsJoinAndLeave(t *testing.T, c *kafkacluster.Cluster, version string, figs *figures) {
	started := time.Now()
	e := startPipeline(t, c, "rebalances")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stats sendStats
	done := e.sendInBackground(ctx, 20000, 200, 2, 0.3, &stats)
	step := func(what string, f func() error) {
		time.Sleep(1500 * time.Millisecond)
		if err := f(); err != nil {
			t.Errorf("%s: %v", what, err)
		}
	}
	changes := 0
	agg := e.st.Procs["aggregator"]
	var second, third *stack.Proc
	step("second aggregator joins", func() (err error) { second, err = e.st.Spawn(ctx, "aggregator-2", "aggregator"); changes++; return })
	step("third aggregator joins", func() (err error) { third, err = e.st.Spawn(ctx, "aggregator-3", "aggregator"); changes++; return })
	step("first aggregator leaves (SIGTERM)", func() error { agg.Stop(); changes++; return nil })
	step("second aggregator is SIGKILLed", func() error { second.Kill(); changes++; return nil })
	step("first aggregator comes back", func() error { changes++; return agg.Start() })
	step("second aggregator comes back", func() error { changes++; return second.Start() })
	step("third aggregator leaves (SIGTERM)", func() error { third.Stop(); changes++; return nil })
	<-done
	if t.Failed() {
		return
	}
	e.waitConsumed(2 * time.Minute)

	// One more member SIGKILLed while events flow: every partition is
	// consumed again, past what was written just after the kill, within
	// SESSION_TIMEOUT + 5 s.
	more := e.sendInBackground(ctx, 6000, 100, 2, 0.3, &stats)
	time.Sleep(time.Second)
	second.Kill()
	changes++
	recovery := e.recovery(time.Now(), time.Minute)
	<-more
	if bound := sessionTimeout + 5*time.Second; recovery > bound {
		t.Errorf("after a member was SIGKILLed every partition was consumed again only after %s, want at most %s", recovery, bound)
	}
	e.waitConsumed(2 * time.Minute)
	windows := e.checkTruth()
	figs.add("%s rebalances: 3 aggregator processes, %d membership changes (joins, SIGTERM, SIGKILL, rejoins) during %d events (%d unique): %d windows exact; after the last SIGKILL every partition moved again in %s (bound SESSION_TIMEOUT %s + 5 s); %s",
		version, changes, stats.events.Load(), e.truth.unique(), windows, recovery.Round(100*time.Millisecond), sessionTimeout, time.Since(started).Round(time.Second))
}

// recovery returns how long after killed every partition's stored offset
// reached the end the partition had half a second after killed; it fails
// the test after limit.
func (e *env) recovery(killed time.Time, limit time.Duration) time.Duration {
	e.t.Helper()
	ctx := context.Background()
	time.Sleep(time.Until(killed.Add(500 * time.Millisecond)))
	target, err := endOffsets(ctx, e.cluster.Brokers())
	if err != nil {
		e.t.Fatal(err)
	}
	for {
		stored, err := e.storedOffsets(ctx)
		if err == nil {
			behind := 0
			for p, end := range target {
				if stored[p] < end {
					behind++
				}
			}
			if behind == 0 {
				return time.Since(killed)
			}
		}
		if time.Since(killed) > limit {
			e.t.Fatalf("partitions not consumed again %s after a member was killed (stored %v, wanted %v)", limit, stored, target)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// leaderKilledDuringIngest: the broker leading usage.events partition 0
// is SIGKILLed while clients send, then restarted. Requests during the
// failover get 202 or 503 with Retry-After (never another answer), every
// request is resent unchanged until it gets 202, and every event counts
// exactly once.
func leaderKilledDuringIngest(t *testing.T, c *kafkacluster.Cluster, version string, figs *figures) {
	started := time.Now()
	e := startPipeline(t, c, "failover")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stats sendStats
	done := e.sendInBackground(ctx, 20000, 100, 4, 0.3, &stats)
	time.Sleep(2 * time.Second)
	leader, err := c.LeaderOf(ctx, topics.UsageEvents, 0)
	if err != nil {
		t.Fatalf("leader of usage.events/0: %v", err)
	}
	before := stats.accepted.Load()
	if err := c.Kill(leader); err != nil {
		t.Fatalf("killing broker %d: %v", leader, err)
	}
	killedAt := time.Now()
	time.Sleep(6 * time.Second)
	during := stats.accepted.Load() - before
	if err := c.Restart(ctx, leader); err != nil {
		t.Fatalf("restarting broker %d: %v", leader, err)
	}
	restartedIn := time.Since(killedAt)
	<-done
	if t.Failed() {
		return
	}
	e.waitConsumed(2 * time.Minute)
	windows := e.checkTruth()
	if n := stats.missingRetryAfter.Load(); n > 0 {
		t.Errorf("%d answers of 503 had no Retry-After", n)
	}
	figs.add("%s leader kill: broker %d (leader of usage.events/0) SIGKILLed mid-ingest, back after %s; %d requests: %d accepted (%d while it was down), %d answered 503 with Retry-After, %d unanswered, all resent until 202; %d events (%d unique), %d windows exact, %s",
		version, leader, restartedIn.Round(100*time.Millisecond), stats.requests.Load(), stats.accepted.Load(), during, stats.unavailable.Load(), stats.noAnswer.Load(),
		stats.events.Load(), e.truth.unique(), windows, time.Since(started).Round(time.Second))
}

// operatorTopic: the operator creates usage.events with 5 partitions (the
// services would make 12) and adds 3 more while events flow. Producers
// and the consumer group (which looks for new partitions every 10 s) pick
// the new partitions up; totals stay exact.
func operatorTopic(t *testing.T, c *kafkacluster.Cluster, version string, figs *figures) {
	started := time.Now()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := c.CreateTopic(ctx, topics.UsageEvents, 5, 3, map[string]string{"min.insync.replicas": "2"}); err != nil {
		t.Fatalf("creating usage.events: %v", err)
	}
	e := startPipeline(t, c, "operator")
	var stats sendStats
	e.send(ctx, 6000, 200, 2, 0.3, &stats)
	cl := &kafka.Client{Addr: kafka.TCP(c.Brokers()...), Timeout: 10 * time.Second}
	resp, err := cl.CreatePartitions(ctx, &kafka.CreatePartitionsRequest{Topics: []kafka.TopicPartitionsConfig{{Name: topics.UsageEvents, Count: 8}}})
	if err != nil {
		t.Fatalf("adding partitions: %v", err)
	}
	if len(resp.Errors) > 0 {
		for _, err := range resp.Errors {
			if err != nil {
				t.Fatalf("adding partitions: %v", err)
			}
		}
	}
	// Ingest's producer learns of the new partitions when its metadata
	// expires (kafka-go's default is 6 s).
	time.Sleep(8 * time.Second)
	e.send(ctx, 8000, 200, 2, 0.3, &stats)
	e.waitConsumed(2 * time.Minute)
	end, err := endOffsets(ctx, c.Brokers())
	if err != nil {
		t.Fatal(err)
	}
	used := 0
	for p, off := range end {
		if p >= 5 && off > 0 {
			used++
		}
	}
	if len(end) != 8 || used == 0 {
		t.Fatalf("usage.events has %d partitions with %d of the new ones used, want 8 with some new ones used: %v", len(end), used, end)
	}
	windows := e.checkTruth()
	figs.add("%s operator topic: usage.events made with 5 partitions, grown to 8 mid-stream (%d new ones written to); %d events (%d unique), %d windows exact, %s",
		version, used, stats.events.Load(), e.truth.unique(), windows, time.Since(started).Round(time.Second))
}
