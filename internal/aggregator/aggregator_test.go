package aggregator_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/aggregator"
	"github.com/usagemeter/metering/internal/config"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/kafkatest"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/topics"
)

type stack struct {
	t        *testing.T
	db       *pgtest.DB
	kc       *kafkatest.Cluster
	producer *events.Producer
	addr     string // HTTP address of the aggregator started last
}

func newStack(t *testing.T) *stack {
	t.Helper()
	db := pgtest.New(t)
	kc := kafkatest.Start(t, kfake.GroupMinSessionTimeout(100*time.Millisecond))
	for _, topic := range topics.All {
		kc.CreateTopic(t, topic, 4)
	}
	p, err := events.NewProducer(events.ProducerConfig{Brokers: kc.Brokers()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return &stack{t: t, db: db, kc: kc, producer: p}
}

// testSigningKeys are the aggregators' ADJUSTMENT_SIGNING_KEYS in these
// tests: a rotation in progress, agg-new signing and agg-old still
// verifying.
const testSigningKeys = "agg-new=" + "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn" + ",agg-old=" + "oooooooooooooooooooooooooooooooo"

func (s *stack) config(extra ...string) config.Aggregator {
	s.t.Helper()
	return s.configEnv(map[string]string{"ADJUSTMENT_SIGNING_KEYS": testSigningKeys}, extra...)
}

// configEnv is config with the environment env instead of the test keys.
func (s *stack) configEnv(env map[string]string, extra ...string) config.Aggregator {
	s.t.Helper()
	args := append([]string{"-database-url", s.db.URL, "-kafka-brokers", s.kc.Addr(), "-http-addr", "127.0.0.1:0",
		"-session-timeout", "1s", "-batch-wait", "20ms"}, extra...)
	cfg, _, err := config.LoadAggregator("aggregator", args, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		s.t.Fatal(err)
	}
	return cfg
}

// start runs an aggregator until the returned stop is called.
func (s *stack) start(cfg config.Aggregator) (stop func()) {
	s.t.Helper()
	return s.startLogged(cfg, io.Discard)
}

// startLogged is start with the aggregator's log written to w.
func (s *stack) startLogged(cfg config.Aggregator, w io.Writer) (stop func()) {
	s.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	addr := make(chan net.Addr, 1)
	log := slog.New(slog.NewJSONHandler(w, nil))
	go func() { done <- aggregator.Run(ctx, cfg, log, func(a net.Addr) { addr <- a }) }()
	select {
	case a := <-addr:
		s.addr = a.String()
	case err := <-done:
		s.t.Fatalf("aggregator.Run: %v", err)
	}
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			s.t.Errorf("aggregator.Run: %v", err)
		}
	}
	s.t.Cleanup(stop)
	return stop
}

func (s *stack) raw(value string, tenant string) {
	s.t.Helper()
	s.kc.Write(s.t, topics.UsageEvents, rollup.Record{Key: []byte(tenant), Value: []byte(value)})
}

