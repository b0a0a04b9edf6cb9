package billingevents_test

import (
	"context"
	"encoding/json"
	"math/big"
	"reflect"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/billingevents"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/topics"
)

var (
	t0  = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	t1  = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	exp = time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
)

// one payload of every type, each a distinct fact.
func payloads() []billingevents.Payload {
	return []billingevents.Payload{
		billingevents.PlanChanged{PreviousPlan: "free", Plan: "pro", Version: 2, EffectiveAt: t0, Source: "admin"},
		billingevents.GrantCreated{GrantID: "g1", Amount: "100.50", Unit: "usd", EffectiveAt: t0, ExpiresAt: &exp},
		billingevents.GrantExpired{GrantID: "g1", Remaining: "3", Unit: "usd", ExpiredAt: exp},
		billingevents.GrantVoided{GrantID: "g2", Remaining: "0", Unit: "units", VoidedAt: t1, Reason: "mistake"},
		billingevents.AdjustmentRecorded{AdjustmentID: "a1", Period: "2026-11", Amount: "-12.5", Unit: "usd"},
		billingevents.OverageStarted{Meter: "api_calls", PeriodStart: t0, PeriodEnd: t1, Included: big.NewInt(1000), Usage: big.NewInt(1001), StartedAt: t0.Add(time.Hour)},
		billingevents.PeriodClosed{PeriodStart: t0, PeriodEnd: t1, AllowedLateness: "1h0m0s", Usage: []billingevents.MeterUsage{
			{Meter: "api_calls", Metric: "api_calls", Aggregation: "sum", Value: new(big.Int).Lsh(big.NewInt(1), 70)}}},
		billingevents.SpendThreshold{Threshold: "100.00", ProjectedTotal: "104.17", Total: "37.50", Currency: "usd", PeriodStart: t0, PeriodEnd: t1,
			Plan: "pro", PlanVersion: 3, DetectedAt: t0.Add(time.Hour)},
	}
}

// TestIDsAreAFunctionOfTheFact: the same type, tenant and natural key give
// the same id whatever the other fields and occurred_at; another tenant,
// type or key gives another.
func TestIDsAreAFunctionOfTheFact(t *testing.T) {
	t.Parallel()
	seen := map[string]string{}
	for _, p := range payloads() {
		a, err := billingevents.New("acme", t0, p)
		if err != nil {
			t.Fatal(err)
		}
		b, err := billingevents.New("acme", t1.Add(time.Minute), p)
		if err != nil {
			t.Fatal(err)
		}
		if a.ID != b.ID {
			t.Errorf("%s: re-emitting the fact gave %s then %s", p.Type(), a.ID, b.ID)
		}
		other, err := billingevents.New("globex", t0, p)
		if err != nil {
			t.Fatal(err)
		}
		if other.ID == a.ID {
			t.Errorf("%s: two tenants share id %s", p.Type(), a.ID)
		}
		if prev, dup := seen[a.ID]; dup {
			t.Errorf("%s and %s share id %s", prev, p.Type(), a.ID)
		}
		seen[a.ID] = string(p.Type())
	}
	// Other fields of the payload are not part of the key.
	a, _ := billingevents.New("acme", t0, billingevents.GrantExpired{GrantID: "g1", Remaining: "3", Unit: "usd", ExpiredAt: exp})
	b, _ := billingevents.New("acme", t0, billingevents.GrantExpired{GrantID: "g1", Remaining: "4", Unit: "usd", ExpiredAt: t1})
	if a.ID != b.ID {
		t.Errorf("the expiry of one grant has two ids: %s, %s", a.ID, b.ID)
	}
	// The parts are length-prefixed: shifting text between them is another fact.
	if billingevents.ID("x", "ab", "c") == billingevents.ID("x", "a", "bc") {
		t.Error("ids of (ab, c) and (a, bc) collide")
	}
	// Pinned: the id is a contract with consumers; it must not change
	// between releases.
	if got, want := billingevents.ID(billingevents.TypePeriodClosed, "acme", "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"), pinnedPeriodClosedID; got != want {
		t.Errorf("period.closed id of acme, November 2026 = %s, want %s", got, want)
	}
}

