package kafkalog

import (
	"context"
	"errors"
	"fmt"

	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/metering/internal/kafkaauth"
)

// Cluster names the brokers of a Kafka cluster and the security to reach
// them with. Every read of the log, lookup of its offsets, group
// membership and topic creation of the product goes through one.
type Cluster struct {
	// Brokers is the bootstrap list, host:port each.
	Brokers []string
	// Security is the brokers' TLS and SASL; nil is plaintext.
	Security *kafkaauth.Security
}

// Ensure creates the named topics with partitions each (replication
// factor from the broker's default) unless they exist. Creating a topic
// that exists is not an error, so every service may call Ensure at start.
func (c Cluster) Ensure(ctx context.Context, partitions int, names ...string) error {
	cl := &kafka.Client{Addr: kafka.TCP(c.Brokers...), Transport: c.Security.Transport()}
	req := &kafka.CreateTopicsRequest{}
	for _, n := range names {
		req.Topics = append(req.Topics, kafka.TopicConfig{Topic: n, NumPartitions: partitions, ReplicationFactor: -1})
	}
	resp, err := cl.CreateTopics(ctx, req)
	if err != nil {
		return fmt.Errorf("creating topics on %v: %w", c.Brokers, c.Security.Explain(ctx, c.Brokers, err))
	}
	for name, terr := range resp.Errors {
		if terr != nil && !errors.Is(terr, kafka.TopicAlreadyExists) {
			return fmt.Errorf("creating topic %s: %w", name, terr)
		}
	}
	return nil
}

// Ping checks that the brokers answer a metadata request for topic.
func (c Cluster) Ping(ctx context.Context, topic string) error {
	cl := &kafka.Client{Addr: kafka.TCP(c.Brokers...), Transport: c.Security.Transport()}
	resp, err := cl.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return fmt.Errorf("kafka: %w", c.Security.Explain(ctx, c.Brokers, err))
	}
	for _, t := range resp.Topics {
		if t.Error != nil {
			return fmt.Errorf("kafka topic %s: %w", topic, t.Error)
		}
	}
	return nil
}
