package relay_test

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/kafkalog"
	"github.com/usagemeter/metering/internal/record"
	"github.com/usagemeter/metering/internal/relay"
	"github.com/usagemeter/metering/internal/testkit/kafkatest"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// crashAfterWrite publishes, then fails as a process dying before it marks
// the rows would.
type crashAfterWrite struct{ w relay.Writer }

func (c crashAfterWrite) Write(ctx context.Context, recs ...record.Record) error {
	if err := c.w.Write(ctx, recs...); err != nil {
		return err
	}
	return errors.New("crashed before marking")
}

type down struct{}

func (down) Write(context.Context, ...record.Record) error { return errors.New("broker down") }

func TestAtLeastOnceAcrossCrashes(t *testing.T) {
	db := pgtest.New(t)
	kc := kafkatest.Start(t)
	kc.CreateTopic(t, "quota.breaches", 1)
	ctx := context.Background()
	// A committed batch left two breaches in the outbox, then the process died.
	db.Exec(t, `INSERT INTO outbox (topic, msg_key, msg_value, headers) VALUES
		('quota.breaches', 'acme', '{"breach_id":"b1"}', '{"breach-id":"b1"}'),
		('quota.breaches', 'acme', '{"breach_id":"b2"}', '{"breach-id":"b2"}')`)
	quiet := slog.New(slog.DiscardHandler)
	w := kafkalog.NewWriter(kc.Brokers(), nil)
	defer w.Close()

	newRelay := func(w relay.Writer) *relay.Relay {
		r := relay.New(db.Pool, w, quiet, nil)
		r.SetRetry(relay.DefaultMaxAttempts, 0) // retry at once
		return r
	}
	// Kafka down: nothing published, nothing marked.
	if _, err := newRelay(down{}).PublishPending(ctx); err == nil {
		t.Fatal("PublishPending with Kafka down succeeded")
	}
	// Published, then a crash before marking: the rows stay pending.
	if _, err := newRelay(crashAfterWrite{w}).PublishPending(ctx); err == nil {
		t.Fatal("crash not reported")
	}
	// The restarted relay publishes them again and marks them.
	n, err := newRelay(w).PublishPending(ctx)
	if err != nil || n != 2 {
		t.Fatalf("PublishPending = %d, %v", n, err)
	}
	if n, _ := relay.New(db.Pool, w, quiet, nil).PublishPending(ctx); n != 0 {
		t.Fatalf("published %d rows twice after marking", n)
	}
	msgs := kafkatest.ReadAll(t, kc.Brokers(), "quota.breaches")
	ids := map[string]int{}
	for _, m := range msgs {
		for _, h := range m.Headers {
			if h.Key == "breach-id" {
				ids[string(h.Value)]++
			}
		}
		if string(m.Key) != "acme" {
			t.Errorf("key %q", m.Key)
		}
	}
	// At least once: each breach twice, with its stable id for consumers to dedup.
	if len(msgs) != 4 || ids["b1"] != 2 || ids["b2"] != 2 {
		t.Fatalf("published %d messages, ids %v", len(msgs), ids)
	}
	var pending int
	_ = db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE published_at IS NULL`).Scan(&pending)
	if pending != 0 {
		t.Fatalf("%d rows still pending", pending)
	}
}

func TestRunWakesOnNotify(t *testing.T) {
	db := pgtest.New(t)
	kc := kafkatest.Start(t)
	kc.CreateTopic(t, "quota.breaches", 1)
	w := kafkalog.NewWriter(kc.Brokers(), nil)
	defer w.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- relay.New(db.Pool, w, slog.New(slog.DiscardHandler), nil).Run(ctx) }()
	db.Exec(t, `INSERT INTO outbox (topic, msg_key, msg_value) VALUES ('quota.breaches', 'acme', 'x')`)
	db.Exec(t, `SELECT pg_notify('outbox', '')`)
	for range 200 {
		if len(kafkatest.ReadAll(t, kc.Brokers(), "quota.breaches")) == 1 {
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			return
		}
		select {
		case <-done:
			t.Fatal("relay stopped")
		default:
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("the relay did not publish within 2s")
}
