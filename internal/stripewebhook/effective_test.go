package stripewebhook_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/storage/accounts"
)

// updatedWith is a customer.subscription.updated envelope with
// previous_attributes.
func updatedWith(id string, created time.Time, object, previous map[string]any) []byte {
	b, _ := json.Marshal(map[string]any{"id": id, "object": "event", "type": "customer.subscription.updated", "api_version": "2024-06-20",
		"created": created.Unix(), "data": map[string]any{"object": object, "previous_attributes": previous}})
	return b
}

// TestPlanChangeTakesEffectAtTheEventsEffectiveTime: a change that came
// with the renewal (previous_attributes hold the period's previous start,
// on the subscription or, from API 2025-03-31, on its items) takes effect
// at the new period's start however late it is processed; any other
// change at the event's created time, not when it is processed.
func TestPlanChangeTakesEffectAtTheEventsEffectiveTime(t *testing.T) {
	t.Parallel()
	created := time.Now().Add(-10 * time.Minute).Truncate(time.Second)
	periodStart := created.Add(-3 * time.Hour)
	previousStart := periodStart.AddDate(0, -1, 0)
	withPeriod := func(sub map[string]any) map[string]any { sub["current_period_start"] = periodStart.Unix(); return sub }
	withItemPeriod := func(sub map[string]any) map[string]any {
		sub["items"] = map[string]any{"data": []any{map[string]any{"id": "si_1", "current_period_start": periodStart.Unix()}}}
		return sub
	}
	tests := []struct {
		name    string
		payload []byte
		want    time.Time
	}{
		{"renewal: the period's start", updatedWith("evt_r", created, withPeriod(subscription("sub_1", "pro")),
			map[string]any{"current_period_start": previousStart.Unix(), "metadata": map[string]any{"plan": "free"}}), periodStart},
		{"renewal, periods on the items: the period's start", updatedWith("evt_i", created, withItemPeriod(subscription("sub_1", "pro")),
			map[string]any{"items": map[string]any{"data": []any{map[string]any{"current_period_start": previousStart.Unix()}}}}), periodStart},
		{"a change mid-period: the event's created time", updatedWith("evt_m", created, withPeriod(subscription("sub_1", "pro")),
			map[string]any{"metadata": map[string]any{"plan": "free"}}), created},
		{"created: the event's created time", eventAt("evt_c", "customer.subscription.created", created, withPeriod(subscription("sub_1", "pro"))), created},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			if code, body := post(t, f.h, tt.payload, secret); code != 200 || status(body) != "processed" {
				t.Fatalf("delivery: %d %s", code, body)
			}
			hist, err := accounts.TenantPlans(context.Background(), f.db.Pool, "acme")
			if err != nil {
				t.Fatal(err)
			}
			if len(hist) != 2 || *hist[0].Plan != "free" || hist[0].ValidTo == nil || !hist[0].ValidTo.Equal(tt.want) ||
				*hist[1].Plan != "pro" || hist[1].ValidFrom == nil || !hist[1].ValidFrom.Equal(tt.want) || hist[1].ValidTo != nil || hist[1].Source != "stripe" {
				b, _ := json.Marshal(hist)
				t.Fatalf("history %s; want free until %s, then pro (stripe)", b, tt.want)
			}
			if got := f.planOf(t); got != "pro" {
				t.Fatalf("tenants.plan %s, want pro", got)
			}
		})
	}
}