// waitConsumed waits until the group's stored offsets cover every record
// in usage.events.
func (s *stack) waitConsumed(group string) {
	s.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ends, err := kafkatest.EndOffsets(context.Background(), s.kc.Brokers(), topics.UsageEvents)
		if err != nil {
			s.t.Fatal(err)
		}
		var total int64
		for _, end := range ends {
			total += end
		}
		var consumed int64
		if err := s.db.Pool.QueryRow(context.Background(), `SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets
			WHERE consumer_group = $1`, group).Scan(&consumed); err != nil {
			s.t.Fatal(err)
		}
		if consumed == total {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("consumed %d of %d records after 60s", consumed, total)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *stack) waitTopic(topic string, n int) []kafka.Message {
	s.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		msgs := kafkatest.ReadAll(s.t, s.kc.Brokers(), topic)
		if len(msgs) >= n {
			return msgs
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%s has %d messages after 30s, want %d", topic, len(msgs), n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *stack) value(tenant, metric, granularity string, start time.Time) string {
	s.t.Helper()
	var v string
	err := s.db.Pool.QueryRow(context.Background(), `SELECT coalesce((SELECT value::text FROM usage_windows
		WHERE tenant = $1 AND meter = $2 AND granularity = $3 AND window_start = $4), 'none')`, tenant, metric, granularity, start).Scan(&v)
	if err != nil {
		s.t.Fatal(err)
	}
	return v
}

func header(m kafka.Message, k string) string {
	for _, h := range m.Headers {
		if h.Key == k {
			return string(h.Value)
		}
	}
	return ""
}

func TestEveryRecordEndsWhereTheDesignSays(t *testing.T) {
	s := newStack(t)
	ctx := context.Background()
	st := accounts.New(s.db.Pool)
	limit := int64(10)
	if _, err := st.PutPlan(ctx, accounts.Plan{Name: "free", Quotas: []accounts.Quota{
		{Metric: "api_calls", Limit: &limit, Period: "month", Hard: true, StripeEventName: "api_calls"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutTenant(ctx, accounts.Tenant{Tenant: "acme", Plan: "free"}); err != nil {
		t.Fatal(err)
	}
	// A short horizon first, to dead-letter an event that is too old for it.
	stop := s.start(s.config("-dedup-horizon", "48h"))

	now := time.Now().UTC()
	month := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	lastMonth := month.AddDate(0, 0, -1)
	var evs []events.Event
	for i := range 12 {
		evs = append(evs, events.Event{ID: fmt.Sprint("call-", i), Tenant: "acme", Metric: "api_calls", Value: 1, Time: now})
	}
	if err := s.producer.Emit(ctx, evs...); err != nil {
		t.Fatal(err)
	}
	dup := evs[3]
	conflict := evs[4]
	conflict.Value = 1000
	late := events.Event{ID: "late-1", Tenant: "acme", Metric: "tokens", Value: 7, Time: lastMonth}
	threeDaysOld := events.Event{ID: "old-1", Tenant: "acme", Metric: "tokens", Value: 5, Time: now.Add(-72 * time.Hour)}
	if err := s.producer.Emit(ctx, dup, conflict, late, threeDaysOld); err != nil {
		t.Fatal(err)
	}
	s.raw("this is not an event", "acme")
	s.waitConsumed("metering-aggregator")

	if v := s.value("acme", "api_calls", "month", month); v != "1011" {
		t.Errorf("api_calls this month = %s, want 1011 (the duplicate counts once; the conflicting resend of call-4 raises it from 1 to 1000)", v)
	}
	// Early in a month, last month's event is within the short horizon and
	// counts at once, in its own window; later it is a dead letter until
	// the replay below.
	lateIsDead := lastMonth.Before(now.Add(-48 * time.Hour))
	if !lateIsDead {
		if v := s.value("acme", "tokens", "month", windowsMonth(lastMonth)); v != "7" {
			t.Errorf("late tokens in their own month = %s, want 7", v)
		}
	}
	var conflicts int
	_ = s.db.Pool.QueryRow(ctx, `SELECT count(*) FROM ledger_conflicts WHERE event_id = 'call-4' AND resolution = 'raised'`).Scan(&conflicts)
	if conflicts != 1 {
		t.Errorf("%d raised conflicts recorded for call-4, want 1", conflicts)
	}

	// Breaches: warning (8), exceeded (10), blocked (11), once each, on quota.breaches.
	breaches := s.waitTopic(topics.QuotaBreaches, 3)
	var thresholds []string
	for _, m := range breaches {
		var b map[string]any
		if err := json.Unmarshal(m.Value, &b); err != nil {
			t.Fatal(err)
		}
		thresholds = append(thresholds, b["threshold"].(string))
		if string(m.Key) != "acme" || b["breach_id"] == "" {
			t.Errorf("breach message %s / %s", m.Key, m.Value)
		}
	}
	if strings.Join(thresholds, ",") != "warning,exceeded,blocked" {
		t.Errorf("breaches = %v", thresholds)
	}

	// Dead letters: the poison record and the too-old event, with reasons.
	wantDead := 2
	if lateIsDead {
		wantDead = 3
	}
	dead := s.waitTopic(topics.UsageEventsDLQ, wantDead)
	classes := map[string]bool{}
	for _, m := range dead {
		classes[header(m, "error-class")] = true
		for _, h := range []string{"error", "error-class", "source-topic", "source-partition", "source-offset", "failed-at"} {
			if header(m, h) == "" {
				t.Errorf("DLQ message lacks header %s", h)
			}
		}
	}
	if !classes["undecodable"] || !classes["too_old"] {
		t.Errorf("DLQ classes = %v", classes)
	}
	// What on-call sees on /metrics and /readyz says the same.
	s.expectMetrics(map[string]int{
		`metering_aggregator_events_total{outcome="duplicate"}`:    1,
		`metering_aggregator_events_total{outcome="conflict"}`:     1,
		`metering_aggregator_conflicts_total{resolution="raised"}`: 1,
		`metering_aggregator_conflicts_total{resolution="held"}`:   0,
		`metering_aggregator_conflicts_held`:                       0,
		`metering_aggregator_events_total{outcome="dead_letter"}`:  wantDead,
		`metering_aggregator_breaches_total{threshold="warning"}`:  1,
		`metering_aggregator_breaches_total{threshold="exceeded"}`: 1,
		`metering_aggregator_breaches_total{threshold="blocked"}`:  1,
		`metering_aggregator_assigned_partitions`:                  4,
	})
	stop()

	// The cause is fixed (the horizon is back to 35 days): replay drains
	// what can now be counted; the poison record comes back as a dead letter.
	cfg := s.config()
	var out bytes.Buffer
	if err := aggregator.DLQCommand(ctx, cfg, slog.New(slog.DiscardHandler), "replay", []string{"--all", "--actor", "oncall"}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), fmt.Sprintf("replayed %d dead letters", wantDead)) {
		t.Errorf("replay said %q", out.String())
	}
	s.start(cfg)
	s.waitConsumed("metering-aggregator")
	if v := s.value("acme", "tokens", "day", threeDaysOld.Time.Truncate(24*time.Hour)); v != "5" {
		t.Errorf("replayed event's day = %s, want 5", v)
	}
	// In the first three days of a month the three-day-old event also
	// falls in last month, a closed period: it adds to that month and to
	// its corrections. Corrections are summed, not counted: one batch
	// records one correction per tenant, metric and month, and whether the
	// two late events share a batch depends on the day (both are dead
	// letters replayed together after the second day of a month).
	wantLastMonth, wantEvents := "7", 1
	if windowsMonth(threeDaysOld.Time).Equal(windowsMonth(lastMonth)) {
		wantLastMonth, wantEvents = "12", 2
	}
	if v := s.value("acme", "tokens", "month", windowsMonth(lastMonth)); v != wantLastMonth {
		t.Errorf("late tokens in their own month = %s, want %s", v, wantLastMonth)
	}
	var corrected string
	var correctedEvents int
	_ = s.db.Pool.QueryRow(ctx, `SELECT coalesce(sum(value), 0)::text, coalesce(sum(events), 0) FROM usage_corrections
		WHERE tenant = 'acme' AND metric = 'tokens' AND period_start = $1`, windowsMonth(lastMonth)).Scan(&corrected, &correctedEvents)
	if corrected != wantLastMonth || correctedEvents != wantEvents {
		t.Errorf("corrections for last month's late usage: %s in %d events, want %s in %d", corrected, correctedEvents, wantLastMonth, wantEvents)
	}
	out.Reset()
	if err := aggregator.DLQCommand(ctx, cfg, slog.New(slog.DiscardHandler), "list", nil, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "1 dead letters") || !strings.Contains(out.String(), "undecodable") {
		t.Errorf("after replay, pending dead letters:\n%s", out.String())
	}
	var audited int
	_ = s.db.Pool.QueryRow(ctx, `SELECT count(*) FROM audit_log WHERE action = 'dlq.usage.replay' AND actor = 'cli:oncall' AND after = '{"status":"replayed"}'`).Scan(&audited)
	if audited != wantDead { // one row per dead letter
		t.Errorf("replay not audited")
	}
	// The poison record cannot be fixed: discard it, on the record.
	var poisonID string
	_ = s.db.Pool.QueryRow(ctx, `SELECT id::text FROM usage_dlq WHERE status = 'pending'`).Scan(&poisonID)
	out.Reset()
	if err := aggregator.DLQCommand(ctx, cfg, slog.New(slog.DiscardHandler), "discard", []string{poisonID, "--actor", "oncall", "--note", "garbage from a test client"}, &out); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	_ = aggregator.DLQCommand(ctx, cfg, slog.New(slog.DiscardHandler), "list", nil, &out)
	if !strings.Contains(out.String(), "0 dead letters") {
		t.Errorf("after discard:\n%s", out.String())
	}
	if err := aggregator.DLQCommand(ctx, cfg, slog.New(slog.DiscardHandler), "discard", []string{poisonID, "--actor", "oncall"}, &out); err == nil {
		t.Errorf("discarding twice succeeded")
	}
	_ = s.db.Pool.QueryRow(ctx, `SELECT count(*) FROM audit_log WHERE action = 'dlq.usage.discard' AND target = 'usage_dlq:' || $1 AND note = 'garbage from a test client'`, poisonID).Scan(&audited)
	if audited != 1 {
		t.Errorf("discard not audited")
	}
}

func windowsMonth(t time.Time) time.Time {
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
}

func TestRetentionDeletesPastTheHorizon(t *testing.T) {
	db := pgtest.New(t)
	db.LedgerEventsWritable(t)
	db.Exec(t, `INSERT INTO ledger_events (tenant, event_id, payload_hash, metric, value, event_time, event_day, src_partition, src_offset)
		SELECT 'acme', 'e' || g, 0, 'm', 1, now() - make_interval(days => g), (now() - make_interval(days => g))::date, 0, g
		FROM generate_series(0, 39) g`)
	n, err := usagedata.DeleteExpired(context.Background(), db.Pool, time.Now().Add(-35*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	var left int
	_ = db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM ledger`).Scan(&left)
	if n != 4 || left != 36 {
		t.Fatalf("deleted %d, %d left; want 4 deleted (days 36-39), 36 left", n, left)
	}
}

// expectMetrics scrapes the aggregator started last until every named
// sample has its value (metrics follow the commit by a moment), and checks
// that /readyz answers 200.
func (s *stack) expectMetrics(want map[string]int) {
	s.t.Helper()
	resp, err := http.Get("http://" + s.addr + "/readyz")
	if err != nil {
		s.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		s.t.Errorf("/readyz: %d while consuming", resp.StatusCode)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := http.Get("http://" + s.addr + "/metrics")
		if err != nil {
			s.t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got := map[string]string{}
		for _, line := range strings.Split(string(body), "\n") {
			if name, value, ok := strings.Cut(line, " "); ok && !strings.HasPrefix(line, "#") {
				got[name] = value
			}
		}
		var wrong []string
		for name, v := range want {
			if got[name] != strconv.Itoa(v) {
				wrong = append(wrong, fmt.Sprintf("%s = %q, want %d", name, got[name], v))
			}
		}
		if len(wrong) == 0 {
			return
		}
		if time.Now().After(deadline) {
			s.t.Errorf("metrics after 5s:\n%s", strings.Join(wrong, "\n"))
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}
