package stripewebhook_test

import (
	"log/slog"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/billingevents"
	"github.com/usagemeter/metering/internal/stripewebhook"
)

// TestPlanChangedFromStripe: a subscription event that moves the tenant
// queues plan.changed in its transaction; a redelivery, an undecodable
// event and a stale one queue nothing; a deleted subscription names the
// default plan.
func TestPlanChangedFromStripe(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	h := stripewebhook.New(f.db.Pool, secret, slog.New(slog.DiscardHandler), stripewebhook.WithDefaultPlan("team"))
	events := func() []billingevents.Event {
		t.Helper()
		return f.db.BillingEvents(t)
	}
	t0 := time.Now().Add(-time.Minute).Truncate(time.Second)
	steps := []struct {
		name    string
		payload []byte
		want    int
	}{
		{"upgrade", eventAt("evt_1", "customer.subscription.updated", t0, subscription("sub_1", "pro")), 1},
		{"redelivered", eventAt("evt_1", "customer.subscription.updated", t0, subscription("sub_1", "pro")), 1},
		{"unknown plan", eventAt("evt_2", "customer.subscription.updated", t0.Add(time.Second), subscription("sub_1", "nope")), 1},
		{"stale", eventAt("evt_0", "customer.subscription.updated", t0.Add(-time.Hour), subscription("sub_1", "free")), 1},
		{"same plan", eventAt("evt_3", "customer.subscription.updated", t0.Add(2*time.Second), subscription("sub_1", "pro")), 1},
		{"deleted", eventAt("evt_4", "customer.subscription.deleted", t0.Add(3*time.Second),
			map[string]any{"id": "sub_1", "customer": "cus_acme", "status": "canceled"}), 2},
	}
	for _, s := range steps {
		if code, body := post(t, h, s.payload, secret); code != 200 {
			t.Fatalf("%s: %d %s", s.name, code, body)
		}
		if got := len(events()); got != s.want {
			t.Fatalf("%s: %d billing events, want %d", s.name, got, s.want)
		}
	}
	evs := events()
	up, down := evs[0].Data.(billingevents.PlanChanged), evs[1].Data.(billingevents.PlanChanged)
	if up.Plan != "pro" || up.PreviousPlan != "free" || up.Source != "stripe" || !up.EffectiveAt.Equal(t0) || up.Default {
		t.Errorf("upgrade: %+v", up)
	}
	if down.Plan != "team" || !down.Default || down.PreviousPlan != "pro" || !down.EffectiveAt.Equal(t0.Add(3*time.Second)) {
		t.Errorf("deleted: %+v", down)
	}
}
