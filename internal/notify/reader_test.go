package notify_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/kafkalog"
	"github.com/usagemeter/metering/internal/notify"
	"github.com/usagemeter/metering/internal/record"
	"github.com/usagemeter/metering/internal/storage/webhooks"
	"github.com/usagemeter/metering/internal/testkit/kafkatest"
)

// TestReaderEndToEnd: the reader on a Kafka-protocol broker starts each
// partition at its log end (a message written before it first ran is not
// notified), queues what the three topics carry for the tenant's
// endpoint, once per event id (a message written twice queues once), and
// after a restart resumes where it stopped without queueing anything
// twice.
func TestReaderEndToEnd(t *testing.T) {
	t.Parallel()
	start := time.Date(2026, 11, 21, 19, 0, 0, 0, time.UTC)
	db, _ := setup(t, "https://hooks.example.com/x", start)
	kc := kafkatest.Start(t)
	for _, topic := range notify.Topics {
		kc.CreateTopic(t, topic, 2)
	}
	breach := func(id string) record.Record {
		return record.Record{Key: []byte("acme"), Value: []byte(`{"breach_id":"` + id + `","tenant":"acme","threshold":"blocked","detected_at":"2026-11-21T19:00:00Z"}`)}
	}
	kc.Write(t, notify.QuotaBreachesTopic, breach("before"))
	run := func() (stop func()) {
		ctx, cancel := context.WithCancel(context.Background())
		r := &notify.Reader{Cluster: kafkalog.Cluster{Brokers: kc.Brokers()}, DB: db.Pool, Rescan: 100 * time.Millisecond,
			Log: slog.New(slog.DiscardHandler)}
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()
		return func() {
			cancel()
			if err := <-done; err != nil {
				t.Error(err)
			}
		}
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	stored := func() int {
		n := 0
		for _, topic := range notify.Topics {
			offs, _ := webhooks.Offsets(context.Background(), db.Pool, topic)
			n += len(offs)
		}
		return n
	}
	stop := run()
	waitFor("every partition's offset stored", func() bool { return stored() == 6 })
	kc.Write(t, notify.QuotaBreachesTopic, breach("b1"), breach("b1"))
	kc.Write(t, notify.AnomaliesTopic, record.Record{Key: []byte("acme"), Value: []byte(
		`{"id":"a1","type":"anomaly.drop","tenant":"acme","meter":"api_calls","hour":"2026-11-21T18:00:00Z","observed":1,"expected":90,"score":"-6","sensitivity":"3","detected_at":"2026-11-21T19:02:00Z"}`)})
	kc.Write(t, notify.BillingEventsTopic,
		record.Record{Key: []byte("acme"), Value: []byte(`{"id":"o1","type":"overage.started","tenant":"acme","occurred_at":"2026-11-21T19:00:00Z","data":{"meter":"tokens"}}`)},
		record.Record{Key: []byte("acme"), Value: []byte(`{"id":"c1","type":"period.closed","tenant":"acme","occurred_at":"2026-11-21T19:00:00Z","data":{}}`)})
	waitFor("3 deliveries", func() bool { return len(deliveries(t, db)) == 3 })
	stop()
	kc.Write(t, notify.QuotaBreachesTopic, breach("b2"))
	stop = run()
	defer stop()
	waitFor("the 4th delivery", func() bool { return len(deliveries(t, db)) == 4 })
	time.Sleep(300 * time.Millisecond)
	got := map[string]int{}
	for _, d := range deliveries(t, db) {
		got[d.EventID]++
	}
	if len(got) != 4 || got["b1"] != 1 || got["a1"] != 1 || got["o1"] != 1 || got["b2"] != 1 || got["before"] != 0 {
		t.Fatalf("deliveries by event id %v", got)
	}
}
