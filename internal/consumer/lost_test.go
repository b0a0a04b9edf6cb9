package consumer_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/consumer"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/testkit/kafkatest"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// deleteRecords deletes the records of topic/partition below offset, as
// retention does, with a DeleteRecords request (kafka-go has no client
// call for it).
func deleteRecords(t *testing.T, addr, topic string, partition int32, offset int64) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	req := kmsg.NewPtrDeleteRecordsRequest()
	req.SetVersion(1)
	req.TimeoutMillis = 5000
	rt := kmsg.NewDeleteRecordsRequestTopic()
	rt.Topic = topic
	rp := kmsg.NewDeleteRecordsRequestTopicPartition()
	rp.Partition, rp.Offset = partition, offset
	rt.Partitions = append(rt.Partitions, rp)
	req.Topics = append(req.Topics, rt)
	if _, err := conn.Write(kmsg.NewRequestFormatter(kmsg.FormatterClientID("test")).AppendRequest(nil, req, 1)); err != nil {
		t.Fatal(err)
	}
	var size [4]byte
	if _, err := io.ReadFull(conn, size[:]); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, binary.BigEndian.Uint32(size[:]))
	if _, err := io.ReadFull(conn, body); err != nil {
		t.Fatal(err)
	}
	resp := req.ResponseKind().(*kmsg.DeleteRecordsResponse)
	if err := resp.ReadFrom(body[4:]); err != nil { // after the correlation id
		t.Fatal(err)
	}
	if code := resp.Topics[0].Partitions[0].ErrorCode; code != 0 {
		t.Fatalf("DeleteRecords: error code %d", code)
	}
}

func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				if !hasLabel(m, labels[i], labels[i+1]) {
					continue next
				}
			}
			if m.Counter != nil {
				return m.Counter.GetValue()
			}
			return m.Gauge.GetValue()
		}
	}
	return 0
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}

type pipeline struct {
	db  *pgtest.DB
	kc  *kafkatest.Cluster
	reg *prometheus.Registry
	c   *consumer.Consumer
}

// start runs a consumer of topic (one partition) for group until the test ends.
func start(t *testing.T, db *pgtest.DB, kc *kafkatest.Cluster, topic, group string) *pipeline {
	t.Helper()
	reg := prometheus.NewRegistry()
	metrics := rollup.NewMetrics(reg)
	agg := rollup.New(db.Pool, rollup.Config{Group: group, Topic: topic, Metrics: metrics})
	c := consumer.New(consumer.Config{Brokers: kc.Brokers(), Topic: topic, Group: group, SessionTimeout: time.Second,
		BatchWait: 20 * time.Millisecond, RetryInitial: 50 * time.Millisecond, StallAttempts: 3}, agg, slog.New(slog.DiscardHandler), metrics)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
	})
	return &pipeline{db: db, kc: kc, reg: reg, c: c}
}

func produce(t *testing.T, kc *kafkatest.Cluster, topic string, from, n int) {
	t.Helper()
	p, err := events.NewProducer(events.ProducerConfig{Brokers: kc.Brokers(), Topic: topic})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var evs []events.Event
	for i := from; i < from+n; i++ {
		evs = append(evs, events.Event{ID: fmt.Sprint("e", i), Tenant: "acme", Metric: "api_calls", Value: 1, Time: time.Now().UTC()})
	}
	if err := p.Emit(context.Background(), evs...); err != nil {
		t.Fatal(err)
	}
}

func (p *pipeline) waitOffset(t *testing.T, group string, want int64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var next int64
		_ = p.db.Pool.QueryRow(context.Background(), `SELECT next_offset FROM consumer_offsets WHERE consumer_group = $1 AND partition = 0`, group).Scan(&next)
		if next == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("stored offset %d after 30s, want %d", next, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRecordsLostToRetentionAreRecorded: when the stored offset is below
// the log start (retention deleted records before they were counted), the
// consumer records the lost range (audit row, metric), then continues
// from the log start.
func TestRecordsLostToRetentionAreRecorded(t *testing.T) {
	t.Parallel()
	const topic, group = "usage.events", "lost"
	db := pgtest.New(t)
	kc := kafkatest.Start(t, kfake.GroupMinSessionTimeout(100*time.Millisecond))
	kc.CreateTopic(t, topic, 1)
	produce(t, kc, topic, 0, 10)
	deleteRecords(t, kc.Addr(), topic, 0, 6)
	// Offsets 0 and 1 were counted; 2-5 are gone from the log.
	db.Exec(t, `INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset) VALUES ($1, $2, 0, 2)`, group, topic)
	p := start(t, db, kc, topic, group)
	p.waitOffset(t, group, 10)
	var first, logStart int64
	var gotTopic string
	var partition int
	if err := db.Pool.QueryRow(context.Background(), `SELECT topic, partition, first_lost, log_start FROM consumer_lost_records WHERE consumer_group = $1`, group).
		Scan(&gotTopic, &partition, &first, &logStart); err != nil {
		t.Fatalf("no audit row of the lost records: %v", err)
	}
	if gotTopic != topic || partition != 0 || first != 2 || logStart != 6 {
		t.Fatalf("lost records %s/%d [%d, %d), want %s/0 [2, 6)", gotTopic, partition, first, logStart, topic)
	}
	var counted int
	_ = db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM ledger`).Scan(&counted)
	if counted != 4 {
		t.Fatalf("%d events counted, want 4 (offsets 6-9)", counted)
	}
	if v := metricValue(t, p.reg, "metering_aggregator_lost_records_total", "partition", "0"); v != 4 {
		t.Fatalf("lost records metric %v, want 4", v)
	}
}

// TestFailedReaderRestartsWithinTheGeneration: a partition reader that
// fails (here: its offset is past the log end) is restarted with backoff
// in the same generation, reported stalled after repeated failures, and
// consumes again as soon as it can; the member never stops being a
// member.
func TestFailedReaderRestartsWithinTheGeneration(t *testing.T) {
	t.Parallel()
	const topic, group = "usage.events", "restart"
	db := pgtest.New(t)
	kc := kafkatest.Start(t, kfake.GroupMinSessionTimeout(100*time.Millisecond))
	kc.CreateTopic(t, topic, 1)
	produce(t, kc, topic, 0, 5)
	db.Exec(t, `INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset) VALUES ($1, $2, 0, 8)`, group, topic)
	p := start(t, db, kc, topic, group)
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := p.c.Ready(context.Background())
		if err != nil && strings.Contains(err.Error(), "partition 0 stalled") && strings.Contains(err.Error(), "reader") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Ready = %v after 30s, want partition 0 stalled by its reader", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if v := metricValue(t, p.reg, "metering_aggregator_reader_restarts_total", "partition", "0"); v < 3 {
		t.Fatalf("reader restarts %v, want at least 3", v)
	}
	if v := metricValue(t, p.reg, "metering_aggregator_partition_stalled", "partition", "0"); v != 1 {
		t.Fatalf("stalled gauge %v, want 1", v)
	}
	produce(t, kc, topic, 5, 5) // the log reaches offset 10: 8 and 9 are readable
	p.waitOffset(t, group, 10)
	if err := p.c.Ready(context.Background()); err != nil {
		t.Fatalf("not ready once consuming again: %v", err)
	}
	if v := metricValue(t, p.reg, "metering_aggregator_generations_total"); v != 1 {
		t.Fatalf("%v generations: the reader's failure ended the member's generation", v)
	}
}
