package kafkacluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/segmentio/kafka-go"
	meta "github.com/segmentio/kafka-go/protocol/metadata"
)

// readyTopic is the topic Start creates (and deletes again) to prove the
// cluster can place a partition on every node.
const readyTopic = "kafkacluster.ready"

// pollInterval is how often the waits below ask the brokers again.
const pollInterval = 200 * time.Millisecond

// requestTimeout bounds one request to one broker.
const requestTimeout = 5 * time.Second

// fatalError is an error that waiting longer cannot cure.
type fatalError struct{ error }

func (e fatalError) Unwrap() error { return e.error }

// CreateTopic creates topic with the given partitions, replication factor
// and topic configs (for example "min.insync.replicas": "2"), and returns
// once every running broker reports a leader for each of its partitions.
func (c *Cluster) CreateTopic(ctx context.Context, topic string, partitions, replicationFactor int, configs map[string]string) error {
	if err := c.createTopic(ctx, topic, partitions, replicationFactor, configs); err != nil {
		return err
	}
	return c.poll(ctx, "topic "+topic+" has no leaders", func(ctx context.Context) error {
		return c.checkLeaders(ctx, topic, partitions)
	})
}

func (c *Cluster) createTopic(ctx context.Context, topic string, partitions, replicationFactor int, configs map[string]string) error {
	client, done, err := c.client()
	if err != nil {
		return err
	}
	defer done()
	tc := kafka.TopicConfig{Topic: topic, NumPartitions: partitions, ReplicationFactor: replicationFactor}
	for k, v := range configs {
		tc.ConfigEntries = append(tc.ConfigEntries, kafka.ConfigEntry{ConfigName: k, ConfigValue: v})
	}
	res, err := client.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{tc}})
	if err != nil {
		return fmt.Errorf("kafkacluster: creating topic %s: %w", topic, err)
	}
	if err := res.Errors[topic]; err != nil {
		return fmt.Errorf("kafkacluster: creating topic %s: %w", topic, err)
	}
	return nil
}

// LeaderOf returns the index of the node that leads partition of topic,
// as the running brokers see it now: a killed leader keeps its partitions
// until the controller fences it, broker.session.timeout.ms (6 s here)
// after its last heartbeat.
func (c *Cluster) LeaderOf(ctx context.Context, topic string, partition int) (int, error) {
	var errs []error
	for _, n := range c.nodes {
		if n.running() == nil {
			continue
		}
		m, err := metadata(ctx, n.addr(), []string{topic})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, t := range m.Topics {
			if t.Name != topic {
				continue
			}
			if t.ErrorCode != 0 {
				return -1, fmt.Errorf("kafkacluster: leader of %s/%d: %w", topic, partition, kafka.Error(t.ErrorCode))
			}
			for _, p := range t.Partitions {
				if int(p.PartitionIndex) != partition {
					continue
				}
				if p.ErrorCode != 0 {
					return -1, fmt.Errorf("kafkacluster: leader of %s/%d: %w", topic, partition, kafka.Error(p.ErrorCode))
				}
				if p.LeaderID < 0 || int(p.LeaderID) >= len(c.nodes) {
					return -1, fmt.Errorf("kafkacluster: %s/%d has no leader (leader id %d)", topic, partition, p.LeaderID)
				}
				return int(p.LeaderID), nil
			}
			return -1, fmt.Errorf("kafkacluster: topic %s has no partition %d", topic, partition)
		}
		return -1, fmt.Errorf("kafkacluster: leader of %s/%d: %w", topic, partition, kafka.UnknownTopicOrPartition)
	}
	return -1, fmt.Errorf("kafkacluster: leader of %s/%d: no running broker answered: %w", topic, partition, errors.Join(errs...))
}

// waitReady waits until every broker answers with every broker listed and
// a topic with one replica per node can be created.
func (c *Cluster) waitReady(ctx context.Context) error {
	return c.poll(ctx, "brokers not ready", func(ctx context.Context) error {
		for _, n := range c.nodes {
			if err := c.checkNode(ctx, n); err != nil {
				return err
			}
		}
		err := c.createTopic(ctx, readyTopic, 1, len(c.nodes), nil)
		if err != nil && !errors.Is(err, kafka.TopicAlreadyExists) {
			return err
		}
		if err := c.checkLeaders(ctx, readyTopic, 1); err != nil {
			return err
		}
		return c.deleteTopic(ctx, readyTopic)
	})
}

