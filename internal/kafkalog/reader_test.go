package kafkalog_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/usagemeter/metering/internal/kafkalog"
	"github.com/usagemeter/metering/internal/record"
	"github.com/usagemeter/metering/internal/testkit/kafkatest"
)

// produce writes n records to partition 0 of topic, record i with value
// "v<i>" and, for odd i, a header; written one second apart from base.
func produce(t *testing.T, kc *kafkatest.Cluster, topic string, n int, base time.Time) {
	t.Helper()
	conn, err := kafka.DialLeader(context.Background(), "tcp", kc.Addr(), topic, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msgs := make([]kafka.Message, n)
	for i := range msgs {
		msgs[i] = kafka.Message{Key: []byte("k"), Value: fmt.Appendf(nil, "v%d", i), Time: base.Add(time.Duration(i) * time.Second)}
		if i%2 == 1 {
			msgs[i].Headers = []kafka.Header{{Key: "h\x00", Value: []byte{0xff, byte(i)}}}
		}
	}
	if _, err := conn.WriteMessages(msgs...); err != nil {
		t.Fatal(err)
	}
}

func newCluster(t *testing.T, topic string, n int, base time.Time) kafkalog.Cluster {
	t.Helper()
	kc := kafkatest.Start(t, kfake.GroupMinSessionTimeout(100*time.Millisecond))
	kc.CreateTopic(t, topic, 2)
	produce(t, kc, topic, n, base)
	return kafkalog.Cluster{Brokers: kc.Brokers()}
}

// collect reads with opt and returns the batches' offsets.
func collect(t *testing.T, ctx context.Context, c kafkalog.Cluster, topic string, opt kafkalog.ReadOptions) ([][]int64, []record.Record, error) {
	t.Helper()
	var batches [][]int64
	var recs []record.Record
	err := c.Read(ctx, topic, 0, opt, func(b kafkalog.Batch) error {
		var offs []int64
		for _, r := range b.Records {
			offs = append(offs, r.Offset)
		}
		batches = append(batches, offs)
		recs = append(recs, b.Records...)
		if b.HighWaterMark != 10 {
			t.Errorf("high watermark %d, want 10", b.HighWaterMark)
		}
		return nil
	})
	return batches, recs, err
}

// TestReadStopsAtEndAndCutsBatches: a bounded read hands over every record
// below End, in batches of at most BatchSize, bytes and headers as
// written, and returns nil; an empty range reads nothing.
func TestReadStopsAtEndAndCutsBatches(t *testing.T) {
	t.Parallel()
	const topic = "reads"
	c := newCluster(t, topic, 10, time.Now().Add(-time.Hour))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	batches, recs, err := collect(t, ctx, c, topic, kafkalog.ReadOptions{From: 2, End: 9, BatchSize: 3})
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(batches); got != "[[2 3 4] [5 6 7] [8]]" {
		t.Errorf("batches %s, want [[2 3 4] [5 6 7] [8]]", got)
	}
	for _, r := range recs {
		if string(r.Value) != fmt.Sprintf("v%d", r.Offset) || string(r.Key) != "k" || r.Partition != 0 || r.Time.IsZero() {
			t.Errorf("record %d: %+v", r.Offset, r)
		}
		want := 0
		if r.Offset%2 == 1 {
			want = 1
		}
		if len(r.Headers) != want || want == 1 && (r.Headers[0].Key != "h\x00" || string(r.Headers[0].Value) != string([]byte{0xff, byte(r.Offset)})) {
			t.Errorf("record %d headers %+v", r.Offset, r.Headers)
		}
	}
	batches, _, err = collect(t, ctx, c, topic, kafkalog.ReadOptions{From: 5, End: 5})
	if err != nil || len(batches) != 0 {
		t.Errorf("empty range: %v, %v", batches, err)
	}
	// From the log start, up to the end, in one batch by default.
	batches, _, err = collect(t, ctx, c, topic, kafkalog.ReadOptions{From: -1, End: 10})
	if err != nil || fmt.Sprint(batches) != "[[0 1 2 3 4 5 6 7 8 9]]" {
		t.Errorf("whole partition: %v, %v", batches, err)
	}
}

// TestReadTailsUntilCtxEnds: an unbounded read cuts a batch BatchWait
// after its first record even when it is not full, waits for more, and
// returns ctx's error when ctx ends; fn's error comes back as it is.
func TestReadTailsUntilCtxEnds(t *testing.T) {
	t.Parallel()
	const topic = "tails"
	c := newCluster(t, topic, 10, time.Now().Add(-time.Hour))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan int, 10)
	done := make(chan error, 1)
	go func() {
		done <- c.Read(ctx, topic, 0, kafkalog.ReadOptions{From: 4, End: -1, BatchSize: 100, BatchWait: 50 * time.Millisecond}, func(b kafkalog.Batch) error {
			got <- len(b.Records)
			return nil
		})
	}()
	total := 0
	for total < 6 {
		select {
		case n := <-got:
			total += n
		case <-time.After(30 * time.Second):
			t.Fatalf("%d records after 30s, want 6", total)
		}
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Read after cancel = %v, want context.Canceled", err)
	}
	stop := errors.New("stop")
	err := c.Read(context.Background(), topic, 0, kafkalog.ReadOptions{From: 0, End: -1}, func(kafkalog.Batch) error { return stop })
	if err != stop { //nolint:errorlint // returned as it is
		t.Errorf("Read = %v, want fn's error as it is", err)
	}
}

