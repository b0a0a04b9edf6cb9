package consumer_test

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/consumer"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/testkit/kafkatest"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// TestStartsAtThePostgresOffset: the consumer reads each partition from
// the offset Postgres holds, whatever Kafka would say, is ready only
// while it is a member of the group, and copies the offset it committed
// to the group's offsets in Kafka, where lag tools read it.
func TestStartsAtThePostgresOffset(t *testing.T) {
	const topic, group = "usage.events", "test-group"
	db := pgtest.New(t)
	kc := kafkatest.Start(t, kfake.GroupMinSessionTimeout(100*time.Millisecond))
	kc.CreateTopic(t, topic, 1)
	p, err := events.NewProducer(events.ProducerConfig{Brokers: kc.Brokers(), Topic: topic})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	now := time.Now().UTC()
	var evs []events.Event
	for i := range 10 {
		evs = append(evs, events.Event{ID: events.NewID(), Tenant: "acme", Metric: "api_calls", Value: int64(1 << i), Time: now})
	}
	if err := p.Emit(context.Background(), evs...); err != nil {
		t.Fatal(err)
	}
	// Postgres says offsets 0-5 are done: only 6..9 (64+128+256+512) count.
	db.Exec(t, `INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset) VALUES ($1, $2, 0, 6)`, group, topic)

	agg := rollup.New(db.Pool, rollup.Config{Group: group, Topic: topic})
	c := consumer.New(consumer.Config{Brokers: kc.Brokers(), Topic: topic, Group: group, SessionTimeout: time.Second,
		BatchWait: 20 * time.Millisecond}, agg, slog.New(slog.DiscardHandler), nil)
	if err := c.Ready(context.Background()); err == nil {
		t.Fatal("ready before joining the group")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		var next int64
		_ = db.Pool.QueryRow(context.Background(), `SELECT next_offset FROM consumer_offsets WHERE consumer_group = $1 AND partition = 0`, group).Scan(&next)
		if next == 10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("next offset %d after 30s, want 10", next)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := c.Ready(context.Background()); err != nil {
		t.Fatalf("not ready while consuming: %v", err)
	}
	var total string
	var ids int
	if err := db.Pool.QueryRow(context.Background(), `SELECT coalesce(sum(value), 0)::text FROM usage_windows
		WHERE tenant = 'acme' AND meter = 'api_calls' AND granularity = 'month'`).Scan(&total); err != nil {
		t.Fatal(err)
	}
	_ = db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM ledger`).Scan(&ids)
	if total != "960" || ids != 4 {
		t.Fatalf("month total %s over %d ids, want 960 over 4 (offsets 6-9 only)", total, ids)
	}
	cl := &kafka.Client{Addr: kafka.TCP(kc.Brokers()...)}
	for {
		resp, err := cl.OffsetFetch(context.Background(), &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: {0}}})
		if err == nil && resp.Error == nil && len(resp.Topics[topic]) == 1 && resp.Topics[topic][0].CommittedOffset == 10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Kafka's committed offset for the group is not 10 after 30s: %+v, %v", resp, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