// waitNode waits until n answers with every broker listed.
func (c *Cluster) waitNode(ctx context.Context, n *node) error {
	return c.poll(ctx, fmt.Sprintf("node %d not ready", n.id), func(ctx context.Context) error {
		return c.checkNode(ctx, n)
	})
}

// poll calls check until it returns nil or a fatalError, or ctx ends. A
// node that exits on its own ends the wait too.
func (c *Cluster) poll(ctx context.Context, what string, check func(context.Context) error) error {
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		err := check(ctx)
		if err == nil {
			return nil
		}
		if fe, ok := errors.AsType[fatalError](err); ok {
			return fe.error
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kafkacluster: %s: %w; last: %w", what, ctx.Err(), err)
		case <-t.C:
		}
	}
}

// checkNode asks n for the metadata and wants every node listed.
func (c *Cluster) checkNode(ctx context.Context, n *node) error {
	n.mu.Lock()
	p := n.proc
	n.mu.Unlock()
	if p == nil {
		return fatalError{fmt.Errorf("kafkacluster: node %d was never started", n.id)}
	}
	if p.exited() {
		return fatalError{n.exitError(p)}
	}
	m, err := metadata(ctx, n.addr(), []string{})
	if err != nil {
		return err
	}
	var ids []int
	for _, b := range m.Brokers {
		ids = append(ids, int(b.NodeID))
	}
	slices.Sort(ids)
	for i := range c.nodes {
		if !slices.Contains(ids, i) {
			return fmt.Errorf("kafkacluster: node %d lists brokers %v, not all %d", n.id, ids, len(c.nodes))
		}
	}
	return nil
}

// checkLeaders wants every running broker to report topic with its
// partitions, each with a leader.
func (c *Cluster) checkLeaders(ctx context.Context, topic string, partitions int) error {
	for _, n := range c.nodes {
		if n.running() == nil {
			continue
		}
		m, err := metadata(ctx, n.addr(), []string{topic})
		if err != nil {
			return err
		}
		if len(m.Topics) != 1 || m.Topics[0].ErrorCode != 0 {
			return fmt.Errorf("kafkacluster: node %d does not know topic %s yet", n.id, topic)
		}
		ps := m.Topics[0].Partitions
		if len(ps) != partitions {
			return fmt.Errorf("kafkacluster: node %d sees %d of %d partitions of %s", n.id, len(ps), partitions, topic)
		}
		for _, p := range ps {
			if p.ErrorCode != 0 || p.LeaderID < 0 {
				return fmt.Errorf("kafkacluster: node %d sees no leader for %s/%d", n.id, topic, p.PartitionIndex)
			}
		}
	}
	return nil
}

func (c *Cluster) deleteTopic(ctx context.Context, topic string) error {
	client, done, err := c.client()
	if err != nil {
		return err
	}
	defer done()
	res, err := client.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: []string{topic}})
	if err != nil {
		return fmt.Errorf("kafkacluster: deleting topic %s: %w", topic, err)
	}
	if err := res.Errors[topic]; err != nil && !errors.Is(err, kafka.UnknownTopicOrPartition) {
		return fmt.Errorf("kafkacluster: deleting topic %s: %w", topic, err)
	}
	return nil
}

// client returns an admin client of a running broker on a transport of
// its own, so no cached metadata outlives a killed node; done closes it.
func (c *Cluster) client() (*kafka.Client, func(), error) {
	for _, n := range c.nodes {
		if n.running() != nil {
			t := newTransport()
			return &kafka.Client{Addr: kafka.TCP(n.addr()), Transport: t, Timeout: requestTimeout}, t.CloseIdleConnections, nil
		}
	}
	return nil, nil, errors.New("kafkacluster: no node is running")
}

func newTransport() *kafka.Transport {
	return &kafka.Transport{ClientID: "kafkacluster", DialTimeout: 2 * time.Second, MetadataTTL: time.Minute}
}

// metadata asks the broker at addr for the metadata of topics (all of
// them when nil), over a transport of its own: a fresh answer, never one
// from a cache.
func metadata(ctx context.Context, addr string, topics []string) (*meta.Response, error) {
	t := newTransport()
	defer t.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	res, err := t.RoundTrip(ctx, kafka.TCP(addr), &meta.Request{TopicNames: topics})
	if err != nil {
		return nil, fmt.Errorf("kafkacluster: metadata from %s: %w", addr, err)
	}
	m, ok := res.(*meta.Response)
	if !ok {
		return nil, fmt.Errorf("kafkacluster: metadata from %s: unexpected response %T", addr, res)
	}
	return m, nil
}
