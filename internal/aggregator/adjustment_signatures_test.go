package aggregator_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/rebuild"
	"github.com/usagemeter/metering/internal/recordsign"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/topics"
)

// TestForgedAdjustmentsAreDeadLetteredEndToEnd: adjustment records written
// straight to usage.events by someone without a signing key (unsigned,
// signed with a guessed secret under a real key id, signed with a key the
// aggregator does not know) are dead letters of class unverified, on
// usage.events.dlq with the reason, and change no window; a signed one,
// sent twice and signed by the key being rotated out, counts once. A
// replay of the dead letters is verified again and refused again, and a
// rebuild, verifying with the same keys, reproduces the windows.
func TestForgedAdjustmentsAreDeadLetteredEndToEnd(t *testing.T) {
	s := newStack(t)
	cfg := s.config()
	stop := s.start(cfg)
	ctx := context.Background()
	now := time.Now().UTC()
	month := windowsMonth(now)
	at := now.Add(-time.Minute)
	if at.Before(month) {
		at = month
	}
	if err := s.producer.Emit(ctx, events.Event{ID: "o-1", Tenant: "acme", Metric: "api_calls", Value: 100, Time: at}); err != nil {
		t.Fatal(err)
	}
	s.waitConsumed("metering-aggregator")
	adj := func(id string, amount int64) rollup.Adjustment {
		return rollup.Adjustment{ID: id, Tenant: "acme", Meter: "api_calls", Group: map[string]string{},
			Period: month.Format("2006-01"), Amount: amount, Reason: "refund", Reference: "T-1"}
	}
	keys := func(s string) *recordsign.Keyring {
		k, err := recordsign.ParseKeys(s)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	unsigned, err := adj("6a1d3c1e-8a4b-4c2d-9e6f-7a8b9c0d1e01", -90).Record()
	if err != nil {
		t.Fatal(err)
	}
	guessed, err := adj("6a1d3c1e-8a4b-4c2d-9e6f-7a8b9c0d1e02", -90).SignedRecord(keys("agg-new="+strings.Repeat("g", 32)), now)
	if err != nil {
		t.Fatal(err)
	}
	unknown, err := adj("6a1d3c1e-8a4b-4c2d-9e6f-7a8b9c0d1e03", -90).SignedRecord(keys("intruder="+strings.Repeat("i", 32)), now)
	if err != nil {
		t.Fatal(err)
	}
	// Ingest not yet given the new key still signs with the old one.
	_, oldKey, _ := strings.Cut(testSigningKeys, ",")
	signed, err := adj("6a1d3c1e-8a4b-4c2d-9e6f-7a8b9c0d1e04", -25).SignedRecord(keys(oldKey), now)
	if err != nil {
		t.Fatal(err)
	}
	s.kc.Write(t, topics.UsageEvents, unsigned, guessed, unknown, signed, signed)
	s.waitConsumed("metering-aggregator")
	if v := s.value("acme", "api_calls", "month", month); v != "75" {
		t.Fatalf("month window = %s, want 75: only the signed adjustment, once", v)
	}
	want := map[string]string{
		"6a1d3c1e-8a4b-4c2d-9e6f-7a8b9c0d1e01": "not signed",
		"6a1d3c1e-8a4b-4c2d-9e6f-7a8b9c0d1e02": "does not match",
		"6a1d3c1e-8a4b-4c2d-9e6f-7a8b9c0d1e03": `unknown signing key "intruder"`,
	}
	checkDead := func(status string, n int) {
		t.Helper()
		rows, err := s.db.Pool.Query(ctx, `SELECT error_class, error, convert_from(payload, 'UTF8') FROM usage_dlq WHERE status = $1`, status)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		got := 0
		for rows.Next() {
			var class, reason, payload string
			if err := rows.Scan(&class, &reason, &payload); err != nil {
				t.Fatal(err)
			}
			got++
			a, err := rollup.DecodeAdjustment([]byte(payload))
			if err != nil || class != rollup.ClassUnverified || !strings.Contains(reason, want[a.ID]) {
				t.Errorf("%s dead letter %s %q of %s (%v), want %s naming %q", status, class, reason, a.ID, err, rollup.ClassUnverified, want[a.ID])
			}
		}
		if got != n {
			t.Errorf("%d %s dead letters, want %d", got, status, n)
		}
	}
	checkDead("pending", 3)
	dlq := s.waitTopic(topics.UsageEventsDLQ, 3)
	for _, m := range dlq {
		for _, h := range m.Headers {
			if h.Key == "error-class" && string(h.Value) != rollup.ClassUnverified {
				t.Errorf("usage.events.dlq error-class %s", h.Value)
			}
		}
	}
	var applied int
	if err := s.db.Pool.QueryRow(ctx, `SELECT count(*) FROM usage_adjustments`).Scan(&applied); err != nil || applied != 1 {
		t.Fatalf("usage_adjustments rows = %d (%v), want 1", applied, err)
	}

	// Replayed, each is verified again: a dead letter again, nothing applied.
	if done, err := rollup.NewDeadLetters(s.db.Pool).Replay(ctx, nil, true, "tester", "replay of forged adjustments"); err != nil || len(done) != 3 {
		t.Fatalf("Replay = %v, %v", done, err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		var pending int
		if err := s.db.Pool.QueryRow(ctx, `SELECT count(*) FROM usage_dlq WHERE status = 'pending'`).Scan(&pending); err != nil {
			t.Fatal(err)
		}
		if pending == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d pending dead letters 60 s after the replay, want the 3 replays refused again", pending)
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.waitConsumed("metering-aggregator")
	checkDead("pending", 3)
	checkDead("replayed", 3)
	if v := s.value("acme", "api_calls", "month", month); v != "75" {
		t.Fatalf("month window after the replay = %s, want 75", v)
	}
	stop()

	// A rebuild reads the same records and verifies them with the same keys.
	rep, err := rebuild.Run(ctx, s.db.Pool, rebuild.Options{
		DatabaseURL: s.db.URL, Brokers: s.kc.Brokers(), Topic: topics.UsageEvents, Group: "metering-aggregator",
		From: month, Horizon: cfg.DedupHorizon, MaxLag: cfg.MaxLag, Logger: slog.New(slog.DiscardHandler),
		AdjustmentSignatures: cfg.AdjustmentSigning.Policy(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Changes) != 0 || !rep.Swapped {
		t.Fatalf("a rebuild changed %+v (swapped %v)", rep.Changes, rep.Swapped)
	}
	if v := s.value("acme", "api_calls", "month", month); v != "75" {
		t.Errorf("month window after the rebuild = %s, want 75", v)
	}
}

// TestAggregatorWithoutKeysAppliesNoAdjustment: an aggregator started
// without ADJUSTMENT_SIGNING_KEYS dead-letters even a signed adjustment,
// saying so; once restarted with the key, a replay applies it once.
func TestAggregatorWithoutKeysAppliesNoAdjustment(t *testing.T) {
	s := newStack(t)
	withKeys := s.config()
	stop := s.start(s.configEnv(nil))
	ctx := context.Background()
	now := time.Now().UTC()
	month := windowsMonth(now)
	at := now.Add(-time.Minute)
	if at.Before(month) {
		at = month
	}
	if err := s.producer.Emit(ctx, events.Event{ID: "o-1", Tenant: "acme", Metric: "api_calls", Value: 100, Time: at}); err != nil {
		t.Fatal(err)
	}
	rec, err := rollup.Adjustment{ID: "6a1d3c1e-8a4b-4c2d-9e6f-7a8b9c0d1e05", Tenant: "acme", Meter: "api_calls", Group: map[string]string{},
		Period: month.Format("2006-01"), Amount: -40}.SignedRecord(withKeys.AdjustmentSigning.Keys, now)
	if err != nil {
		t.Fatal(err)
	}
	s.kc.Write(t, topics.UsageEvents, rec)
	s.waitConsumed("metering-aggregator")
	var reason string
	if err := s.db.Pool.QueryRow(ctx, `SELECT error FROM usage_dlq WHERE error_class = $1`, rollup.ClassUnverified).Scan(&reason); err != nil ||
		!strings.Contains(reason, "ADJUSTMENT_SIGNING_KEYS") {
		t.Fatalf("dead letter reason %q (%v)", reason, err)
	}
	if v := s.value("acme", "api_calls", "month", month); v != "100" {
		t.Fatalf("month window = %s, want 100", v)
	}
	stop()
	s.start(withKeys)
	if done, err := rollup.NewDeadLetters(s.db.Pool).Replay(ctx, nil, true, "tester", "keys configured"); err != nil || len(done) != 1 {
		t.Fatalf("Replay = %v, %v", done, err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for s.value("acme", "api_calls", "month", month) != "60" {
		if time.Now().After(deadline) {
			t.Fatalf("month window = %s 60 s after the replay, want 60", s.value("acme", "api_calls", "month", month))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
