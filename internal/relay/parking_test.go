package relay_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/usagemeter/metering/internal/kafkalog"
	"github.com/usagemeter/metering/internal/record"
	"github.com/usagemeter/metering/internal/relay"
	"github.com/usagemeter/metering/internal/storage/outbox"
	"github.com/usagemeter/metering/internal/testkit/kafkatest"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

var quiet = slog.New(slog.DiscardHandler)

func insert(t *testing.T, db *pgtest.DB, topic, key string, value []byte, headers string) int64 {
	t.Helper()
	var id int64
	if err := db.Pool.QueryRow(context.Background(), `INSERT INTO outbox (topic, msg_key, msg_value, headers)
		VALUES ($1, $2, $3, $4::jsonb) RETURNING id`, topic, []byte(key), value, headers).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

func metric(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range families {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

func headerValues(msgs []kafka.Message, header string) []string {
	var out []string
	for _, m := range msgs {
		for _, h := range m.Headers {
			if h.Key == header {
				out = append(out, string(h.Value))
			}
		}
	}
	return out
}

func TestMessageKafkaRefusesIsParkedAndNeverBlocksTheOthers(t *testing.T) {
	t.Parallel()
	big := bytes.Repeat([]byte("x"), 8000)
	tests := []struct {
		name   string
		broker []kfake.Opt
		opts   []kafkalog.WriterOption
		wrap   func(relay.Writer) relay.Writer
		topic  string // of the refused message
		value  []byte
	}{
		{name: "over the broker's message.max.bytes", broker: []kfake.Opt{kfake.BrokerConfigs(map[string]string{"message.max.bytes": "4096"})},
			topic: "usage.events.dlq", value: big},
		{name: "over the writer's batch bytes", opts: []kafkalog.WriterOption{kafkalog.MaxBatchBytes(4096)},
			topic: "usage.events.dlq", value: big},
		{name: "invalid topic", wrap: func(w relay.Writer) relay.Writer { return refuseTopic{w, "no such topic!"} },
			topic: "no such topic!", value: []byte("{}")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			db := pgtest.New(t)
			kc := kafkatest.Start(t, tc.broker...)
			kc.CreateTopic(t, "quota.breaches", 1)
			kc.CreateTopic(t, "usage.events.dlq", 1)
			w := kafkalog.NewWriter(kc.Brokers(), nil, tc.opts...)
			defer w.Close()
			ctx := context.Background()
			// One partition per topic, one key: the refused message shares
			// a broker batch with the dead letter behind it.
			insert(t, db, "quota.breaches", "acme", []byte(`{"breach_id":"b1"}`), `{"id":"b1"}`)
			refused := insert(t, db, tc.topic, "acme", tc.value, `{"id":"refused"}`)
			insert(t, db, "quota.breaches", "acme", []byte(`{"breach_id":"b2"}`), `{"id":"b2"}`)
			insert(t, db, "usage.events.dlq", "acme", []byte(`{}`), `{"id":"d1"}`)

			reg := prometheus.NewRegistry()
			var ow relay.Writer = w
			if tc.wrap != nil {
				ow = tc.wrap(w)
			}
			var logged bytes.Buffer
			rl := relay.New(db.Pool, ow, slog.New(slog.NewJSONHandler(&logged, nil)), reg)
			n, err := rl.PublishPending(ctx)
			if err != nil || n != 3 {
				t.Fatalf("PublishPending = %d, %v; want the 3 messages around the refused one", n, err)
			}
			if got := headerValues(kafkatest.ReadAll(t, kc.Brokers(), "quota.breaches"), "id"); fmt.Sprint(got) != "[b1 b2]" {
				t.Errorf("quota.breaches got %v", got)
			}
			if got := headerValues(kafkatest.ReadAll(t, kc.Brokers(), "usage.events.dlq"), "id"); fmt.Sprint(got) != "[d1]" {
				t.Errorf("usage.events.dlq got %v", got)
			}
			parked, err := outbox.ListParked(ctx, db.Pool)
			if err != nil || len(parked) != 1 {
				t.Fatalf("Parked = %+v, %v", parked, err)
			}
			if p := parked[0]; p.ID != refused || p.Attempts != 1 || p.LastError == "" || p.Bytes != len(tc.value) || string(p.Key) != "acme" {
				t.Errorf("parked %+v", p)
			}
			for _, m := range []struct {
				name string
				want float64
			}{{"metering_outbox_pending", 0}, {"metering_outbox_parked", 1}, {"metering_outbox_parked_total", 1}, {"metering_outbox_published_total", 3}} {
				if got := metric(t, reg, m.name); got != m.want {
					t.Errorf("%s = %v, want %v", m.name, got, m.want)
				}
			}
			// On-call is alerted: one error naming the row and the reason.
			if !strings.Contains(logged.String(), `"level":"ERROR","msg":"outbox message parked`) ||
				!strings.Contains(logged.String(), fmt.Sprintf(`"id":%d`, refused)) {
				t.Errorf("no error logged for the parked message:\n%s", logged.String())
			}
			// Parked stays parked: the next round has nothing to do.
			if n, err := rl.PublishPending(ctx); err != nil || n != 0 {
				t.Fatalf("second round = %d, %v", n, err)
			}
			// On-call retries it: back in line, parked again by the next round.
			if n, err := relay.Unpark(ctx, db.Pool); err != nil || n != 1 {
				t.Fatalf("Unpark = %d, %v", n, err)
			}
			if p, _ := outbox.ListParked(ctx, db.Pool); len(p) != 0 {
				t.Fatalf("still parked after Unpark: %+v", p)
			}
			if n, err := rl.PublishPending(ctx); err != nil || n != 0 {
				t.Fatalf("round after Unpark = %d, %v", n, err)
			}
			if p, _ := outbox.ListParked(ctx, db.Pool); len(p) != 1 || p[0].Attempts != 1 {
				t.Fatalf("after Unpark and a round: %+v", p)
			}
		})
	}
}

// refuseTopic answers as Apache Kafka does for a topic name it can never
// create (kfake creates any name).
type refuseTopic struct {
	w     relay.Writer
	topic string
}

func (r refuseTopic) Write(ctx context.Context, recs ...record.Record) error {
	for _, rec := range recs {
		if rec.Topic == r.topic {
			return fmt.Errorf("metadata of %s: %w", r.topic, kafka.InvalidTopic)
		}
	}
	return r.w.Write(ctx, recs...)
}

// failKey fails every message with key bad with a retriable error, as a
// partition without a leader would, and writes the others.
type failKey struct {
	w   relay.Writer
	bad string
}

func (f failKey) Write(ctx context.Context, recs ...record.Record) error {
	errs := make(kafka.WriteErrors, len(recs))
	var good []record.Record
	for i, rec := range recs {
		if string(rec.Key) == f.bad {
			errs[i] = kafka.LeaderNotAvailable
		} else {
			good = append(good, rec)
		}
	}
	if err := f.w.Write(ctx, good...); err != nil {
		return err
	}
	if errs.Count() == 0 {
		return nil
	}
	return errs
}

func pendingAttempts(t *testing.T, db *pgtest.DB, id int64) (attempts int, published, parked bool) {
	t.Helper()
	if err := db.Pool.QueryRow(context.Background(), `SELECT attempts, published_at IS NOT NULL, parked_at IS NOT NULL FROM outbox WHERE id = $1`,
		id).Scan(&attempts, &published, &parked); err != nil {
		t.Fatal(err)
	}
	return attempts, published, parked
}

func TestMessageFailingMaxAttemptsIsParked(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	kc := kafkatest.Start(t)
	w := kafkalog.NewWriter(kc.Brokers(), nil)
	defer w.Close()
	ctx := context.Background()
	rl := relay.New(db.Pool, failKey{w, "bad"}, quiet, nil)
	rl.SetRetry(3, 0)
	bad1 := insert(t, db, "quota.breaches", "bad", []byte("1"), `{}`)
	bad2 := insert(t, db, "quota.breaches", "bad", []byte("2"), `{}`)
	for round := 1; round <= 3; round++ {
		// Kafka accepts another message in each round: the failures are
		// the bad key's own.
		insert(t, db, "quota.breaches", "acme", []byte("ok"), `{}`)
		if n, err := rl.PublishPending(ctx); err != nil || n != 1 {
			t.Fatalf("round %d: PublishPending = %d, %v", round, n, err)
		}
		for _, id := range []int64{bad1, bad2} {
			attempts, published, parked := pendingAttempts(t, db, id)
			if attempts != round || published || parked != (round == 3) {
				t.Fatalf("round %d, row %d: attempts %d, published %v, parked %v", round, id, attempts, published, parked)
			}
		}
	}
	parked, err := outbox.ListParked(ctx, db.Pool)
	if err != nil || len(parked) != 2 || parked[0].LastError == "" {
		t.Fatalf("Parked = %+v, %v", parked, err)
	}
}

func TestFailedMessageHoldsBackLaterMessagesOfItsKey(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	kc := kafkatest.Start(t)
	w := kafkalog.NewWriter(kc.Brokers(), nil)
	defer w.Close()
	ctx := context.Background()
	flaky := relay.New(db.Pool, failKey{w, "acme"}, quiet, nil)
	flaky.SetRetry(10, time.Hour)
	first := insert(t, db, "quota.breaches", "acme", []byte("1"), `{}`)
	insert(t, db, "quota.breaches", "globex", []byte("g"), `{}`)
	if n, err := flaky.PublishPending(ctx); err != nil || n != 1 {
		t.Fatalf("PublishPending = %d, %v", n, err)
	}
	// The partition is back, but acme's first message waits for its retry:
	// the next acme message must not overtake it.
	second := insert(t, db, "quota.breaches", "acme", []byte("2"), `{}`)
	insert(t, db, "quota.breaches", "globex", []byte("g"), `{}`)
	rl := relay.New(db.Pool, w, quiet, nil)
	if n, err := rl.PublishPending(ctx); err != nil || n != 1 {
		t.Fatalf("PublishPending = %d, %v", n, err)
	}
	if _, published, _ := pendingAttempts(t, db, second); published {
		t.Fatal("a later message of the key overtook the one waiting for its retry")
	}
	db.Exec(t, `UPDATE outbox SET retry_at = now() WHERE id = $1`, first)
	if n, err := rl.PublishPending(ctx); err != nil || n != 2 {
		t.Fatalf("after the retry delay: PublishPending = %d, %v", n, err)
	}
	var acme []string
	for _, m := range kafkatest.ReadAll(t, kc.Brokers(), "quota.breaches") {
		if string(m.Key) == "acme" {
			acme = append(acme, string(m.Value))
		}
	}
	if fmt.Sprint(acme) != "[1 2]" {
		t.Fatalf("acme's messages reached Kafka as %v", acme)
	}
}

func TestFailingKeyNeverHidesTheOtherKeys(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	kc := kafkatest.Start(t)
	w := kafkalog.NewWriter(kc.Brokers(), nil)
	defer w.Close()
	ctx := context.Background()
	// More rows of the failing key than one round takes, then another key.
	db.Exec(t, `INSERT INTO outbox (topic, msg_key, msg_value) SELECT 'quota.breaches', 'bad', g::text::bytea FROM generate_series(1, 600) g`)
	acme := insert(t, db, "quota.breaches", "acme", []byte("ok"), `{}`)
	rl := relay.New(db.Pool, failKey{w, "bad"}, quiet, nil)
	rl.SetRetry(3, time.Hour)
	if _, err := rl.PublishPending(ctx); err == nil {
		t.Fatal("a round in which every message failed reported no error")
	}
	if n, err := rl.PublishPending(ctx); err != nil || n != 1 {
		t.Fatalf("next round = %d, %v; want acme's message", n, err)
	}
	if _, published, _ := pendingAttempts(t, db, acme); !published {
		t.Fatal("acme's message not published")
	}
}

func TestKafkaOutageParksNothing(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	id := insert(t, db, "quota.breaches", "acme", []byte("1"), `{}`)
	reg := prometheus.NewRegistry()
	rl := relay.New(db.Pool, down{}, quiet, reg)
	rl.SetRetry(1, 0)
	for range 3 {
		if _, err := rl.PublishPending(ctx); err == nil {
			t.Fatal("PublishPending with Kafka down succeeded")
		}
	}
	if attempts, published, parked := pendingAttempts(t, db, id); attempts != 0 || published || parked {
		t.Fatalf("after an outage: attempts %d, published %v, parked %v", attempts, published, parked)
	}
	if got := metric(t, reg, "metering_outbox_pending"); got != 1 {
		t.Fatalf("metering_outbox_pending = %v during the outage, want 1", got)
	}
}

func TestRoundsOfRelaysNeverOverlap(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	insert(t, db, "quota.breaches", "acme", []byte("1"), `{}`)
	// Another relay is in a round.
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(1869968482, 1)`); err != nil {
		t.Fatal(err)
	}
	if n, err := relay.New(db.Pool, down{}, quiet, nil).PublishPending(ctx); err != nil || n != 0 {
		t.Fatalf("PublishPending during another relay's round = %d, %v; want 0, nil without writing", n, err)
	}
}

// slowWriter takes its time, as a broker across a network does, so that
// relays' rounds would overlap if they could.
type slowWriter struct{ w relay.Writer }

func (s slowWriter) Write(ctx context.Context, recs ...record.Record) error {
	time.Sleep(20 * time.Millisecond)
	return s.w.Write(ctx, recs...)
}

// TestTwoRelaysPublishEachRowOnceInKeyOrder runs two relays, as the
// aggregator and the biller do, against one database while transactions
// keep writing rows.
func TestTwoRelaysPublishEachRowOnceInKeyOrder(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	kc := kafkatest.Start(t)
	kc.CreateTopic(t, "quota.breaches", 4)
	ctx, cancel := context.WithCancel(context.Background())
	const keys, rows, perTx = 8, 2400, 1200
	seq := make([]int, keys)
	write := func(n int) {
		t.Helper()
		err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			for i := range n {
				k := i % keys
				seq[k]++
				if _, err := tx.Exec(ctx, `INSERT INTO outbox (topic, msg_key, msg_value, headers) VALUES ('quota.breaches', $1, $2, '{}')`,
					[]byte("tenant-"+strconv.Itoa(k)), []byte(strconv.Itoa(seq[k]))); err != nil {
					return err
				}
			}
			_, err := tx.Exec(ctx, `SELECT pg_notify('outbox', '')`)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// More rows than one round takes, waiting before the relays start: each
	// relay could otherwise take a batch of its own at once.
	write(perTx)
	var wg sync.WaitGroup
	for range 2 {
		w := kafkalog.NewWriter(kc.Brokers(), nil)
		defer w.Close()
		rl := relay.New(db.Pool, slowWriter{w}, quiet, nil)
		wg.Go(func() { _ = rl.Run(ctx) })
	}
	defer func() { cancel(); wg.Wait() }()
	for range (rows - perTx) / 20 {
		write(20)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		var pending int
		if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE published_at IS NULL`).Scan(&pending); err != nil {
			t.Fatal(err)
		}
		if pending == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d rows still pending after 20s", pending)
		}
		time.Sleep(20 * time.Millisecond)
	}
	msgs := kafkatest.ReadAll(t, kc.Brokers(), "quota.breaches")
	if len(msgs) != rows {
		t.Fatalf("Kafka holds %d messages, want %d: each row exactly once", len(msgs), rows)
	}
	last := map[string]int{}
	for _, m := range msgs {
		n, _ := strconv.Atoi(string(m.Value))
		if n != last[string(m.Key)]+1 {
			t.Fatalf("%s: message %d after %d", m.Key, n, last[string(m.Key)])
		}
		last[string(m.Key)] = n
	}
}
