package stripewebhook_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/billingcycle"
	"github.com/usagemeter/metering/internal/storage/accounts"
)

// withCycle adds a billing cycle anchor, a current period start and one
// recurring item (on the price or, for the legacy shape, on the plan).
func withCycle(sub map[string]any, anchor, periodStart time.Time, interval string, count int, legacy bool) map[string]any {
	sub["billing_cycle_anchor"] = anchor.Unix()
	sub["current_period_start"] = periodStart.Unix()
	rec := map[string]any{"interval": interval, "interval_count": count}
	item := map[string]any{"id": "si_1", "price": map[string]any{"id": "price_1", "recurring": rec}}
	if legacy {
		item = map[string]any{"id": "si_1", "plan": rec}
	}
	sub["items"] = map[string]any{"data": []any{item}}
	return sub
}

// TestSubscriptionBillingCycle: the webhooks record a subscription's
// billing cycle (anchor and recurring interval) for its tenants, in force
// 10 minutes after it is recorded (billingcycle.ChangeMargin: usage of
// the current period's past is counted already); the same periods again
// record nothing; an anchor reset starts a period when it takes effect;
// a cycle Stripe could not have sent is recorded as undecodable, not
// applied.
func TestSubscriptionBillingCycle(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	created := time.Now().Add(-2 * time.Hour).Truncate(time.Second)
	anchor := created.Add(-time.Hour)
	history := func() []accounts.CycleChange {
		t.Helper()
		h, err := accounts.TenantCycles(ctx, f.db.Pool, "acme")
		if err != nil {
			t.Fatal(err)
		}
		return h
	}

	// Created: the cycle from the current period's start.
	// inMargin reports whether from is the margin after a moment of
	// [before, after].
	inMargin := func(from, before, after time.Time) bool {
		return !from.Before(before.Add(billingcycle.ChangeMargin)) && !from.After(after.Add(billingcycle.ChangeMargin))
	}
	payload := eventAt("evt_c", "customer.subscription.created", created, withCycle(subscription("sub_1", "pro"), anchor, anchor, "month", 1, false))
	before := time.Now()
	if code, body := post(t, f.h, payload, secret); code != 200 || status(body) != "processed" {
		t.Fatalf("created: %d %s", code, body)
	}
	after := time.Now()
	h := history()
	want := billingcycle.Cycle{Anchor: anchor.UTC(), Interval: billingcycle.Month, Count: 1}
	if len(h) != 1 || !inMargin(h[0].From, before, after) || h[0].Cycle != want || h[0].Source != "stripe" {
		b, _ := json.Marshal(h)
		t.Fatalf("history %s, want the monthly cycle anchored at %s from 10 minutes after it was recorded", b, anchor)
	}
	// An update with the same cycle (legacy plan shape): nothing new.
	payload = updatedWith("evt_u", created.Add(time.Minute), withCycle(subscription("sub_1", "pro"), anchor, anchor, "month", 1, true),
		map[string]any{"metadata": map[string]any{"plan": "free"}})
	if code, body := post(t, f.h, payload, secret); code != 200 || status(body) != "processed" || len(history()) != 1 {
		t.Fatalf("same cycle: %d %s, history %d rows", code, body, len(history()))
	}
	// An anchor reset to a quarterly cycle: a period starts at the reset.
	reset := created.Add(30 * time.Minute)
	payload = updatedWith("evt_r", reset, withCycle(subscription("sub_1", "pro"), reset, reset, "month", 3, false),
		map[string]any{"billing_cycle_anchor": anchor.Unix()})
	before = time.Now()
	if code, body := post(t, f.h, payload, secret); code != 200 || status(body) != "processed" {
		t.Fatalf("reset: %d %s", code, body)
	}
	after = time.Now()
	h = history()
	if len(h) != 2 || !inMargin(h[1].From, before, after) || h[1].Cycle.Count != 3 {
		b, _ := json.Marshal(h)
		t.Fatalf("history %s, want a quarterly cycle anchored at %s from 10 minutes after it was recorded", b, reset)
	}
	first, effective := h[0].From, h[1].From
	sched, err := accounts.TenantSchedule(ctx, f.db.Pool, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if s, e := sched.Span(effective.Add(time.Second)); !s.Equal(effective) || !e.Equal(reset.UTC().AddDate(0, 3, 0)) {
		t.Fatalf("period after the reset: [%s, %s)", s, e)
	}
	if s, e := sched.Span(effective.Add(-time.Nanosecond)); !s.Equal(first) || !e.Equal(effective) {
		t.Fatalf("period before the reset: [%s, %s), want [%s, %s)", s, e, first, effective)
	}
	// An interval Stripe does not have: undecodable, nothing recorded.
	payload = updatedWith("evt_x", reset.Add(time.Minute), withCycle(subscription("sub_1", "pro"), reset, reset, "decade", 1, false), nil)
	if code, body := post(t, f.h, payload, secret); code != 200 || status(body) != "recorded_undecodable" || len(history()) != 2 {
		t.Fatalf("bad interval: %d %s, history %d rows", code, body, len(history()))
	}
}
