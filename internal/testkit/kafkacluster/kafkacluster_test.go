package kafkacluster_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/metering/internal/testkit/kafkacluster"
)

// These tests run real brokers: they need Java and Maven (or the jars in
// the cache already) and fail without them; -short skips them.

// TestThreeNodes: a 3-node 4.1.1 cluster keeps taking acks=all writes to a
// partition with three replicas and min.insync.replicas=2 when its leader
// is killed, takes the node back, and Stop leaves none of its JVMs behind.
func TestThreeNodes(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node Kafka cluster")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	c := start(ctx, t, kafkacluster.Options{Version: "4.1.1", Nodes: 3})
	pids := newPIDs(c)

	if got := c.Brokers(); len(got) != 3 || c.BrokerList() != strings.Join(got, ",") {
		t.Fatalf("Brokers() = %v, BrokerList() = %q", got, c.BrokerList())
	}
	if got := running(c); len(got) != 3 {
		t.Fatalf("PIDs() = %v, want 3 running JVMs", c.PIDs())
	}

	const topic = "orders"
	if err := c.CreateTopic(ctx, topic, 3, 3, map[string]string{"min.insync.replicas": "2"}); err != nil {
		t.Fatal(err)
	}
	if err := c.CreateTopic(ctx, topic, 3, 3, nil); !errors.Is(err, kafka.TopicAlreadyExists) {
		t.Fatalf("creating %s again: %v, want TopicAlreadyExists", topic, err)
	}
	p0 := partitionMeta(ctx, t, c, topic, 0)
	if len(p0.Replicas) != 3 || len(p0.Isr) != 3 {
		t.Fatalf("%s/0: replicas %v, in sync %v; want 3 of each", topic, p0.Replicas, p0.Isr)
	}
	if got := minISR(ctx, t, c, topic); got != "2" {
		t.Fatalf("%s min.insync.replicas = %q, want 2", topic, got)
	}

	w := writer(t, c, topic)
	w.Balancer = partitionZero{}
	before := values("before", 50)
	if err := w.WriteMessages(ctx, messages(before)...); err != nil {
		t.Fatalf("producing to a healthy cluster: %v", err)
	}
	if got := readPartition(ctx, t, c.Brokers(), topic, 0, before[len(before)-1]); !slices.Equal(got, before) {
		t.Fatalf("read back %v, want %v", got, before)
	}

	leader, err := c.LeaderOf(ctx, topic, 0)
	if err != nil {
		t.Fatal(err)
	}
	if p0.Leader.ID != leader {
		t.Fatalf("LeaderOf = %d, metadata says %d", leader, p0.Leader.ID)
	}
	killed := c.PIDs()[leader]
	killedAt := time.Now()
	if err := c.Kill(leader); err != nil {
		t.Fatal(err)
	}
	if alive(killed) {
		t.Fatalf("node %d's JVM %d still runs after Kill", leader, killed)
	}
	if c.PIDs()[leader] != 0 {
		t.Fatalf("PIDs() = %v after killing node %d", c.PIDs(), leader)
	}
	if err := c.Kill(leader); err == nil {
		t.Fatal("killing a killed node: no error")
	}

	// acks=all with two of three replicas in sync: the writes go on once a
	// new leader is elected.
	newLeader := waitFor(ctx, t, "a new leader of partition 0", func() (int, bool) {
		l, err := c.LeaderOf(ctx, topic, 0)
		return l, err == nil && l != leader
	})
	t.Logf("node %d took over partition 0 from killed node %d after %v", newLeader, leader, time.Since(killedAt).Round(time.Millisecond))
	after := values("after", 50)
	waitFor(ctx, t, "a write after the leader moved", func() (struct{}, bool) {
		wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		err := w.WriteMessages(wctx, messages(after)...)
		if err != nil {
			t.Logf("producing with node %d down: %v (retrying)", leader, err)
		}
		return struct{}{}, err == nil
	})
	t.Logf("writes succeed again %v after the kill", time.Since(killedAt).Round(time.Millisecond))

	if err := c.Restart(ctx, leader); err != nil {
		t.Fatal(err)
	}
	pids.record(c)
	if got := running(c); len(got) != 3 {
		t.Fatalf("PIDs() = %v after Restart, want 3 running JVMs", c.PIDs())
	}
	waitFor(ctx, t, fmt.Sprintf("node %d back in sync", leader), func() (struct{}, bool) {
		return struct{}{}, len(partitionMeta(ctx, t, c, topic, 0).Isr) == 3
	})
	got := readPartition(ctx, t, c.Brokers(), topic, 0, after[len(after)-1])
	// A write retried after a failure may land twice: every value must
	// be there, in order, and nothing else.
	if want := append(slices.Clone(before), after...); !slices.Equal(firstOccurrences(got), want) {
		t.Fatalf("read back %v, want %v", got, want)
	}

	consumeWithGroup(ctx, t, c, "orders-group")

	all := pids.all()
	dir := c.Dir()
	c.Stop()
	for _, pid := range all {
		if alive(pid) {
			t.Errorf("JVM %d still runs after Stop", pid)
		}
	}
	if slices.ContainsFunc(c.PIDs(), func(p int) bool { return p != 0 }) {
		t.Errorf("PIDs() = %v after Stop", c.PIDs())
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary directory %s after Stop: %v", dir, err)
	}
}

