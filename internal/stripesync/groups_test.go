package stripesync_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/usagemeter/metering/internal/stripesync"
	"github.com/usagemeter/metering/internal/testkit/stripefake"
	"github.com/usagemeter/metering/internal/windows"
)

// defineGroupedBilling defines meter tokens_by_model (sum by model), billed
// per group as tokens_{model} on plan pro; plan eu bills only the o1 group
// of it (a filter quota) as o1_{model}; and a latest meter whose quota was
// given a Stripe event name behind the API's back.
func (f *fixture) defineGroupedBilling() {
	f.t.Helper()
	f.db.Exec(f.t, `INSERT INTO meters (name, metric, aggregation, group_by, version) VALUES
		('tokens_by_model', 'tokens', 'sum', '{model}', 1), ('tokens_last', 'tokens', 'latest', '{model}', 1)`)
	f.db.Exec(f.t, `INSERT INTO plans (name) VALUES ('eu')`)
	f.db.Exec(f.t, `INSERT INTO plan_quotas (plan, metric, quota_limit, period, stripe_event_name, meter, group_filter, per_group) VALUES
		('pro', 'tokens', 10, 'day', 'tokens_{model}', 'tokens_by_model', '{}', true),
		('pro', 'tokens', 10, 'month', 'last_{model}', 'tokens_last', '{}', false),
		('eu', 'tokens', NULL, 'month', 'tokens', NULL, '{}', false),
		('eu', 'tokens', 10, 'month', 'o1_{model}', 'tokens_by_model', '{"model":"o1"}', false)`)
	for _, m := range []string{"tokens_gpt-4", "tokens_o1", "o1_o1", "last_o1"} {
		f.fake.EnsureMeter(m)
	}
}