const pinnedPeriodClosedID = "b18487b8-60fd-5191-80d6-1619323f3610"

// TestSpendThresholdIDIsTheNotificationsID: spend.threshold's id is the
// id the webhook notifications give the same crossing (pinned: it was
// theirs first), and "100" and "100.00" are one threshold.
func TestSpendThresholdIDIsTheNotificationsID(t *testing.T) {
	t.Parallel()
	a, err := billingevents.New("acme", t1, billingevents.SpendThreshold{Threshold: "100.00", ProjectedTotal: "120", Total: "40", Currency: "usd", PeriodStart: t0, PeriodEnd: t1})
	if err != nil {
		t.Fatal(err)
	}
	b, err := billingevents.SpendThresholdID("acme", t0, "100")
	if err != nil {
		t.Fatal(err)
	}
	if a.ID != b || a.ID != "e4e8a465-a642-50c8-acb2-173482ac8453" {
		t.Errorf("spend.threshold id %s, SpendThresholdID %s, want both e4e8a465-a642-50c8-acb2-173482ac8453", a.ID, b)
	}
	for _, bad := range []string{"0", "-5", "x", ""} {
		if _, err := billingevents.SpendThresholdID("acme", t0, bad); err == nil {
			t.Errorf("SpendThresholdID accepted threshold %q", bad)
		}
	}
}

func TestNewRefusesAFactWithoutItsKey(t *testing.T) {
	t.Parallel()
	for name, p := range map[string]billingevents.Payload{
		"no plan":          billingevents.PlanChanged{EffectiveAt: t0},
		"no effective_at":  billingevents.PlanChanged{Plan: "pro"},
		"no grant id":      billingevents.GrantCreated{Amount: "1", Unit: "usd"},
		"float amount":     billingevents.GrantCreated{GrantID: "g", Amount: "1e3", Unit: "usd"},
		"empty amount":     billingevents.GrantVoided{GrantID: "g", Unit: "usd"},
		"no period":        billingevents.AdjustmentRecorded{AdjustmentID: "a", Amount: "1", Unit: "usd"},
		"no meter":         billingevents.OverageStarted{PeriodStart: t0},
		"empty period":     billingevents.PeriodClosed{PeriodStart: t1, PeriodEnd: t0},
		"no unit (expiry)": billingevents.GrantExpired{GrantID: "g", Remaining: "1"},
	} {
		if _, err := billingevents.New("acme", t0, p); err == nil {
			t.Errorf("%s: New accepted %+v", name, p)
		}
	}
	if _, err := billingevents.New("", t0, payloads()[0]); err == nil {
		t.Error("New accepted an empty tenant")
	}
}