// TestKafka39 runs one 3.9.1 node: produce, consume, and a kafka-go
// ConsumerGroup that joins, commits and resumes from its commit, so our
// client's group protocol is proven on both pinned releases.
func TestKafka39(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Kafka broker")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	c := start(ctx, t, kafkacluster.Options{Version: "3.9.1", Nodes: 1})
	pids := newPIDs(c)
	if c.Version() != "3.9.1" || len(c.Brokers()) != 1 {
		t.Fatalf("Version() = %s, Brokers() = %v", c.Version(), c.Brokers())
	}
	if l, err := c.LeaderOf(ctx, "no-such-topic", 0); !errors.Is(err, kafka.UnknownTopicOrPartition) {
		t.Fatalf("LeaderOf a missing topic = %d, %v; want UnknownTopicOrPartition", l, err)
	}
	consumeWithGroup(ctx, t, c, "usage-group")

	all := pids.all()
	c.Stop()
	c.Stop() // a second Stop does nothing
	if err := c.Restart(ctx, 0); err == nil {
		t.Error("Restart after Stop: no error")
	}
	if err := c.Kill(0); err == nil {
		t.Error("Kill after Stop: no error")
	}
	for _, pid := range all {
		if alive(pid) {
			t.Errorf("JVM %d still runs after Stop", pid)
		}
	}
}

// TestKeptDir: a cluster started on a given Dir keeps it after Stop, and
// a second Start on it resumes the same cluster, ports and data.
func TestKeptDir(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Kafka broker twice")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	dir := t.TempDir()
	c := start(ctx, t, kafkacluster.Options{Dir: dir})
	if c.Version() != kafkacluster.DefaultVersion || c.Dir() != dir {
		t.Fatalf("Version() = %s, Dir() = %s", c.Version(), c.Dir())
	}
	if err := c.CreateTopic(ctx, "kept", 1, 1, nil); err != nil {
		t.Fatal(err)
	}
	if err := writer(t, c, "kept").WriteMessages(ctx, messages([]string{"one"})...); err != nil {
		t.Fatal(err)
	}
	brokers := c.BrokerList()
	c.Stop()
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("Stop removed the given Dir: %v", err)
	}

	if other, err := kafkacluster.Start(ctx, kafkacluster.Options{Dir: dir, Nodes: 3}); err == nil {
		other.Stop()
		t.Fatal("Start of 3 nodes on a 1-node cluster's Dir: no error")
	}
	c = start(ctx, t, kafkacluster.Options{Dir: dir})
	if c.BrokerList() != brokers {
		t.Fatalf("resumed on %s, first ran on %s", c.BrokerList(), brokers)
	}
	if got := readPartition(ctx, t, c.Brokers(), "kept", 0, "one"); !slices.Equal(got, []string{"one"}) {
		t.Fatalf("resumed cluster holds %v", got)
	}
	if _, err := kafkacluster.Start(ctx, kafkacluster.Options{Dir: dir}); err == nil {
		t.Fatal("a second Start on a running cluster's Dir: no error")
	}
}

// TestStartRejects checks the options Start refuses before running
// anything.
func TestStartRejects(t *testing.T) {
	for _, o := range []kafkacluster.Options{{Nodes: 2}, {Nodes: -1}, {Version: "4.1"}, {Version: "../4.1.1"},
		{SASLSSL: &kafkacluster.SASLSSL{Users: map[string]string{"u": "p"}}},
		{SASLSSL: &kafkacluster.SASLSSL{CertPEM: []byte("c"), KeyPEM: []byte("k")}},
		{SASLSSL: &kafkacluster.SASLSSL{CertPEM: []byte("c"), KeyPEM: []byte("k"), Users: map[string]string{"u": "p,assword=x]"}}},
	} {
		if c, err := kafkacluster.Start(context.Background(), o); err == nil {
			c.Stop()
			t.Errorf("Start(%+v): no error", o)
		}
	}
}

