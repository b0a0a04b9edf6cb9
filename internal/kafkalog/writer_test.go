package kafkalog_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/usagemeter/metering/internal/kafkalog"
	"github.com/usagemeter/metering/internal/record"
	"github.com/usagemeter/metering/internal/testkit/kafkatest"
)

func TestPermanent(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"over the writer's batch bytes", kafka.MessageTooLargeError{}, true},
		{"over the broker's limit", kafka.MessageSizeTooLarge, true},
		{"record list too large", kafka.RecordListTooLarge, true},
		{"invalid topic, wrapped", fmt.Errorf("metadata of x: %w", kafka.InvalidTopic), true},
		{"invalid timestamp", kafka.InvalidTimestamp, true},
		{"invalid record", kafka.InvalidRecord, true},
		{"leader away", kafka.LeaderNotAvailable, false},
		{"not enough replicas", kafka.NotEnoughReplicas, false},
		{"request timed out", kafka.RequestTimedOut, false},
		{"no rights", kafka.TopicAuthorizationFailed, false},
		{"connection lost", io.ErrUnexpectedEOF, false},
		{"network", &net.OpError{Op: "dial", Err: errors.New("refused")}, false},
		{"deadline", context.DeadlineExceeded, false},
		{"every failed record refused for good", kafka.WriteErrors{nil, kafka.MessageSizeTooLarge, kafka.InvalidRecord}, true},
		{"one failed record may pass", kafka.WriteErrors{kafka.MessageSizeTooLarge, kafka.LeaderNotAvailable}, false},
		{"no failed record", kafka.WriteErrors{nil, nil}, false},
		{"per-record errors, wrapped", fmt.Errorf("writing: %w", kafka.WriteErrors{kafka.MessageSizeTooLarge}), true},
	}
	for _, tc := range cases {
		if got := kafkalog.Permanent(tc.err); got != tc.want {
			t.Errorf("%s: Permanent(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}

func TestPerRecord(t *testing.T) {
	t.Parallel()
	whole := errors.New("broker down")
	cases := []struct {
		name string
		err  error
		n    int
		want []error
	}{
		{"nil", nil, 2, []error{nil, nil}},
		{"one error for the write", whole, 3, []error{whole, whole, whole}},
		{"an answer per record", fmt.Errorf("writing: %w", kafka.WriteErrors{nil, kafka.LeaderNotAvailable}), 2,
			[]error{nil, kafka.LeaderNotAvailable}},
		{"answers for another write", fmt.Errorf("writing: %w", kafka.WriteErrors{nil, kafka.LeaderNotAvailable}), 3, nil},
	}
	for _, tc := range cases {
		got := kafkalog.PerRecord(tc.err, tc.n)
		if len(got) != tc.n {
			t.Fatalf("%s: %d errors, want %d", tc.name, len(got), tc.n)
		}
		if tc.want == nil { // not split: the write's error for each
			for i := range got {
				if got[i] != tc.err {
					t.Errorf("%s: error %d = %v, want %v", tc.name, i, got[i], tc.err)
				}
			}
			continue
		}
		for i := range got {
			if !errors.Is(got[i], tc.want[i]) || (got[i] == nil) != (tc.want[i] == nil) {
				t.Errorf("%s: error %d = %v, want %v", tc.name, i, got[i], tc.want[i])
			}
		}
	}
}

// TestWriterWritesEachRecordToItsTopic: topic, key, value and headers
// reach Kafka as given, in order per key, and records of one key share a
// partition.
func TestWriterWritesEachRecordToItsTopic(t *testing.T) {
	t.Parallel()
	kc := kafkatest.Start(t)
	kc.CreateTopic(t, "a", 4)
	kc.CreateTopic(t, "b", 1)
	w := kafkalog.NewWriter(kc.Brokers(), nil)
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hdr := []record.Header{{Key: "id", Value: []byte("1")}, {Key: "bin", Value: []byte{0, 0xff}}}
	var recs []record.Record
	for i := range 20 {
		recs = append(recs, record.Record{Topic: "a", Key: []byte(fmt.Sprint("tenant-", i%4)), Value: []byte(fmt.Sprint(i)), Headers: hdr})
	}
	recs = append(recs, record.Record{Topic: "b", Key: nil, Value: []byte("no key")})
	if err := w.Write(ctx, recs...); err != nil {
		t.Fatalf("Write: %v", err)
	}
	got := kafkatest.ReadAll(t, kc.Brokers(), "a")
	if len(got) != 20 {
		t.Fatalf("topic a has %d records, want 20", len(got))
	}
	partition, last := map[string]int{}, map[string]int{}
	for _, m := range got {
		k := string(m.Key)
		if p, seen := partition[k]; seen && p != m.Partition {
			t.Errorf("key %s on partitions %d and %d", k, p, m.Partition)
		}
		partition[k] = m.Partition
		var n int
		fmt.Sscan(string(m.Value), &n)
		if prev, seen := last[k]; seen && n <= prev {
			t.Errorf("key %s: %d after %d", k, n, prev)
		}
		last[k] = n
		if len(m.Headers) != 2 || m.Headers[0].Key != "id" || m.Headers[1].Key != "bin" || !bytes.Equal(m.Headers[1].Value, []byte{0, 0xff}) {
			t.Errorf("headers %+v", m.Headers)
		}
	}
	if b := kafkatest.ReadAll(t, kc.Brokers(), "b"); len(b) != 1 || b[0].Key != nil || string(b[0].Value) != "no key" || len(b[0].Headers) != 0 {
		t.Fatalf("topic b: %+v", b)
	}
}

// TestWriterRefusalsArePermanent: what Kafka will never take comes back
// as a Permanent error, for the record at fault only when Kafka answered
// per record.
func TestWriterRefusalsArePermanent(t *testing.T) {
	t.Parallel()
	big := bytes.Repeat([]byte("x"), 8000)

	t.Run("over the writer's batch bytes", func(t *testing.T) {
		t.Parallel()
		ctx := t.Context()
		kc := kafkatest.Start(t)
		w := kafkalog.NewWriter(kc.Brokers(), nil, kafkalog.MaxBatchBytes(4096))
		defer w.Close()
		err := w.Write(ctx, record.Record{Topic: "a", Key: []byte("k"), Value: big})
		if err == nil || !kafkalog.Permanent(err) {
			t.Fatalf("Write = %v, want a permanent error", err)
		}
	})
	t.Run("over the broker's message.max.bytes", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		kc := kafkatest.Start(t, kfake.BrokerConfigs(map[string]string{"message.max.bytes": "4096"}))
		kc.CreateTopic(t, "a", 1)
		kc.CreateTopic(t, "b", 1)
		w := kafkalog.NewWriter(kc.Brokers(), nil)
		defer w.Close()
		recs := []record.Record{{Topic: "a", Key: []byte("k"), Value: big}, {Topic: "b", Key: []byte("k"), Value: []byte("small")}}
		err := w.Write(ctx, recs...)
		errs := kafkalog.PerRecord(err, len(recs))
		if !kafkalog.Permanent(errs[0]) || errs[1] != nil {
			t.Fatalf("Write = %v, per record %v: want the big record refused for good, the other taken", err, errs)
		}
	})
	t.Run("broker down is not permanent", func(t *testing.T) {
		t.Parallel()
		kc := kafkatest.Start(t)
		brokers := kc.Brokers()
		kc.Close()
		w := kafkalog.NewWriter(brokers, nil)
		defer w.Close()
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		err := w.Write(ctx, record.Record{Topic: "a", Value: []byte("x")})
		if err == nil || kafkalog.Permanent(err) {
			t.Fatalf("Write to a stopped broker = %v, want a passing error", err)
		}
	})
}