// TestLogOffsets: the log start, the log ends of every partition, and the
// offset of the first record at or after a time (the log start before the
// first record; clamped to it).
func TestLogOffsets(t *testing.T) {
	t.Parallel()
	const topic = "offsets"
	base := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	c := newCluster(t, topic, 10, base)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if start, err := c.LogStart(ctx, topic, 0); err != nil || start != 0 {
		t.Errorf("LogStart = %d, %v; want 0", start, err)
	}
	ends, err := c.LogEnds(ctx, topic)
	if want := map[int]int64{0: 10, 1: 0}; err != nil || !maps.Equal(ends, want) {
		t.Errorf("LogEnds = %v, %v; want %v", ends, err, want)
	}
	for _, tt := range []struct {
		at   time.Time
		want int64
	}{{base.Add(-time.Hour), 0}, {base.Add(3 * time.Second), 3}, {base.Add(3500 * time.Millisecond), 4}} {
		if off, err := c.OffsetAt(ctx, topic, 0, tt.at); err != nil || off != tt.want {
			t.Errorf("OffsetAt(%s) = %d, %v; want %d", tt.at.Sub(base), off, err, tt.want)
		}
	}
}

// TestEnsureAndPing: Ensure creates topics and takes an existing one
// without error; Ping answers for a topic; Partitions lists a topic's
// partitions in order, and none of a topic that does not exist.
func TestEnsureAndPing(t *testing.T) {
	t.Parallel()
	kc := kafkatest.Start(t)
	c := kafkalog.Cluster{Brokers: kc.Brokers()}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for range 2 {
		if err := c.Ensure(ctx, 3, "made.one", "made.two"); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Ping(ctx, "made.one"); err != nil {
		t.Error(err)
	}
	ends, err := c.LogEnds(ctx, "made.two")
	if err != nil || len(ends) != 3 {
		t.Errorf("made.two has partitions %v (%v), want 3", ends, err)
	}
	if parts, err := c.Partitions(ctx, "made.one"); err != nil || !slices.Equal(parts, []int{0, 1, 2}) {
		t.Errorf("Partitions(made.one) = %v, %v; want [0 1 2]", parts, err)
	}
	if parts, err := c.Partitions(ctx, "never.made"); err != nil || len(parts) != 0 {
		t.Errorf("Partitions(never.made) = %v, %v; want none", parts, err)
	}
}
