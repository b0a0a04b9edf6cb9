package rollup_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/usagemeter/metering/internal/billingevents"
	"github.com/usagemeter/metering/internal/price"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// overageEvents reads the overage.started events in the outbox.
func overageEvents(t *testing.T, db *pgtest.DB) []billingevents.OverageStarted {
	t.Helper()
	var out []billingevents.OverageStarted
	for _, ev := range db.BillingEvents(t, billingevents.TypeOverageStarted) {
		out = append(out, ev.Data.(billingevents.OverageStarted))
	}
	return out
}

// TestOverageStarted: the batch whose usage first passes a quota's limit
// in the period queues overage.started (included: the limit, usage: the
// usage then, with the quota's overage price) in its transaction; later
// batches of the period, a batch refused (fenced) and usage below the
// limit queue none.
func TestOverageStarted(t *testing.T) {
	a, db := newAgg(t)
	ctx := context.Background()
	st := accounts.New(db.Pool)
	over := price.PerUnitPrice("0.01")
	if _, err := st.PutPlan(ctx, accounts.Plan{Name: "metered", Quotas: []accounts.Quota{
		{Metric: "api_calls", Limit: ptr(100), Period: "month", StripeEventName: "api_calls", OveragePrice: &over},
		{Metric: "tokens", Limit: ptr(1000), Period: "month", StripeEventName: "tokens"},
	}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutTenant(ctx, accounts.Tenant{Tenant: "acme", Plan: "metered"}); err != nil {
		t.Fatal(err)
	}
	offset := int64(0)
	send := func(metric string, v int64) error {
		t.Helper()
		res, err := a.Apply(ctx, 0, offset-boolToInt(offset == 0), batch(offset, ev(fmt.Sprint(metric, offset), "acme", metric, v, now)))
		if err == nil {
			offset = res.NextOffset
		}
		return err
	}
	steps := []struct {
		metric string
		value  int64
		want   int
	}{
		{"api_calls", 90, 0}, // warning only
		{"api_calls", 15, 1}, // 105 > 100: overage starts
		{"api_calls", 50, 1}, // once per period
		{"tokens", 2000, 2},  // a quota without an overage price: the event, no price
		{"tokens", 10, 2},
	}
	for i, s := range steps {
		if err := send(s.metric, s.value); err != nil {
			t.Fatal(err)
		}
		if got := len(overageEvents(t, db)); got != s.want {
			t.Fatalf("step %d: %d overage.started, want %d", i, got, s.want)
		}
	}
	// A fenced batch that would cross a limit commits nothing.
	if _, err := st.PutPlan(ctx, accounts.Plan{Name: "metered", Quotas: []accounts.Quota{
		{Metric: "api_calls", Limit: ptr(100), Period: "month", StripeEventName: "api_calls", OveragePrice: &over},
		{Metric: "tokens", Limit: ptr(1000), Period: "month", StripeEventName: "tokens"},
		{Metric: "bytes", Limit: ptr(10), Period: "month", StripeEventName: "bytes"},
	}}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Apply(ctx, 0, offset+5, batch(offset+6, ev("fenced", "acme", "bytes", 100, now))); !errors.Is(err, rollup.ErrFenced) {
		t.Fatalf("fenced batch: %v", err)
	}
	evs := overageEvents(t, db)
	if len(evs) != 2 {
		t.Fatalf("after a fenced batch: %d overage.started", len(evs))
	}
	e := evs[0]
	if e.Meter != "api_calls" || e.Group != "" || e.Included.Int64() != 100 || e.Usage.Int64() != 105 || e.OveragePrice == nil ||
		e.OveragePrice.UnitPrice() != "0.01" || e.PeriodStart.Month() != now.Month() || e.PeriodStart.Day() != 1 {
		t.Errorf("overage.started: %+v", e)
	}
	if evs[1].Meter != "tokens" || evs[1].OveragePrice != nil || evs[1].Usage.Int64() != 2000 {
		t.Errorf("overage.started without a price: %+v", evs[1])
	}
}
