package kafkalog

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/segmentio/kafka-go"
)

// LogStart returns the first offset that partition of topic still holds:
// records below it were deleted by retention.
func (c Cluster) LogStart(ctx context.Context, topic string, partition int) (int64, error) {
	cl := &kafka.Client{Addr: kafka.TCP(c.Brokers...), Transport: c.Security.Transport(), Timeout: 10 * time.Second}
	resp, err := cl.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{
		topic: {kafka.FirstOffsetOf(partition)},
	}})
	if err != nil {
		return 0, fmt.Errorf("reading the log start of partition %d: %w", partition, err)
	}
	parts := resp.Topics[topic]
	if len(parts) != 1 {
		return 0, fmt.Errorf("reading the log start of partition %d: %d answers", partition, len(parts))
	}
	if parts[0].Error != nil {
		return 0, fmt.Errorf("reading the log start of partition %d: %w", partition, parts[0].Error)
	}
	return parts[0].FirstOffset, nil
}

// Partitions returns the partition ids of topic, as the brokers' metadata
// lists them (whether or not each partition's leader answers), in order;
// none when the topic does not exist (it holds no record either).
func (c Cluster) Partitions(ctx context.Context, topic string) ([]int, error) {
	cl := &kafka.Client{Addr: kafka.TCP(c.Brokers...), Transport: c.Security.Transport(), Timeout: 5 * time.Second}
	meta, err := cl.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, fmt.Errorf("metadata of %s: %w", topic, err)
	}
	var out []int
	for _, t := range meta.Topics {
		if t.Name != topic {
			continue
		}
		if errors.Is(t.Error, kafka.UnknownTopicOrPartition) {
			return nil, nil
		}
		if t.Error != nil {
			return nil, fmt.Errorf("metadata of %s: %w", topic, t.Error)
		}
		for _, p := range t.Partitions {
			out = append(out, p.ID)
		}
	}
	slices.Sort(out)
	return out, nil
}

// LogEnds returns the high watermark (the offset the next record will
// get) of every partition of topic that answered.
func (c Cluster) LogEnds(ctx context.Context, topic string) (map[int]int64, error) {
	cl := &kafka.Client{Addr: kafka.TCP(c.Brokers...), Transport: c.Security.Transport(), Timeout: 5 * time.Second}
	meta, err := cl.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, fmt.Errorf("metadata of %s: %w", topic, err)
	}
	var reqs []kafka.OffsetRequest
	for _, t := range meta.Topics {
		for _, p := range t.Partitions {
			reqs = append(reqs, kafka.LastOffsetOf(p.ID))
		}
	}
	resp, err := cl.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("log ends of %s: %w", topic, err)
	}
	out := map[int]int64{}
	for _, po := range resp.Topics[topic] {
		if po.Error == nil {
			out[po.Partition] = po.LastOffset
		}
	}
	return out, nil
}

// OffsetAt returns the first offset of partition of topic whose record
// was written at or after t, or the log start when no record is that
// recent; never an offset below the log start.
func (c Cluster) OffsetAt(ctx context.Context, topic string, partition int, t time.Time) (int64, error) {
	if len(c.Brokers) == 0 {
		return 0, errors.New("no Kafka broker to ask")
	}
	conn, err := c.Security.Dialer().DialLeader(ctx, "tcp", c.Brokers[0], topic, partition)
	if err != nil {
		return 0, fmt.Errorf("dialing partition %d: %w", partition, err)
	}
	defer conn.Close()
	first, err := conn.ReadFirstOffset()
	if err != nil {
		return 0, fmt.Errorf("first offset of partition %d: %w", partition, err)
	}
	off, err := conn.ReadOffset(t)
	if err != nil {
		return first, nil //nolint:nilerr // no record at or after t: start at the first one
	}
	return max(off, first), nil
}