// consumeWithGroup produces to a new 2-partition topic, consumes it all in
// a kafka-go ConsumerGroup generation and commits; a second generation of
// the same group must start at the commits and see only what came after.
func consumeWithGroup(ctx context.Context, t *testing.T, c *kafkacluster.Cluster, group string) {
	t.Helper()
	topic := group + "-topic"
	if err := c.CreateTopic(ctx, topic, 2, len(c.Brokers()), nil); err != nil {
		t.Fatal(err)
	}
	w := writer(t, c, topic)
	first := values("first", 40)
	if err := w.WriteMessages(ctx, messages(first)...); err != nil {
		t.Fatalf("producing to %s: %v", topic, err)
	}
	got, committed := generation(ctx, t, c.Brokers(), group, topic, len(first), nil)
	if !sameSet(got, first) {
		t.Fatalf("group %s read %v, want %v", group, got, first)
	}

	second := values("second", 10)
	if err := w.WriteMessages(ctx, messages(second)...); err != nil {
		t.Fatalf("producing to %s: %v", topic, err)
	}
	got, _ = generation(ctx, t, c.Brokers(), group, topic, len(second), committed)
	if !sameSet(got, second) {
		t.Fatalf("group %s resumed with %v, want only %v", group, got, second)
	}
}

// generation joins group, reads n messages from its assigned partitions
// (all of them: it is the only member), commits what it read and leaves.
// It returns the values and the offsets it committed; each partition must
// start at committed (nil: a group with no commits yet).
func generation(ctx context.Context, t *testing.T, brokers []string, group, topic string, n int, committed map[int]int64) ([]string, map[int]int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	g, err := kafka.NewConsumerGroup(kafka.ConsumerGroupConfig{
		ID: group, Brokers: brokers, Topics: []string{topic}, StartOffset: kafka.FirstOffset,
		SessionTimeout: 10 * time.Second, HeartbeatInterval: time.Second, JoinGroupBackoff: 500 * time.Millisecond,
	})
	if err != nil {
		t.Fatalf("consumer group %s: %v", group, err)
	}
	defer g.Close()
	// The group's first join waits for the broker to create
	// __consumer_offsets and load the group: Next reports retriable errors
	// (GroupCoordinatorNotAvailable, GroupLoadInProgress) until then, and
	// the group retries by itself.
	gen := waitFor(ctx, t, "joining group "+group, func() (*kafka.Generation, bool) {
		gen, err := g.Next(ctx)
		if err != nil {
			t.Logf("joining consumer group %s: %v", group, err)
			if ke, ok := errors.AsType[kafka.Error](err); !ok || !ke.Temporary() {
				t.Fatalf("joining consumer group %s: %v", group, err)
			}
		}
		return gen, err == nil
	})
	assigned := gen.Assignments[topic]
	if len(assigned) != 2 {
		t.Fatalf("group %s generation %d was assigned %v, want both partitions", group, gen.ID, assigned)
	}
	type record struct {
		partition int
		offset    int64
		value     string
	}
	records := make(chan record)
	var wg sync.WaitGroup
	for _, a := range assigned {
		want, ok := committed[a.ID]
		if !ok {
			want = kafka.FirstOffset
		}
		if a.Offset != want {
			t.Fatalf("group %s generation %d: partition %d starts at %d, want %d", group, gen.ID, a.ID, a.Offset, want)
		}
		wg.Add(1)
		gen.Start(func(ctx context.Context) {
			defer wg.Done()
			r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: a.ID, MaxWait: 100 * time.Millisecond})
			defer r.Close()
			if err := r.SetOffset(a.Offset); err != nil {
				t.Errorf("seeking partition %d: %v", a.ID, err)
				return
			}
			for {
				m, err := r.ReadMessage(ctx)
				if err != nil {
					return
				}
				select {
				case records <- record{m.Partition, m.Offset, string(m.Value)}:
				case <-ctx.Done():
					return
				}
			}
		})
	}
	var got []string
	next := maps.Clone(committed)
	if next == nil {
		next = map[int]int64{}
	}
	for len(got) < n {
		select {
		case r := <-records:
			got = append(got, r.value)
			next[r.partition] = r.offset + 1
		case <-ctx.Done():
			t.Fatalf("group %s read %d of %d messages: %v", group, len(got), n, ctx.Err())
		}
	}
	if err := gen.CommitOffsets(map[string]map[int]int64{topic: next}); err != nil {
		t.Fatalf("group %s committing %v: %v", group, next, err)
	}
	if err := g.Close(); err != nil {
		t.Fatalf("leaving group %s: %v", group, err)
	}
	wg.Wait()
	return got, next
}

func start(ctx context.Context, t *testing.T, o kafkacluster.Options) *kafkacluster.Cluster {
	t.Helper()
	o.Log = &testLog{t: t}
	began := time.Now()
	c, err := kafkacluster.Start(ctx, o)
	if err != nil {
		t.Fatalf("starting a %d-node Kafka %s cluster: %v", o.Nodes, o.Version, err)
	}
	t.Cleanup(c.Stop)
	t.Logf("%d-node Kafka %s answering on %s after %v", len(c.Brokers()), c.Version(), c.BrokerList(), time.Since(began).Round(time.Millisecond))
	return c
}

