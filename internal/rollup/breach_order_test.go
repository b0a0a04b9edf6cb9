package rollup_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"

	"github.com/usagemeter/metering/internal/quota"
	"github.com/usagemeter/metering/internal/topics"
)

// TestBreachesOfOneBatchQueuedInThresholdOrder sends one batch that takes
// many tenants past every threshold of two quotas at once: for each tenant,
// metric and period the breaches are queued warning, then exceeded, then
// blocked, both in the result and in the outbox.
func TestBreachesOfOneBatchQueuedInThresholdOrder(t *testing.T) {
	a, db := newAgg(t)
	setupPlans(t, db)
	ctx := context.Background()
	var tenants []string
	for i := range 20 {
		tenant := fmt.Sprintf("tenant-%02d", i)
		tenants = append(tenants, tenant)
		db.Exec(t, `INSERT INTO tenants (tenant, plan) VALUES ($1, 'free') ON CONFLICT DO NOTHING`, tenant)
	}
	var items []any
	for _, tenant := range tenants {
		items = append(items, ev(tenant+"-calls", tenant, "api_calls", 500, now), ev(tenant+"-tokens", tenant, "tokens", 500, now))
	}
	res, err := a.Apply(ctx, 0, -1, batch(0, items...))
	if err != nil {
		t.Fatal(err)
	}
	var queued []quota.Breach
	for _, v := range db.Outbox(t, topics.QuotaBreaches) {
		var b quota.Breach
		if err := json.Unmarshal(v, &b); err != nil {
			t.Fatal(err)
		}
		queued = append(queued, b)
	}
	rank := quota.Reached(quota.Blocked) // lowest first
	tests := []struct {
		name     string
		breaches []quota.Breach
	}{{"Result.Breaches", res.Breaches}, {"outbox rows by id", queued}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// hard api_calls: 3 thresholds; soft tokens: 2.
			if len(tc.breaches) != len(tenants)*5 {
				t.Fatalf("%d breaches, want %d", len(tc.breaches), len(tenants)*5)
			}
			got := map[string][]string{}
			for _, b := range tc.breaches {
				k := b.Tenant + "/" + b.Metric + "/" + b.PeriodStart.String()
				got[k] = append(got[k], b.Threshold)
			}
			for k, ths := range got {
				if !slices.IsSortedFunc(ths, func(x, y string) int {
					return slices.Index(rank, quota.State(x)) - slices.Index(rank, quota.State(y))
				}) {
					t.Errorf("%s: thresholds queued %v", k, ths)
				}
			}
		})
	}
}
