package rollup_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/recordsign"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// replayedRecords reads the replays queued in the outbox as the records
// the relay would write, from offset on.
func replayedRecords(t *testing.T, db *pgtest.DB, offset int64) []rollup.Record {
	t.Helper()
	rows, err := db.Pool.Query(context.Background(), `SELECT msg_key, msg_value, headers FROM outbox WHERE topic = 'usage.events' ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var recs []rollup.Record
	for rows.Next() {
		var key, value, raw []byte
		if err := rows.Scan(&key, &value, &raw); err != nil {
			t.Fatal(err)
		}
		var hs map[string]string
		if err := json.Unmarshal(raw, &hs); err != nil {
			t.Fatal(err)
		}
		rec := rollup.Record{Offset: offset + int64(len(recs)), Key: key, Value: value, Time: now}
		for _, k := range slices.Sorted(maps.Keys(hs)) {
			rec.Headers = append(rec.Headers, rollup.Header{Key: k, Value: []byte(hs[k])})
		}
		recs = append(recs, rec)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return recs
}

// TestUnverifiedAdjustmentsAreDeadLetters: an adjustment record that is
// unsigned, signed by an unknown key, tampered with or carries malformed
// signature headers is a dead letter of class unverified with the
// reason, never applied; replaying it from the dead-letter queue has it
// verified again (and refused again), while a signed adjustment refused
// only because the aggregator lacked the key applies once replayed to an
// aggregator that has it.
func TestUnverifiedAdjustmentsAreDeadLetters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a, db := newAgg(t)
	if _, err := a.Apply(ctx, 0, 0, batch(0, ev("e1", "acme", "api_calls", 100, now.Add(-time.Hour)))); err != nil {
		t.Fatal(err)
	}
	adj := func(id string) rollup.Adjustment {
		return rollup.Adjustment{ID: id, Tenant: "acme", Meter: "api_calls", Group: map[string]string{}, Period: "2026-11", Amount: -30}
	}
	unsigned, err := adj("0b7a6a8e-5d4c-4f7a-9a52-6f0c1e2d3b01").Record()
	if err != nil {
		t.Fatal(err)
	}
	otherKeys, err := recordsign.ParseKeys("intruder=" + strings.Repeat("x", 32))
	if err != nil {
		t.Fatal(err)
	}
	unknownKey, err := adj("0b7a6a8e-5d4c-4f7a-9a52-6f0c1e2d3b02").SignedRecord(otherKeys, now)
	if err != nil {
		t.Fatal(err)
	}
	tampered := adjRecord(t, 0, adj("0b7a6a8e-5d4c-4f7a-9a52-6f0c1e2d3b03"))
	tampered.Value = []byte(strings.Replace(string(tampered.Value), "-30", "-99", 1))
	malformed := adjRecord(t, 0, adj("0b7a6a8e-5d4c-4f7a-9a52-6f0c1e2d3b04"))
	malformed.Headers = append(malformed.Headers, rollup.Header{Key: recordsign.HeaderSignature, Value: []byte("v1=00")})
	cases := []struct {
		name   string
		rec    rollup.Record
		reason string
	}{
		{"unsigned", unsigned, "not signed"},
		{"unknown key", unknownKey, `unknown signing key "intruder"`},
		{"tampered value", tampered, "does not match"},
		{"repeated signature header", malformed, "malformed"},
	}
	recs := make([]rollup.Record, len(cases))
	for i, c := range cases {
		recs[i] = c.rec
		recs[i].Offset, recs[i].Time = int64(i+1), now
	}
	res, err := a.Apply(ctx, 0, 1, recs)
	if err != nil {
		t.Fatal(err)
	}
	if res.Adjusted != 0 || res.DeadLettered != len(cases) {
		t.Fatalf("result %+v, want %d dead letters and nothing adjusted", res, len(cases))
	}
	for i, c := range cases {
		var class, reason string
		if err := db.Pool.QueryRow(ctx, `SELECT error_class, error FROM usage_dlq WHERE source_offset = $1`, i+1).Scan(&class, &reason); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if class != rollup.ClassUnverified || !strings.Contains(reason, c.reason) {
			t.Errorf("%s: dead letter %s %q, want %s naming %q", c.name, class, reason, rollup.ClassUnverified, c.reason)
		}
		if strings.Contains(reason, strings.Repeat("s", 32)) || strings.Contains(reason, strings.Repeat("x", 32)) {
			t.Errorf("%s: the reason shows a secret: %q", c.name, reason)
		}
	}
	// An aggregator without keys refuses even a signed adjustment.
	noKeys := rollup.New(db.Pool, rollup.Config{Group: "test", Topic: "usage.events", Now: func() time.Time { return now }, Logger: slog.New(slog.DiscardHandler)})
	signed := adjRecord(t, 5, adj("0b7a6a8e-5d4c-4f7a-9a52-6f0c1e2d3b05"))
	if res, err = noKeys.Apply(ctx, 0, 5, []rollup.Record{signed}); err != nil || res.DeadLettered != 1 || res.Adjusted != 0 {
		t.Fatalf("no keys: %+v %v", res, err)
	}
	var reason string
	if err := db.Pool.QueryRow(ctx, `SELECT error FROM usage_dlq WHERE source_offset = 5`).Scan(&reason); err != nil || !strings.Contains(reason, "ADJUSTMENT_SIGNING_KEYS") {
		t.Errorf("no keys: reason %q (%v)", reason, err)
	}
	if v := monthValue(t, db, "api_calls", ""); v != "100" {
		t.Fatalf("month window = %s: an unverified adjustment was applied", v)
	}

	// Replay every dead letter: the kind and signature headers go out
	// again, so each is verified again. Only the one refused for want of
	// a key applies, now that the aggregator has it.
	q := rollup.NewDeadLetters(db.Pool)
	if done, err := q.Replay(ctx, nil, true, "tester", "signatures"); err != nil || len(done) != len(cases)+1 {
		t.Fatalf("Replay = %v, %v", done, err)
	}
	replays := replayedRecords(t, db, 6)
	if len(replays) != len(cases)+1 {
		t.Fatalf("%d replays queued", len(replays))
	}
	// Headers go out sorted by name. The one with a repeated signature
	// header cannot be carried faithfully: it goes out without its kind,
	// as an event (and is no event either).
	for i, r := range replays {
		names := make([]string, len(r.Headers))
		for j, h := range r.Headers {
			names[j] = h.Key
		}
		want := map[int]string{0: "dlq-replay-of,kind", 3: "dlq-replay-of"}[i]
		if want == "" {
			want = "dlq-replay-of,kind,signature,signature-key,signature-time"
		}
		if got := strings.Join(names, ","); got != want {
			t.Errorf("replay %d headers %s, want %s", i, got, want)
		}
	}
	res, err = a.Apply(ctx, 0, 6, replays)
	if err != nil {
		t.Fatal(err)
	}
	if res.Adjusted != 1 || res.DeadLettered != len(cases) {
		t.Fatalf("replays: %+v, want 1 adjusted and %d dead letters again", res, len(cases))
	}
	if n := count(t, db, `SELECT count(*) FROM usage_dlq WHERE error_class = $1 AND status = 'pending'`, rollup.ClassUnverified); n != len(cases)-1 {
		t.Errorf("%d pending unverified dead letters after the replay, want %d", n, len(cases)-1)
	}
	if n := count(t, db, `SELECT count(*) FROM usage_dlq WHERE status = 'pending'`); n != len(cases) {
		t.Errorf("%d pending dead letters after the replay, want %d", n, len(cases))
	}
	if v := monthValue(t, db, "api_calls", ""); v != "70" {
		t.Errorf("month window = %s, want 70: only the signed adjustment applies", v)
	}
}

// TestUnsignedAdjustmentsInDevelopment: with AllowUnsigned an unsigned
// adjustment applies, but a record that carries a signature is still
// verified.
func TestUnsignedAdjustmentsInDevelopment(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.New(t)
	a := rollup.New(db.Pool, rollup.Config{Group: "test", Topic: "usage.events", Now: func() time.Time { return now },
		Logger: slog.New(slog.DiscardHandler), AdjustmentSignatures: recordsign.Policy{AllowUnsigned: true}})
	if _, err := a.Apply(ctx, 0, 0, batch(0, ev("e1", "acme", "api_calls", 100, now.Add(-time.Hour)))); err != nil {
		t.Fatal(err)
	}
	unsigned, err := rollup.Adjustment{ID: adjA, Tenant: "acme", Meter: "api_calls", Group: map[string]string{}, Period: "2026-11", Amount: -10}.Record()
	if err != nil {
		t.Fatal(err)
	}
	unsigned.Offset, unsigned.Time = 1, now
	signed := adjRecord(t, 2, rollup.Adjustment{ID: adjB, Tenant: "acme", Meter: "api_calls", Period: "2026-11", Amount: -20})
	res, err := a.Apply(ctx, 0, 1, []rollup.Record{unsigned, signed})
	if err != nil || res.Adjusted != 1 || res.DeadLettered != 1 {
		t.Fatalf("%+v %v", res, err)
	}
	if v := monthValue(t, db, "api_calls", ""); v != "90" {
		t.Errorf("month window = %s, want 90", v)
	}
}