// testLog passes the brokers' lines to t.Log.
type testLog struct {
	t  *testing.T
	mu sync.Mutex
}

func (l *testLog) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// pids remembers every JVM a cluster ran.
type pids map[int]bool

func newPIDs(c *kafkacluster.Cluster) pids {
	p := pids{}
	p.record(c)
	return p
}

func (p pids) record(c *kafkacluster.Cluster) {
	for _, pid := range c.PIDs() {
		if pid != 0 {
			p[pid] = true
		}
	}
}

// running returns the process ids of c's nodes that run now.
func running(c *kafkacluster.Cluster) []int {
	var r []int
	for _, pid := range c.PIDs() {
		if pid != 0 && alive(pid) {
			r = append(r, pid)
		}
	}
	return r
}

func (p pids) all() []int {
	var r []int
	for pid := range p {
		r = append(r, pid)
	}
	return r
}

// alive reports whether pid is a running Kafka JVM.
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil {
		return false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		// No /proc: the process exists, which is enough.
		return !errors.Is(err, os.ErrNotExist)
	}
	return bytes.Contains(cmdline, []byte("kafka.Kafka"))
}

func waitFor[T any](ctx context.Context, t *testing.T, what string, f func() (T, bool)) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	for {
		v, ok := f()
		if ok {
			return v
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// partitionMeta is partition of topic as fresh metadata describes it.
func partitionMeta(ctx context.Context, t *testing.T, c *kafkacluster.Cluster, topic string, partition int) kafka.Partition {
	t.Helper()
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	for _, addr := range c.Brokers() {
		res, err := (&kafka.Client{Addr: kafka.TCP(addr), Transport: tr}).Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
		if err != nil {
			continue
		}
		for _, tp := range res.Topics {
			for _, p := range tp.Partitions {
				if tp.Name == topic && p.ID == partition {
					return p
				}
			}
		}
	}
	t.Fatalf("no broker describes %s/%d", topic, partition)
	return kafka.Partition{}
}

func minISR(ctx context.Context, t *testing.T, c *kafkacluster.Cluster, topic string) string {
	t.Helper()
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	res, err := (&kafka.Client{Addr: kafka.TCP(c.Brokers()...), Transport: tr}).DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{
		Resources: []kafka.DescribeConfigRequestResource{{
			ResourceType: kafka.ResourceTypeTopic, ResourceName: topic, ConfigNames: []string{"min.insync.replicas"},
		}},
	})
	if err != nil {
		t.Fatalf("describing %s: %v", topic, err)
	}
	for _, r := range res.Resources {
		for _, e := range r.ConfigEntries {
			if e.ConfigName == "min.insync.replicas" {
				return e.ConfigValue
			}
		}
	}
	return ""
}

// readPartition reads a partition from its start up to value last.
func readPartition(ctx context.Context, t *testing.T, brokers []string, topic string, partition int, last string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: partition, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	var got []string
	for len(got) == 0 || got[len(got)-1] != last {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			t.Fatalf("reading %s/%d up to %s, got %v: %v", topic, partition, last, got, err)
		}
		got = append(got, string(m.Value))
	}
	return got
}

func firstOccurrences(values []string) []string {
	seen := map[string]bool{}
	var r []string
	for _, v := range values {
		if !seen[v] {
			seen[v] = true
			r = append(r, v)
		}
	}
	return r
}

// writer is an acks=all producer to topic on a transport of its own: the
// shared kafka.DefaultTransport would serve metadata cached before the
// topic existed, for up to its MetadataTTL.
func writer(t *testing.T, c *kafkacluster.Cluster, topic string) *kafka.Writer {
	tr := &kafka.Transport{}
	w := &kafka.Writer{
		Addr: kafka.TCP(c.Brokers()...), Topic: topic, RequiredAcks: kafka.RequireAll,
		BatchTimeout: 5 * time.Millisecond, Transport: tr,
	}
	t.Cleanup(func() {
		w.Close()
		tr.CloseIdleConnections()
	})
	return w
}

type partitionZero struct{}

func (partitionZero) Balance(kafka.Message, ...int) int { return 0 }

func values(prefix string, n int) []string {
	v := make([]string, n)
	for i := range v {
		v[i] = fmt.Sprintf("%s-%03d", prefix, i)
	}
	return v
}

func messages(values []string) []kafka.Message {
	m := make([]kafka.Message, len(values))
	for i, v := range values {
		m[i] = kafka.Message{Key: []byte(v), Value: []byte(v)}
	}
	return m
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
