package kafkalog

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/segmentio/kafka-go"
)

// Group is this process's membership of a consumer group that reads one
// topic. Kafka assigns the topic's partitions among the members, one
// generation after another; the offsets a member commits to the group are
// what lag tools read.
type Group struct {
	cg    *kafka.ConsumerGroup
	topic string
}

// JoinGroup makes this process a member of group, reading topic, with the
// given session timeout (which is also the rebalance timeout; heartbeats
// go every fifth of it). Kafka-go's account of joins, syncs and
// heartbeats, what explains a rebalance that takes long, goes to log at
// debug level, its errors at warning level. Next waits for the first
// generation; Close leaves the group.
func (c Cluster) JoinGroup(group, topic string, sessionTimeout time.Duration, log *slog.Logger) (*Group, error) {
	cg, err := kafka.NewConsumerGroup(kafka.ConsumerGroupConfig{
		ID: group, Brokers: c.Brokers, Dialer: c.Security.Dialer(), Topics: []string{topic},
		SessionTimeout: sessionTimeout, RebalanceTimeout: sessionTimeout,
		HeartbeatInterval: sessionTimeout / 5, JoinGroupBackoff: time.Second,
		WatchPartitionChanges: true, PartitionWatchInterval: 10 * time.Second,
		StartOffset: kafka.FirstOffset,
		Logger: kafka.LoggerFunc(func(msg string, args ...any) {
			log.Debug("kafka consumer group: "+fmt.Sprintf(msg, args...), "group", group)
		}),
		ErrorLogger: kafka.LoggerFunc(func(msg string, args ...any) {
			log.Warn("kafka consumer group: "+fmt.Sprintf(msg, args...), "group", group)
		}),
	})
	if err != nil {
		return nil, fmt.Errorf("creating consumer group %s: %w", group, err)
	}
	return &Group{cg: cg, topic: topic}, nil
}

// Next blocks until this member is part of the group's next generation,
// ctx ends, or joining fails (the caller may call Next again). The
// previous generation, if any, has ended when it returns.
func (g *Group) Next(ctx context.Context) (*Generation, error) {
	gen, err := g.cg.Next(ctx)
	if err != nil {
		return nil, err
	}
	assigned := gen.Assignments[g.topic]
	parts := make([]int, len(assigned))
	for i, a := range assigned {
		parts[i] = a.ID
	}
	slices.Sort(parts)
	return &Generation{ID: gen.ID, MemberID: gen.MemberID, Partitions: parts, gen: gen, topic: g.topic}, nil
}

// Close leaves the group.
func (g *Group) Close() error { return g.cg.Close() }

// Generation is one generation of the group as this member sees it.
type Generation struct {
	ID       int32
	MemberID string
	// Partitions are the topic's partitions assigned to this member, in
	// order.
	Partitions []int

	gen   *kafka.Generation
	topic string
}

// Start runs fn in a goroutine of the generation. fn's ctx ends when the
// generation does (a rebalance, or Close); and the generation ends, for
// every function started in it, as soon as any of them returns.
func (g *Generation) Start(fn func(ctx context.Context)) { g.gen.Start(fn) }

// CommitOffsets commits, per partition of the topic, the next offset to
// read to the group's offsets in Kafka.
func (g *Generation) CommitOffsets(next map[int]int64) error {
	return g.gen.CommitOffsets(map[string]map[int]int64{g.topic: next})
}
