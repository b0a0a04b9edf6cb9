// Package topics names the Kafka topics of the pipeline, creates them, and
// checks that the broker answers.
//
// Invariant: creating a topic that exists is not an error, so every
// service may call Ensure at start.
package topics

import (
	"context"
	"errors"
	"fmt"

	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/kafkaauth"
)

// Topic names (contract): the product names a topic only through these.
// UsageEvents is the public SDK's events.Topic, the topic its Producer
// writes to, so the two cannot drift apart.
const (
	UsageEvents    = events.Topic
	UsageEventsDLQ = "usage.events.dlq"
	QuotaBreaches  = "quota.breaches"
	BillingDLQ     = "billing.dlq"
)

// All lists every topic of the pipeline.
var All = []string{UsageEvents, UsageEventsDLQ, QuotaBreaches, BillingDLQ}

// Ensure creates the named topics with partitions each (replication factor
// from the broker's default) unless they exist; sec is the brokers' TLS
// and SASL (nil: plaintext).
func Ensure(ctx context.Context, brokers []string, sec *kafkaauth.Security, partitions int, names ...string) error {
	cl := &kafka.Client{Addr: kafka.TCP(brokers...), Transport: sec.Transport()}
	req := &kafka.CreateTopicsRequest{}
	for _, n := range names {
		req.Topics = append(req.Topics, kafka.TopicConfig{Topic: n, NumPartitions: partitions, ReplicationFactor: -1})
	}
	resp, err := cl.CreateTopics(ctx, req)
	if err != nil {
		return fmt.Errorf("creating topics on %v: %w", brokers, sec.Explain(ctx, brokers, err))
	}
	for name, terr := range resp.Errors {
		if terr != nil && !errors.Is(terr, kafka.TopicAlreadyExists) {
			return fmt.Errorf("creating topic %s: %w", name, terr)
		}
	}
	return nil
}

// Ping checks that the brokers answer a metadata request for topic.
func Ping(ctx context.Context, brokers []string, sec *kafkaauth.Security, topic string) error {
	cl := &kafka.Client{Addr: kafka.TCP(brokers...), Transport: sec.Transport()}
	resp, err := cl.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return fmt.Errorf("kafka: %w", sec.Explain(ctx, brokers, err))
	}
	for _, t := range resp.Topics {
		if t.Error != nil {
			return fmt.Errorf("kafka topic %s: %w", topic, t.Error)
		}
	}
	return nil
}
