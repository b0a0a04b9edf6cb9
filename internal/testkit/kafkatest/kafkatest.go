// Package kafkatest runs an in-process Kafka-protocol broker (franz-go's
// kfake) for tests, and reads topics back so tests can prove what was
// published.
//
// Invariant: every Cluster listens on a free loopback port and is closed
// when the test that started it ends.
//
// Test and dev tooling, not product (see internal/testkit): a test helper,
// which may import testing; only tests import it.
package kafkatest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
)

// Cluster is a running test broker.
type Cluster struct {
	*kfake.Cluster
	addr string
}

// Start starts a one-broker cluster on a free port with the given extra
// options; tb's cleanup closes it. Topics are auto-created with
// 4 partitions unless CreateTopic made them first.
func Start(tb testing.TB, opts ...kfake.Opt) *Cluster {
	tb.Helper()
	c, err := New(opts...)
	if err != nil {
		tb.Fatalf("kafkatest: %v", err)
	}
	tb.Cleanup(c.Close)
	return c
}

// New starts a cluster like Start, for callers without a testing.TB
// (benchmarks' main functions, the local stack). Port 0 picks a free one.
func New(opts ...kfake.Opt) (*Cluster, error) {
	base := []kfake.Opt{kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(4)}
	kc, err := kfake.NewCluster(append(base, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("starting kfake: %w", err)
	}
	addrs := kc.ListenAddrs()
	if len(addrs) == 0 {
		kc.Close()
		return nil, errors.New("kfake started with no listeners")
	}
	return &Cluster{Cluster: kc, addr: addrs[0]}, nil
}

// Addr is the broker's host:port.
func (c *Cluster) Addr() string { return c.addr }

// Brokers returns the bootstrap list.
func (c *Cluster) Brokers() []string { return []string{c.addr} }

// CreateTopic creates topic with the given partitions; an existing topic is
// left as it is.
func (c *Cluster) CreateTopic(tb testing.TB, topic string, partitions int) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl := &kafka.Client{Addr: kafka.TCP(c.addr)}
	resp, err := cl.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
		Topic: topic, NumPartitions: partitions, ReplicationFactor: 1,
	}}})
	if err != nil {
		tb.Fatalf("kafkatest: creating %s: %v", topic, err)
	}
	if err := resp.Errors[topic]; err != nil && !errors.Is(err, kafka.TopicAlreadyExists) {
		tb.Fatalf("kafkatest: creating %s: %v", topic, err)
	}
}

// EndOffsets returns each partition's end offset (its high watermark) of
// topic; a topic that does not exist yields none.
func EndOffsets(ctx context.Context, brokers []string, topic string) (map[int]int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cl := &kafka.Client{Addr: kafka.TCP(brokers...)}
	meta, err := cl.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, fmt.Errorf("metadata of %s: %w", topic, err)
	}
	req := map[string][]kafka.OffsetRequest{}
	for _, t := range meta.Topics {
		if t.Error != nil {
			if errors.Is(t.Error, kafka.UnknownTopicOrPartition) {
				return nil, nil
			}
			return nil, fmt.Errorf("metadata of %s: %w", topic, t.Error)
		}
		for _, p := range t.Partitions {
			req[topic] = append(req[topic], kafka.LastOffsetOf(p.ID))
		}
	}
	resp, err := cl.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: req})
	if err != nil {
		return nil, fmt.Errorf("end offsets of %s: %w", topic, err)
	}
	out := map[int]int64{}
	for _, po := range resp.Topics[topic] {
		if po.Error != nil {
			return nil, fmt.Errorf("end offset of %s/%d: %w", topic, po.Partition, po.Error)
		}
		out[po.Partition] = po.LastOffset
	}
	return out, nil
}

// ReadAll returns every message in topic, partition by partition in offset
// order, up to each partition's high watermark at the time of the call. A
// topic that does not exist yields no messages.
func ReadAll(tb testing.TB, brokers []string, topic string) []kafka.Message {
	tb.Helper()
	msgs, err := Read(context.Background(), brokers, topic)
	if err != nil {
		tb.Fatalf("kafkatest: %v", err)
	}
	return msgs
}

// Read is ReadAll without a testing.TB.
func Read(ctx context.Context, brokers []string, topic string) ([]kafka.Message, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cl := &kafka.Client{Addr: kafka.TCP(brokers...)}
	meta, err := cl.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, fmt.Errorf("metadata of %s: %w", topic, err)
	}
	var out []kafka.Message
	for _, t := range meta.Topics {
		if t.Error != nil {
			if errors.Is(t.Error, kafka.UnknownTopicOrPartition) {
				return nil, nil
			}
			return nil, fmt.Errorf("metadata of %s: %w", topic, t.Error)
		}
		for _, p := range t.Partitions {
			msgs, err := readPartition(ctx, brokers, topic, p.ID)
			if err != nil {
				return nil, err
			}
			out = append(out, msgs...)
		}
	}
	return out, nil
}

func readPartition(ctx context.Context, brokers []string, topic string, partition int) ([]kafka.Message, error) {
	conn, err := (&kafka.Dialer{}).DialLeader(ctx, "tcp", brokers[0], topic, partition)
	if err != nil {
		return nil, fmt.Errorf("dialing leader of %s/%d: %w", topic, partition, err)
	}
	defer conn.Close()
	first, last, err := conn.ReadOffsets()
	if err != nil {
		return nil, fmt.Errorf("offsets of %s/%d: %w", topic, partition, err)
	}
	if last <= first {
		return nil, nil
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: partition, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	if err := r.SetOffset(first); err != nil {
		return nil, fmt.Errorf("seeking %s/%d: %w", topic, partition, err)
	}
	out := make([]kafka.Message, 0, last-first)
	for {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			return nil, fmt.Errorf("reading %s/%d: %w", topic, partition, err)
		}
		out = append(out, m)
		if m.Offset+1 >= last {
			return out, nil
		}
	}
}
