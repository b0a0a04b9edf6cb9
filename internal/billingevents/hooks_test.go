package billingevents_test

import (
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/billingevents"
	"github.com/usagemeter/metering/internal/storage/accounts"
)

// TestPlanChangedOf: a plan change's event names the plans, the version
// and the time; a change to no plan names the default plan; a first plan
// since always has a zero effective_at and since_always; each is a
// different fact.
func TestPlanChangedOf(t *testing.T) {
	t.Parallel()
	free, pro := "free", "pro"
	at := time.Date(2026, 11, 5, 0, 0, 0, 0, time.UTC)
	now := at.Add(time.Hour)
	tests := []struct {
		name   string
		change accounts.PlanChange
		def    string
		want   billingevents.PlanChanged
	}{
		{"a change", accounts.PlanChange{Tenant: "acme", From: &free, To: &pro, Version: 3, At: at, Now: now, Source: "admin"}, "",
			billingevents.PlanChanged{PreviousPlan: "free", Plan: "pro", Version: 3, EffectiveAt: at, Source: "admin"}},
		{"to the default plan", accounts.PlanChange{Tenant: "acme", From: &pro, At: at, Now: now, Source: "stripe"}, "starter",
			billingevents.PlanChanged{PreviousPlan: "pro", Plan: "starter", EffectiveAt: at, Source: "stripe", Default: true}},
		{"to no plan, no default", accounts.PlanChange{Tenant: "acme", From: &pro, At: at, Now: now, Source: "admin"}, "",
			billingevents.PlanChanged{PreviousPlan: "pro", EffectiveAt: at, Source: "admin", Default: true}},
		{"first plan since always", accounts.PlanChange{Tenant: "acme", To: &free, Version: 1, Now: now, Source: "admin"}, "",
			billingevents.PlanChanged{Plan: "free", Version: 1, Source: "admin", SinceAlways: true}},
	}
	ids := map[string]string{}
	for _, tt := range tests {
		ev, err := billingevents.PlanChangedOf(tt.change, tt.def)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if got := ev.Data.(billingevents.PlanChanged); got != tt.want || ev.Tenant != "acme" {
			t.Errorf("%s: %+v, want %+v", tt.name, got, tt.want)
		}
		if !tt.change.At.IsZero() && !ev.OccurredAt.Equal(tt.change.At) || tt.change.At.IsZero() && !ev.OccurredAt.Equal(now) {
			t.Errorf("%s: occurred at %s", tt.name, ev.OccurredAt)
		}
		if prev, dup := ids[ev.ID]; dup {
			t.Errorf("%s and %s share id %s", tt.name, prev, ev.ID)
		}
		ids[ev.ID] = tt.name
		// It survives the wire.
		m, err := ev.Message()
		if err != nil {
			t.Fatal(err)
		}
		back, err := billingevents.Decode(m.Value)
		if err != nil || back.Data.(billingevents.PlanChanged) != tt.want {
			t.Errorf("%s: decoded %+v, %v", tt.name, back.Data, err)
		}
	}
}
