package kafkacluster_test

import (
	"context"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/metering/internal/testkit/kafkacluster"
)

// TestKeptDir runs real brokers: it needs Java and Maven (or the jars in
// the cache already) and fails without them; -short skips it. The
// three-node cluster, killing and restarting a node, Stop, LeaderOf and a
// consumer group on each pinned release are proven by the real-Kafka
// suite (internal/testkit/kafkasuite) on the clusters it starts for the
// pipeline's scenarios.

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

func messages(values []string) []kafka.Message {
	m := make([]kafka.Message, len(values))
	for i, v := range values {
		m[i] = kafka.Message{Key: []byte(v), Value: []byte(v)}
	}
	return m
}