// meterGroup sets the month window of a group of a defined meter.
func (f *fixture) meterGroup(tenant, meter, key string, value int64) {
	f.t.Helper()
	f.db.Exec(f.t, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events) VALUES ($1, $2, $3, 'month', $4, $5, 1)
		ON CONFLICT (tenant, meter, group_key, granularity, window_start) DO UPDATE SET value = EXCLUDED.value`, tenant, meter, key, windows.Month.Start(f.now), value)
}

// TestGroupedBilling: under faults, each group of a billed meter reaches
// Stripe exactly, as its own Stripe meter, under deterministic
// identifiers; a missing property, a value a Stripe name cannot hold and a
// latest meter are unmapped with a reason; a filter quota bills its groups
// only; the implicit meter is billed as before; reconciliation shows every
// group with drift 0.
func TestGroupedBilling(t *testing.T) {
	f := newFixture(t, 2, stripefake.Config{FaultRate: 0.2, Seed: 5})
	f.defineGroupedBilling()
	f.db.Exec(t, `UPDATE tenants SET plan = 'eu' WHERE tenant = 't2'`)
	ctx := context.Background()
	for round := int64(1); round <= 3; round++ {
		f.meter("t1", "tokens", 100*round)
		f.meterGroup("t1", "tokens_by_model", `["gpt-4"]`, 60*round)
		f.meterGroup("t1", "tokens_by_model", `["o1"]`, 30*round)
		f.meterGroup("t1", "tokens_by_model", `[null]`, 7*round)
		f.meterGroup("t1", "tokens_by_model", `["a b"]`, 3*round)
		f.meterGroup("t1", "tokens_last", `["o1"]`, 5)
		f.meter("t2", "tokens", 50*round)
		f.meterGroup("t2", "tokens_by_model", `["gpt-4"]`, 20*round)
		f.meterGroup("t2", "tokens_by_model", `["o1"]`, 30*round)
		res, err := f.biller.Sync(ctx)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		unmapped := strings.Join(res.Unmapped, "\n")
		for _, want := range []string{`t1/tokens_by_model[null]: no Stripe event name for the group: placeholder {model}: the group has no value`,
			`t1/tokens_by_model["a b"]: no Stripe event name for the group: placeholder {model}: value "a b" has characters`,
			`t1/tokens_last["o1"]: a latest meter is not billed`} {
			if !strings.Contains(unmapped, want) {
				t.Errorf("round %d: unmapped %q, want %q", round, unmapped, want)
			}
		}
		if len(res.Unmapped) != 3 {
			t.Errorf("round %d: unmapped %q, want 3", round, res.Unmapped)
		}
	}
	if _, _, err := f.biller.SendOpen(ctx, true); err != nil {
		t.Fatal(err)
	}
	start, end := windows.Month.Span(f.now)
	for _, c := range []struct {
		eventName, customer string
		want                int64
	}{
		{"tokens", "cus_t1", 300}, {"tokens_gpt-4", "cus_t1", 180}, {"tokens_o1", "cus_t1", 90}, {"last_o1", "cus_t1", 0},
		{"tokens", "cus_t2", 150}, {"o1_o1", "cus_t2", 90}, {"tokens_gpt-4", "cus_t2", 0}, {"tokens_o1", "cus_t2", 0},
	} {
		if got := f.fake.Total(c.eventName, c.customer, start, end); got != c.want {
			t.Errorf("Stripe %s/%s = %d, want %d", c.customer, c.eventName, got, c.want)
		}
	}
	// Identifiers: the implicit meter's as before; a group's from its key.
	period := windows.Month.Start(f.now)
	seen := map[string]bool{}
	for _, e := range f.fake.Events() {
		if !e.Cancelled {
			seen[e.Identifier] = true
		}
	}
	for _, id := range []string{
		stripesync.Identifier("t1", "tokens", period, "100", 0),
		stripesync.GroupIdentifier("t1", "tokens_by_model", `["gpt-4"]`, period, "60", 0),
		stripesync.GroupIdentifier("t1", "tokens_by_model", `["gpt-4"]`, period, "180", 0),
		stripesync.GroupIdentifier("t2", "tokens_by_model", `["o1"]`, period, "90", 0),
	} {
		if !seen[id] {
			t.Errorf("no event with identifier %s", id)
		}
	}
	if stripesync.GroupIdentifier("t1", "tokens", "", period, "90", 0) != stripesync.Identifier("t1", "tokens", period, "90", 0) {
		t.Errorf("the empty group's identifier is not the implicit meter's")
	}
	if stripesync.GroupIdentifier("t1", "m", `["a"]`, period, "90", 0) == stripesync.GroupIdentifier("t1", "m", `["b"]`, period, "90", 0) {
		t.Errorf("two groups share an identifier")
	}

	rows, err := f.biller.Reconcile(ctx, f.now)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rows {
		got = append(got, fmt.Sprintf("%s %s %s %s %s/%s %s", r.Tenant, r.Metric, r.Meter, r.Group, r.Metered, r.Drift, r.Status))
	}
	wantRows := []string{
		`t1 tokens tokens  300/0 ok`,
		`t1 tokens tokens_by_model ["a b"] 9/0 unmapped`,
		`t1 tokens tokens_by_model ["gpt-4"] 180/0 ok`,
		`t1 tokens tokens_by_model ["o1"] 90/0 ok`,
		`t1 tokens tokens_by_model [null] 21/0 unmapped`,
		`t1 tokens tokens_last ["o1"] 5/0 unmapped`,
		`t2 tokens tokens  150/0 ok`,
		`t2 tokens tokens_by_model ["o1"] 90/0 ok`,
	}
	if strings.Join(got, "\n") != strings.Join(wantRows, "\n") {
		t.Errorf("reconciliation:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(wantRows, "\n"))
	}
}

// TestGroupedPushAfterALostAnswer: Stripe records a group's push and the
// answer is lost (every call times out); the push is dead-lettered, and
// replaying it re-sends the same identifier: no double count.
func TestGroupedPushAfterALostAnswer(t *testing.T) {
	f := newFixture(t, 1, stripefake.Config{FaultRate: 1, Faults: []string{stripefake.FaultTimeout}})
	f.defineGroupedBilling()
	ctx := context.Background()
	f.meterGroup("t1", "tokens_by_model", `["o1"]`, 77)
	res, err := f.biller.Sync(ctx)
	if err != nil || res.Dead != 1 {
		t.Fatalf("sync: %+v, %v", res, err)
	}
	start, end := windows.Month.Span(f.now)
	if got := f.fake.Total("tokens_o1", "cus_t1", start, end); got != 77 {
		t.Fatalf("Stripe %d before replay, want 77", got)
	}
	f.fake.SetFaultRate(0)
	if r, err := f.biller.Replay(ctx, nil, true, "oncall"); err != nil || r.Sent != 1 {
		t.Fatalf("replay: %+v %v", r, err)
	}
	if res, err := f.biller.Sync(ctx); err != nil || res.Intents != 0 {
		t.Fatalf("sync after replay: %+v %v", res, err)
	}
	if got := f.fake.Total("tokens_o1", "cus_t1", start, end); got != 77 {
		t.Fatalf("Stripe %d after replay, want 77: no double count", got)
	}
	ids := map[string]int{}
	for _, e := range f.fake.Events() {
		ids[e.Identifier]++
	}
	id := stripesync.GroupIdentifier("t1", "tokens_by_model", `["o1"]`, windows.Month.Start(f.now), "77", 0)
	if len(ids) != 1 || ids[id] != 1 {
		t.Fatalf("events by identifier %v, want one of %s", ids, id)
	}
}

// TestSharedStripeMeterReconciles: rows billed to one Stripe meter of one
// customer (the groups of a meter whose event name has no placeholder,
// groups whose filled-in names coincide, two tenants of one customer) are
// each pushed exactly, and reconciled against Stripe's one summary
// together: drift 0, each row saying what it shares.
func TestSharedStripeMeterReconciles(t *testing.T) {
	f := newFixture(t, 3, stripefake.Config{})
	f.db.Exec(t, `INSERT INTO meters (name, metric, aggregation, group_by, version) VALUES
		('tokens_by_model', 'tokens', 'sum', '{model}', 1), ('tokens_by_pair', 'tokens', 'sum', '{a,b}', 1)`)
	f.db.Exec(t, `INSERT INTO plans (name) VALUES ('plain'), ('pairs')`)
	f.db.Exec(t, `INSERT INTO plan_quotas (plan, metric, quota_limit, period, stripe_event_name, meter, group_filter, per_group) VALUES
		('plain', 'tokens', NULL, 'month', 'all_tokens', 'tokens_by_model', '{}', false),
		('pairs', 'tokens', NULL, 'month', 'pair_{a}{b}', 'tokens_by_pair', '{}', true)`)
	f.db.Exec(t, `UPDATE tenants SET plan = 'plain' WHERE tenant IN ('t1', 't2')`)
	f.db.Exec(t, `UPDATE tenants SET plan = 'pairs' WHERE tenant = 't3'`)
	f.db.Exec(t, `UPDATE tenants SET stripe_customer_id = 'cus_t1' WHERE tenant = 't2'`) // t1 and t2: one customer
	f.fake.EnsureMeter("all_tokens")
	f.fake.EnsureMeter("pair_xyz")
	f.meterGroup("t1", "tokens_by_model", `["gpt-4"]`, 60)
	f.meterGroup("t1", "tokens_by_model", `["o1"]`, 30)
	f.meterGroup("t2", "tokens_by_model", `["o1"]`, 5)
	f.meterGroup("t3", "tokens_by_pair", `["x","yz"]`, 7)
	f.meterGroup("t3", "tokens_by_pair", `["xy","z"]`, 11)
	ctx := context.Background()
	if _, err := f.biller.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.biller.SendOpen(ctx, true); err != nil {
		t.Fatal(err)
	}
	start, end := windows.Month.Span(f.now)
	if got := f.fake.Total("all_tokens", "cus_t1", start, end); got != 95 {
		t.Fatalf("Stripe all_tokens/cus_t1 = %d, want 95", got)
	}
	if got := f.fake.Total("pair_xyz", "cus_t3", start, end); got != 18 {
		t.Fatalf("Stripe pair_xyz/cus_t3 = %d, want 18", got)
	}
	rows, err := f.biller.Reconcile(ctx, f.now)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rows {
		if r.Meter == "tokens" {
			continue
		}
		got = append(got, fmt.Sprintf("%s %s %s/%s/%s %s", r.Tenant, r.Group, r.Metered, r.Stripe, r.Drift, r.Status))
		if !strings.Contains(r.Note, "rows billed to Stripe meter") {
			t.Errorf("%s %s: note %q does not say the meter is shared", r.Tenant, r.Group, r.Note)
		}
	}
	want := []string{
		`t1 ["gpt-4"] 60/95/0 ok`, `t1 ["o1"] 30/95/0 ok`, `t2 ["o1"] 5/95/0 ok`,
		`t3 ["x","yz"] 7/18/0 ok`, `t3 ["xy","z"] 11/18/0 ok`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("reconciliation:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
