package consumer_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/testkit/kafkatest"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// TestHostileRecordsThroughKafka: records with keys that are not UTF-8 or
// hold NUL, tombstones, empty and huge values and binary headers, mixed
// with valid events, pass through the broker and the consumer: the valid
// events count, the others are dead letters with their bytes, and the
// partition's offset ends past the last record.
func TestHostileRecordsThroughKafka(t *testing.T) {
	t.Parallel()
	const topic, group = "usage.events", "hostile"
	db := pgtest.New(t)
	kc := kafkatest.Start(t, kfake.GroupMinSessionTimeout(100*time.Millisecond))
	kc.CreateTopic(t, topic, 1)
	hdr := []kafka.Header{{Key: "bin\x00\xff", Value: []byte{0, 0xfe, '\n'}}}
	msgs := []kafka.Message{
		{Key: []byte("\xff\xfe"), Value: []byte("\xc3\x28")},
		{Key: []byte("a\x00b"), Value: nil, Headers: hdr},
		{Key: nil, Value: []byte{}},
		{Key: []byte("acme"), Value: bytes.Repeat([]byte{0}, 512<<10)},
		{Key: []byte("acme\x1b[31m"), Value: []byte(`{"id":"x\u0000","tenant":"a\u0001","metric":"m","value":1,"time":"2026-11-21T19:00:00Z"}`), Headers: hdr},
	}
	valid := 0
	for i := range 5 {
		e := events.Event{ID: fmt.Sprint("ok-", i), Tenant: "acme", Metric: "api_calls", Value: 1, Time: time.Now().UTC()}
		msgs = append(msgs, kafka.Message{Key: []byte(e.Tenant), Value: e.AppendJSON(nil)})
		valid++
	}
	w := &kafka.Writer{Addr: kafka.TCP(kc.Addr()), Topic: topic, BatchSize: 1, RequiredAcks: kafka.RequireAll, BatchBytes: 4 << 20}
	defer w.Close()
	for _, m := range msgs { // one at a time: offsets in this order
		if err := w.WriteMessages(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	p := start(t, db, kc, topic, group)
	p.waitOffset(t, group, int64(len(msgs)))
	var counted, dead int
	_ = db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM ledger`).Scan(&counted)
	_ = db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM usage_dlq`).Scan(&dead)
	if counted != valid || dead != len(msgs)-valid {
		t.Fatalf("%d counted and %d dead letters, want %d and %d", counted, dead, valid, len(msgs)-valid)
	}
	var key, payload []byte
	var hk, hv [][]byte
	if err := db.Pool.QueryRow(context.Background(), `SELECT msg_key, payload, header_keys, header_values FROM usage_dlq WHERE source_offset = 1`).
		Scan(&key, &payload, &hk, &hv); err != nil {
		t.Fatal(err)
	}
	if string(key) != "a\x00b" || payload != nil || len(hk) != 1 || string(hk[0]) != hdr[0].Key || !bytes.Equal(hv[0], hdr[0].Value) {
		t.Fatalf("tombstone's dead letter: key %q payload %q headers %q=%q", key, payload, hk, hv)
	}
}
