package ingest_test

import (
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/billingevents"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// billingEvents returns the billing.events queued in db's outbox, oldest
// first.
func billingEvents(t *testing.T, db *pgtest.DB) []billingevents.Event {
	t.Helper()
	return db.BillingEvents(t)
}

// TestPlanChangedFromTheAdminAPI: each real plan change of PUT tenant
// queues one plan.changed with it; an unchanged plan and refused changes
// queue nothing.
func TestPlanChangedFromTheAdminAPI(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 10, 12, 0, 0, 0, time.UTC)
	e := newEnv(t, envOpts{now: func() time.Time { return now }})
	for _, p := range []string{"free", "pro"} {
		if r := e.do("PUT", "/v1/admin/plans/"+p, adminKey, "application/json", `{"quotas":[{"metric":"api_calls","limit":10}]}`); r.status != 200 {
			t.Fatalf("PUT plan %s: %d %s", p, r.status, r.raw)
		}
	}
	steps := []struct {
		body   string
		status int
		events int // billing.events queued so far
	}{
		{`{"plan":"free"}`, 200, 1},
		{`{"plan":"free"}`, 200, 1}, // unchanged
		{`{"plan":"nope"}`, 400, 1}, // unknown plan: refused
		{`{"plan":"pro","plan_effective_from":"2026-12-01T00:00:00Z"}`, 400, 1},  // in the future: refused
		{`{"plan":"pro","plan_effective_from":"2026-11-05T00:00:00Z"}`, 200, 2},  // a real change
		{`{"plan":"free","plan_effective_from":"2026-11-01T00:00:00Z"}`, 400, 2}, // before the latest: refused
		{`{"plan":""}`, 200, 3}, // back to the default plan
	}
	for i, s := range steps {
		if r := e.do("PUT", "/v1/admin/tenants/acme", adminKey, "application/json", s.body); r.status != s.status {
			t.Fatalf("step %d %s: %d %s, want %d", i, s.body, r.status, r.raw, s.status)
		}
		if got := len(billingEvents(t, e.db)); got != s.events {
			t.Fatalf("step %d %s: %d billing events, want %d", i, s.body, got, s.events)
		}
	}
	evs := billingEvents(t, e.db)
	first := evs[0].Data.(billingevents.PlanChanged)
	if evs[0].Type != billingevents.TypePlanChanged || first.Plan != "free" || first.PreviousPlan != "" || !first.SinceAlways || first.Source != "admin" || first.Version != 1 {
		t.Errorf("first: %+v %+v", evs[0], first)
	}
	second := evs[1].Data.(billingevents.PlanChanged)
	if second.Plan != "pro" || second.PreviousPlan != "free" || !second.EffectiveAt.Equal(time.Date(2026, 11, 5, 0, 0, 0, 0, time.UTC)) || second.Version != 1 {
		t.Errorf("second: %+v", second)
	}
	third := evs[2].Data.(billingevents.PlanChanged)
	if !third.Default || third.Plan != "" || third.PreviousPlan != "pro" || !third.EffectiveAt.Equal(now) {
		t.Errorf("third: %+v", third)
	}
	if evs[0].ID == evs[1].ID || evs[1].ID == evs[2].ID || evs[0].Tenant != "acme" {
		t.Errorf("ids or tenant: %+v", evs)
	}
}

// TestGrantEvents: a grant's creation queues grant.created with it (a
// retry of the same grant queues nothing more), its void grant.voided
// with the remainder at the void; refused ones queue nothing.
func TestGrantEvents(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 10, 12, 30, 0, 0, time.UTC)
	e := newEnv(t, envOpts{now: func() time.Time { return now }})
	defineMeters(t, e)
	if r := e.do("PUT", "/v1/admin/plans/pro", adminKey, "application/json", `{"quotas":[{"metric":"tokens","limit":1000,"hard":true}]}`); r.status != 200 {
		t.Fatalf("PUT plan: %d %s", r.status, r.raw)
	}
	e.do("PUT", "/v1/admin/tenants/acme", adminKey, "application/json", `{"plan":"pro"}`)
	base := len(billingEvents(t, e.db)) // plan.changed
	const id = "0193a5c2-7d3e-7b2a-9f1e-3c4d5e6f7a01"
	body := `{"id":"` + id + `","meter":"tokens","amount":500,"expires_at":"2026-12-01T00:00:00Z","reason":"goodwill","source":"goodwill"}`
	if r := e.do("POST", "/v1/admin/tenants/acme/grants", adminKey, "application/json", `{"meter":"tokens","amount":0,"reason":"r","source":"refund"}`); r.status != 400 {
		t.Fatalf("bad grant: %d %s", r.status, r.raw)
	}
	if n := len(billingEvents(t, e.db)); n != base {
		t.Fatalf("a refused grant queued %d events", n-base)
	}
	for range 2 {
		if r := e.do("POST", "/v1/admin/tenants/acme/grants", adminKey, "application/json", body); r.status != 201 && r.status != 200 {
			t.Fatalf("create: %d %s", r.status, r.raw)
		}
	}
	evs := billingEvents(t, e.db)[base:]
	if len(evs) != 1 || evs[0].Type != billingevents.TypeGrantCreated {
		t.Fatalf("after create and retry: %+v", evs)
	}
	c := evs[0].Data.(billingevents.GrantCreated)
	if c.GrantID != id || c.Amount != "500" || c.Unit != "units" || c.Meter != "tokens" || c.ExpiresAt == nil ||
		!c.EffectiveAt.Equal(time.Date(2026, 11, 10, 12, 0, 0, 0, time.UTC)) {
		t.Errorf("grant.created: %+v", c)
	}
	if r := e.do("POST", "/v1/admin/tenants/acme/grants/"+id+"/void", adminKey, "application/json", `{"reason":"entered twice"}`); r.status != 200 {
		t.Fatalf("void: %d %s", r.status, r.raw)
	}
	if r := e.do("POST", "/v1/admin/tenants/acme/grants/"+id+"/void", adminKey, "application/json", `{"reason":"again"}`); r.status != 409 {
		t.Fatalf("void again: %d %s", r.status, r.raw)
	}
	evs = billingEvents(t, e.db)[base:]
	if len(evs) != 2 || evs[1].Type != billingevents.TypeGrantVoided {
		t.Fatalf("after void and a refused void: %+v", evs)
	}
	v := evs[1].Data.(billingevents.GrantVoided)
	if v.GrantID != id || v.Remaining != "500" || v.Unit != "units" || v.Reason != "entered twice" || !v.VoidedAt.Equal(now) {
		t.Errorf("grant.voided: %+v", v)
	}
}