// TestPayloadJSON pins the envelope and each payload's fields, and that
// Decode reads back what Message wrote.
func TestPayloadJSON(t *testing.T) {
	t.Parallel()
	want := map[billingevents.Type]string{
		billingevents.TypePlanChanged:        `{"previous_plan":"free","plan":"pro","version":2,"effective_at":"2026-11-01T00:00:00Z","source":"admin"}`,
		billingevents.TypeGrantCreated:       `{"grant_id":"g1","amount":"100.50","unit":"usd","effective_at":"2026-11-01T00:00:00Z","expires_at":"2027-01-01T00:00:00Z"}`,
		billingevents.TypeGrantExpired:       `{"grant_id":"g1","remaining":"3","unit":"usd","expired_at":"2027-01-01T00:00:00Z"}`,
		billingevents.TypeGrantVoided:        `{"grant_id":"g2","remaining":"0","unit":"units","voided_at":"2026-12-01T00:00:00Z","reason":"mistake"}`,
		billingevents.TypeAdjustmentRecorded: `{"adjustment_id":"a1","period":"2026-11","amount":"-12.5","unit":"usd"}`,
		billingevents.TypeOverageStarted:     `{"meter":"api_calls","group":"","period_start":"2026-11-01T00:00:00Z","period_end":"2026-12-01T00:00:00Z","included":1000,"usage":1001,"started_at":"2026-11-01T01:00:00Z"}`,
		billingevents.TypePeriodClosed:       `{"period_start":"2026-11-01T00:00:00Z","period_end":"2026-12-01T00:00:00Z","allowed_lateness":"1h0m0s","usage":[{"meter":"api_calls","metric":"api_calls","aggregation":"sum","group":"","value":1180591620717411303424}]}`,
		billingevents.TypeSpendThreshold:     `{"threshold":"100.00","projected_total":"104.17","total":"37.50","currency":"usd","period_start":"2026-11-01T00:00:00Z","period_end":"2026-12-01T00:00:00Z","plan":"pro","plan_version":3,"detected_at":"2026-11-01T01:00:00Z"}`,
	}
	for _, p := range payloads() {
		ev, err := billingevents.New("acme", t1, p)
		if err != nil {
			t.Fatal(err)
		}
		m, err := ev.Message()
		if err != nil {
			t.Fatal(err)
		}
		if m.Topic != topics.BillingEvents || string(m.Key) != "acme" || m.Headers["event-id"] != ev.ID || m.Headers["event-type"] != string(p.Type()) {
			t.Errorf("%s: message topic %q key %q headers %v", p.Type(), m.Topic, m.Key, m.Headers)
		}
		env := `{"id":"` + ev.ID + `","type":"` + string(p.Type()) + `","tenant":"acme","occurred_at":"2026-12-01T00:00:00Z","data":` + want[p.Type()] + `}`
		if string(m.Value) != env {
			t.Errorf("%s:\n got %s\nwant %s", p.Type(), m.Value, env)
		}
		back, err := billingevents.Decode(m.Value)
		if err != nil {
			t.Fatalf("%s: %v", p.Type(), err)
		}
		if !reflect.DeepEqual(back, ev) {
			t.Errorf("%s: decoded %+v, want %+v", p.Type(), back, ev)
		}
	}
	if len(want) != len(billingevents.Types) {
		t.Errorf("%d types pinned, %d exist", len(want), len(billingevents.Types))
	}
	if _, err := billingevents.Decode([]byte(`{"id":"x","type":"nope","data":{}}`)); err == nil {
		t.Error("Decode accepted an unknown type")
	}
}

func TestAmount(t *testing.T) {
	t.Parallel()
	for a, ok := range map[billingevents.Amount]bool{"0": true, "-1.25": true, "+3": true, "10.": true, ".5": true,
		"": false, "-": false, "1e3": false, "1.2.3": false, "NaN": false, " 1": false} {
		if a.Valid() != ok {
			t.Errorf("Amount(%q).Valid() = %v", a, !ok)
		}
	}
	if r, ok := billingevents.Amount("-12.50").Rat(); !ok || r.Cmp(big.NewRat(-25, 2)) != 0 {
		t.Errorf("Rat of -12.50 = %v %v", r, ok)
	}
}

// TestEnqueueQueuesForTheTopic: the outbox row is keyed by tenant, carries
// the id header, and commits only with its transaction.
func TestEnqueueQueuesForTheTopic(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	ev, err := billingevents.New("acme", t0, payloads()[1])
	if err != nil {
		t.Fatal(err)
	}
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := billingevents.Enqueue(ctx, tx, ev); err != nil {
		t.Fatal(err)
	}
	_ = tx.Rollback(ctx)
	var n int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("rolled back: %d outbox rows (%v)", n, err)
	}
	tx, err = db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := billingevents.Enqueue(ctx, tx, ev); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	var topic, key string
	var headers map[string]string
	var value []byte
	if err := db.Pool.QueryRow(ctx, `SELECT topic, convert_from(msg_key, 'UTF8'), headers, msg_value FROM outbox`).Scan(&topic, &key, &headers, &value); err != nil {
		t.Fatal(err)
	}
	var env map[string]any
	if err := json.Unmarshal(value, &env); err != nil {
		t.Fatal(err)
	}
	if topic != "billing.events" || key != "acme" || headers["event-id"] != ev.ID || env["id"] != ev.ID {
		t.Errorf("outbox row: topic %q key %q headers %v value %s", topic, key, headers, value)
	}
	if err := billingevents.Enqueue(ctx, db.Pool, billingevents.Event{ID: "x", Type: billingevents.TypeGrantCreated}); err == nil {
		t.Error("Enqueue accepted an event New did not make")
	}
}
