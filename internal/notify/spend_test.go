package notify_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/usagemeter/metering/internal/billingevents"
	"github.com/usagemeter/metering/internal/notify"
	"github.com/usagemeter/metering/internal/record"
	"github.com/usagemeter/metering/internal/storage/webhooks"
)

// TestPlanSpendThresholdDeliveredOnce: a plan's spend.threshold read from
// billing.events and the periodic check of the same crossing queue one
// delivery per subscribed endpoint, in either order; an endpoint that set
// thresholds gets only those, one that set none gets the plan's (and none
// of another endpoint's thresholds from the periodic check).
func TestPlanSpendThresholdDeliveredOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	start := time.Date(2026, 11, 16, 0, 0, 0, 0, time.UTC)
	clk := newClock(start)
	db, own := setup(t, "https://hooks.example.com/own", start) // every kind, thresholds 100.00 and 200.00
	add := func(url string, thresholds []string) webhooks.Endpoint {
		e, err := webhooks.CreateEndpoint(ctx, db.Pool, webhooks.Endpoint{ID: uuid.NewString(), Tenant: "acme", URL: url,
			Kinds: []string{notify.KindSpendThreshold}, SpendThresholds: thresholds, Secret: "whsec_x", CreatedAt: start})
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	plan := add("https://hooks.example.com/plan", nil)
	other := add("https://hooks.example.com/other", []string{"500"})
	ps, pe := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	projected := "150.00"
	var mu sync.Mutex
	checks := &notify.Checks{DB: db.Pool, Now: clk.Now, Project: func(context.Context, string, time.Time) (notify.Spend, error) {
		mu.Lock()
		defer mu.Unlock()
		return notify.Spend{ProjectedTotal: projected, Total: "75.00", Currency: "usd", PeriodStart: ps, PeriodEnd: pe}, nil
	}}
	r := &notify.Reader{DB: db.Pool}
	if _, err := webhooks.AdvanceOffset(ctx, db.Pool, notify.BillingEventsTopic, 0, -1, 0); err != nil {
		t.Fatal(err)
	}
	next := int64(0)
	aggregator := func(threshold string) int {
		t.Helper()
		ev, err := billingevents.New("acme", clk.Now(), billingevents.SpendThreshold{Threshold: billingevents.Amount(threshold), ProjectedTotal: "250.00",
			Total: "125.00", Currency: "usd", PeriodStart: ps, PeriodEnd: pe, Plan: "pro", PlanVersion: 1, DetectedAt: clk.Now()})
		if err != nil {
			t.Fatal(err)
		}
		m, err := ev.Message()
		if err != nil {
			t.Fatal(err)
		}
		n, err := r.Apply(ctx, notify.BillingEventsTopic, 0, next, next+1, []record.Record{{Key: m.Key, Value: m.Value, Offset: next}})
		if err != nil {
			t.Fatal(err)
		}
		next++
		return n
	}
	periodic := func(p string) int {
		t.Helper()
		mu.Lock()
		projected = p
		mu.Unlock()
		clk.Add(time.Minute)
		n, err := checks.RunOnce(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	for i, step := range []struct {
		what string
		run  func() int
		want int
	}{
		{"the plan's 100 from the aggregator", func() int { return aggregator("100") }, 2}, // own (100.00), plan
		{"the periodic check sees 100.00", func() int { return periodic("150.00") }, 0},
		{"the periodic check sees 200.00 first", func() int { return periodic("250.00") }, 1}, // own only
		{"then the aggregator's 200", func() int { return aggregator("200.00") }, 1},          // plan only: own has it
		{"the aggregator's 200 again", func() int { return aggregator("200.00") }, 0},
		{"the plan's 300: only the endpoint without thresholds", func() int { return aggregator("300") }, 1},
	} {
		if got := step.run(); got != step.want {
			t.Fatalf("step %d, %s: %d deliveries queued, want %d", i, step.what, got, step.want)
		}
	}
	got := map[string][]string{}
	names := map[string]string{own.ID: "own", plan.ID: "plan", other.ID: "other"}
	for _, d := range deliveries(t, db) {
		if d.EventType != notify.KindSpendThreshold {
			t.Fatalf("delivery of %s", d.EventType)
		}
		got[names[d.EndpointID]] = append(got[names[d.EndpointID]], d.EventID)
	}
	id := func(threshold string) string {
		s, err := billingevents.SpendThresholdID("acme", ps, threshold)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	for name, want := range map[string][]string{"own": {id("100"), id("200")}, "plan": {id("100"), id("200"), id("300")}, "other": nil} {
		g := slices.Clone(got[name])
		slices.Sort(g)
		slices.Sort(want)
		if fmt.Sprint(g) != fmt.Sprint(want) {
			t.Errorf("endpoint %s: deliveries %s, want %s", name, strings.Join(g, ","), strings.Join(want, ","))
		}
	}
}
