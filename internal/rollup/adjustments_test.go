package rollup_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/recordsign"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

const (
	adjA = "0b7a6a8e-5d4c-4f7a-9a52-6f0c1e2d3a01"
	adjB = "0b7a6a8e-5d4c-4f7a-9a52-6f0c1e2d3a02"
	adjC = "0b7a6a8e-5d4c-4f7a-9a52-6f0c1e2d3a03"
)

// testKeys sign the adjustments of these tests, as ingest would.
var testKeys = func() *recordsign.Keyring {
	k, err := recordsign.ParseKeys("test-1=" + strings.Repeat("s", 32))
	if err != nil {
		panic(err)
	}
	return k
}()

// adjRecord is the record of adj at offset, signed with testKeys.
func adjRecord(t testing.TB, offset int64, adj rollup.Adjustment) rollup.Record {
	t.Helper()
	if adj.Group == nil {
		adj.Group = map[string]string{}
	}
	rec, err := adj.SignedRecord(testKeys, now)
	if err != nil {
		t.Fatal(err)
	}
	rec.Topic, rec.Offset, rec.Time = "", offset, now
	return rec
}

func monthValue(t *testing.T, db *pgtest.DB, meterName, groupKey string) string {
	t.Helper()
	var v string
	err := db.Pool.QueryRow(context.Background(), `SELECT value::text FROM usage_windows
		WHERE tenant = 'acme' AND meter = $1 AND group_key = $2 AND granularity = 'month' AND window_start = '2026-11-01T00:00:00Z'`,
		meterName, groupKey).Scan(&v)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestAdjustmentsChangeTheMonthWindowOnce(t *testing.T) {
	t.Parallel()
	a, db := newAgg(t)
	ctx := context.Background()
	at := now.Add(-time.Hour)
	if _, err := a.Apply(ctx, 0, 0, batch(0, ev("e1", "acme", "api_calls", 100, at))); err != nil {
		t.Fatal(err)
	}
	dec := rollup.Adjustment{ID: adjA, Tenant: "acme", Meter: "api_calls", Period: "2026-11", Amount: -30, Reason: "refund", Reference: "TICKET-1"}
	res, err := a.Apply(ctx, 0, 1, []rollup.Record{adjRecord(t, 1, dec)})
	if err != nil {
		t.Fatal(err)
	}
	if res.Adjusted != 1 || res.DeadLettered != 0 {
		t.Fatalf("result %+v", res)
	}
	// The same id again, in a later batch and twice in one batch: counted once.
	res, err = a.Apply(ctx, 0, 2, []rollup.Record{adjRecord(t, 2, dec), adjRecord(t, 3, dec)})
	if err != nil {
		t.Fatal(err)
	}
	if res.Adjusted != 0 || res.Duplicates != 2 {
		t.Fatalf("resent adjustment: %+v", res)
	}
	if v := monthValue(t, db, "api_calls", ""); v != "70" {
		t.Errorf("month window = %s, want 70", v)
	}
	for _, g := range []string{"hour", "day", "minute"} {
		for k, w := range windowsOf(t, db, g) {
			if w.value != "100" {
				t.Errorf("%s window %s = %s: only month windows are adjusted", g, k, w.value)
			}
		}
	}
	if n := count(t, db, `SELECT count(*) FROM usage_adjustments WHERE tenant = 'acme' AND adjustment_id = $1 AND amount = -30 AND src_offset = 1`, adjA); n != 1 {
		t.Errorf("usage_adjustments rows = %d", n)
	}
	if n := count(t, db, `SELECT count(*) FROM outbox WHERE topic = 'billing.events' AND convert_from(msg_value, 'UTF8') LIKE '%adjustment.recorded%'`); n != 1 {
		t.Errorf("adjustment.recorded queued %d times", n)
	}
	// An increase.
	inc := rollup.Adjustment{ID: adjB, Tenant: "acme", Meter: "api_calls", Period: "2026-11", Amount: 5}
	if _, err := a.Apply(ctx, 0, 4, []rollup.Record{adjRecord(t, 4, inc)}); err != nil {
		t.Fatal(err)
	}
	if v := monthValue(t, db, "api_calls", ""); v != "75" {
		t.Errorf("month window = %s, want 75", v)
	}
}

func TestAdjustmentsThatCannotApplyAreDeadLetters(t *testing.T) {
	t.Parallel()
	a, db := newAgg(t)
	ctx := context.Background()
	putMeters(t, db,
		meter.Definition{Name: "peak", Metric: "cpu", Aggregation: meter.Max},
		meter.Definition{Name: "tokens_by_model", Metric: "tokens", Aggregation: meter.Sum, GroupBy: []string{"model"}},
	)
	e := ev("e1", "acme", "api_calls", 10, now.Add(-time.Hour))
	cases := []rollup.Adjustment{
		{ID: adjA, Tenant: "acme", Meter: "api_calls", Period: "2026-11", Amount: -11},                                                                                 // negative
		{ID: adjB, Tenant: "acme", Meter: "peak", Period: "2026-11", Amount: 1},                                                                                        // max meter
		{ID: adjC, Tenant: "acme", Meter: "nothing", Period: "2026-11", Amount: 1},                                                                                     // unknown
		{ID: "0b7a6a8e-5d4c-4f7a-9a52-6f0c1e2d3a04", Tenant: "acme", Meter: "tokens_by_model", Period: "2026-11", Amount: 1},                                           // missing group
		{ID: "0b7a6a8e-5d4c-4f7a-9a52-6f0c1e2d3a05", Tenant: "acme", Meter: "tokens_by_model", Period: "2026-11", Amount: 1, Group: map[string]string{"region": "eu"}}, // wrong group
	}
	recs := batch(0, e)
	for i, c := range cases {
		recs = append(recs, adjRecord(t, int64(i+1), c))
	}
	// Signed, but not an adjustment: undecodable.
	bad := rollup.Record{Offset: int64(len(cases) + 1), Time: now, Key: []byte("acme"), Value: []byte(`{"id":"x","tenant":"acme"}`),
		Headers: []rollup.Header{{Key: rollup.HeaderKind, Value: []byte(rollup.KindAdjustment)}}}
	if err := testKeys.Sign(&bad, rollup.KindAdjustment, now); err != nil {
		t.Fatal(err)
	}
	recs = append(recs, bad)
	res, err := a.Apply(ctx, 0, 0, recs)
	if err != nil {
		t.Fatal(err)
	}
	if res.Adjusted != 0 || res.DeadLettered != len(cases)+1 || res.Counted != 1 {
		t.Fatalf("result %+v", res)
	}
	if v := monthValue(t, db, "api_calls", ""); v != "10" {
		t.Errorf("month window = %s", v)
	}
	var reason string
	if err := db.Pool.QueryRow(ctx, `SELECT error FROM usage_dlq WHERE source_offset = 1`).Scan(&reason); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(reason, "negative") {
		t.Errorf("reason %q", reason)
	}
	// A grouped sum meter with the right group adjusts that group.
	te := ev("e2", "acme", "tokens", 7, now.Add(-time.Hour))
	te.Properties = map[string]string{"model": "gpt"}
	good := rollup.Adjustment{ID: "0b7a6a8e-5d4c-4f7a-9a52-6f0c1e2d3a06", Tenant: "acme", Meter: "tokens_by_model", Period: "2026-11", Amount: -2, Group: map[string]string{"model": "gpt"}}
	res, err = a.Apply(ctx, 0, res.NextOffset, append(batch(res.NextOffset, te), adjRecord(t, res.NextOffset+1, good)))
	if err != nil || res.Adjusted != 1 {
		t.Fatalf("%+v %v", res, err)
	}
	if v := monthValue(t, db, "tokens_by_model", `["gpt"]`); v != "5" {
		t.Errorf("grouped month window = %s, want 5", v)
	}
}

// TestAdjustmentVerdictsDoNotDependOnBatches: the same log applied in one
// batch or record by record (as a rebuild may cut it) gives the same
// windows and the same dead letters: an adjustment is judged at its place
// in the log.
func TestAdjustmentVerdictsDoNotDependOnBatches(t *testing.T) {
	t.Parallel()
	at := now.Add(-time.Hour)
	log := func(t *testing.T) []rollup.Record {
		recs := batch(0, ev("e1", "acme", "api_calls", 10, at))
		recs = append(recs, adjRecord(t, 1, rollup.Adjustment{ID: adjA, Tenant: "acme", Meter: "api_calls", Period: "2026-11", Amount: -15}))
		recs = append(recs, batch(2, ev("e2", "acme", "api_calls", 10, at))...)
		recs = append(recs, adjRecord(t, 3, rollup.Adjustment{ID: adjB, Tenant: "acme", Meter: "api_calls", Period: "2026-11", Amount: -15}))
		return recs
	}
	for _, size := range []int{1, 2, 4} {
		a, db := newAgg(t)
		recs := log(t)
		for i := 0; i < len(recs); i += size {
			if _, err := a.Apply(context.Background(), 0, int64(i), recs[i:min(i+size, len(recs))]); err != nil {
				t.Fatal(err)
			}
		}
		if v := monthValue(t, db, "api_calls", ""); v != "5" {
			t.Errorf("batches of %d: month window = %s, want 5", size, v)
		}
		if n := count(t, db, `SELECT count(*) FROM usage_dlq WHERE source_offset = 1`); n != 1 {
			t.Errorf("batches of %d: the first adjustment is not a dead letter", size)
		}
	}
}
