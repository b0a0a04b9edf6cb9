package aggregator_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/outbox"
	"github.com/usagemeter/metering/internal/topics"
)

// TestHugeDeadLetterNeverBlocksBreaches: a record of over 1 MB (LZ4 lets
// the producer send it) is dead-lettered, but its dead letter is over the
// relay's 1 MB message limit. It is parked; the breaches queued after it
// still reach quota.breaches, and /metrics says so.
func TestHugeDeadLetterNeverBlocksBreaches(t *testing.T) {
	s := newStack(t)
	ctx := context.Background()
	st := accounts.New(s.db.Pool)
	limit := int64(10)
	if _, err := st.PutPlan(ctx, accounts.Plan{Name: "free", Quotas: []accounts.Quota{
		{Metric: "api_calls", Limit: &limit, Period: "month", Hard: true, StripeEventName: "api_calls"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutTenant(ctx, accounts.Tenant{Tenant: "acme", Plan: "free"}); err != nil {
		t.Fatal(err)
	}
	s.start(s.config())
	s.raw(strings.Repeat("x", 1100<<10), "acme")
	var evs []events.Event
	for i := range 12 {
		evs = append(evs, events.Event{ID: "call-" + string(rune('a'+i)), Tenant: "acme", Metric: "api_calls", Value: 1, Time: time.Now().UTC()})
	}
	if err := s.producer.Emit(ctx, evs...); err != nil {
		t.Fatal(err)
	}
	s.waitConsumed("metering-aggregator")

	if got := len(s.waitTopic(topics.QuotaBreaches, 3)); got != 3 {
		t.Fatalf("%d breaches on %s, want 3", got, topics.QuotaBreaches)
	}
	parked, err := outbox.ListParked(ctx, s.db.Pool)
	if err != nil || len(parked) != 1 || parked[0].Topic != topics.UsageEventsDLQ || parked[0].Bytes != 1100<<10 {
		t.Fatalf("Parked = %+v, %v; want the huge dead letter", parked, err)
	}
	s.expectMetrics(map[string]int{
		"metering_outbox_parked":       1,
		"metering_outbox_parked_total": 1,
		"metering_outbox_pending":      0,
	})
}
