package rollup_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/planperiod"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// thresholdsOf lists the thresholds of res's breaches.
func thresholdsOf(res rollup.Result) string {
	var out []string
	for _, b := range res.Breaches {
		out = append(out, fmt.Sprintf("%s@%d", b.Threshold, b.Limit))
	}
	return fmt.Sprint(out)
}

// TestMidPeriodUpgradeFollowsTheProrationPolicy: a tenant on free (1,000
// calls a month) since always moves to a plan of 4,000 on 11 November, a
// third into the month. The month's limit is then 4,000 (immediate), 1,000
// (next_period) or 1/3 × 1,000 + 2/3 × 4,000 = 3,000 (prorate), in the
// breaches the aggregator records and in GET /v1/quotas alike. A version
// of the plan made after the month does not change the month's states.
func TestMidPeriodUpgradeFollowsTheProrationPolicy(t *testing.T) {
	t.Parallel()
	mid := time.Date(2026, 11, 11, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		policy   planperiod.Proration
		limit    int64
		breaches string
		state    string
	}{
		{planperiod.Immediate, 4000, "[]", "ok"},
		{planperiod.NextPeriod, 1000, "[warning@1000 exceeded@1000]", "exceeded"},
		{planperiod.Prorate, 3000, "[warning@3000]", "warning"},
	}
	for _, tt := range tests {
		t.Run(string(tt.policy), func(t *testing.T) {
			t.Parallel()
			a, db := newAgg(t)
			ctx := context.Background()
			st := accounts.New(db.Pool)
			for _, p := range []accounts.Plan{
				{Name: "free", Quotas: []accounts.Quota{{Metric: "api_calls", Limit: ptr(1000), Period: "month", StripeEventName: "api_calls"}}},
				{Name: "pro", Proration: string(tt.policy), Quotas: []accounts.Quota{{Metric: "api_calls", Limit: ptr(4000), Period: "month", StripeEventName: "api_calls"}}},
			} {
				if _, _, err := st.SavePlan(ctx, p, now); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := st.SetTenant(ctx, accounts.Tenant{Tenant: "acme", Plan: "free"}, time.Time{}, now); err != nil {
				t.Fatal(err)
			}
			if _, err := st.SetTenant(ctx, accounts.Tenant{Tenant: "acme", Plan: "pro"}, mid, now); err != nil {
				t.Fatal(err)
			}
			res, err := a.Apply(ctx, 0, -1, batch(0, ev("e1", "acme", "api_calls", 2500, now)))
			if err != nil {
				t.Fatal(err)
			}
			if got := thresholdsOf(res); got != tt.breaches {
				t.Fatalf("breaches %s, want %s", got, tt.breaches)
			}
			checkQuota(t, db, now, tt.limit, tt.state)

			// A new version of pro from December: November keeps its quotas.
			dec := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
			if _, created, err := st.SavePlan(ctx, accounts.Plan{Name: "pro", Proration: string(tt.policy), EffectiveFrom: &dec,
				Quotas: []accounts.Quota{{Metric: "api_calls", Limit: ptr(10), Period: "month", StripeEventName: "api_calls"}}}, dec.Add(time.Hour)); err != nil || !created {
				t.Fatalf("SavePlan of a new version = %v, %v", created, err)
			}
			res, err = a.Apply(ctx, 0, res.NextOffset, batch(res.NextOffset, ev("e2", "acme", "api_calls", 1, now)))
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Breaches) != 0 {
				t.Fatalf("a version made after the month raised %s in it", thresholdsOf(res))
			}
			checkQuota(t, db, now, tt.limit, tt.state)
		})
	}
}

// checkQuota reads acme's quotas at at: one, with limit and state.
func checkQuota(t *testing.T, db *pgtest.DB, at time.Time, limit int64, state string) {
	t.Helper()
	p, qs, err := usagedata.NewReader(db.Pool).QuotasInForce(context.Background(), "acme", at)
	if err != nil {
		t.Fatal(err)
	}
	if p.Plan != "pro" || p.Source != "admin" || len(qs) != 1 || qs[0].Limit == nil || *qs[0].Limit != limit || string(qs[0].State) != state {
		t.Fatalf("quotas = %+v %+v, want pro (admin) with limit %d, %s", p, qs, limit, state)
	}
}

// TestDefaultPlanLimitsUnknownTenants: a tenant unknown to the tenants
// table, and a known one without a plan, are limited by the default
// plan's version in force; an explicit plan is not.
func TestDefaultPlanLimitsUnknownTenants(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	a := rollup.New(db.Pool, rollup.Config{Group: "test", Topic: "usage.events", DefaultPlan: "starter",
		Now: func() time.Time { return now }, Logger: slog.New(slog.DiscardHandler)})
	ctx := context.Background()
	st := accounts.New(db.Pool)
	for _, p := range []accounts.Plan{
		{Name: "starter", Quotas: []accounts.Quota{{Metric: "api_calls", Limit: ptr(100), Period: "month", StripeEventName: "api_calls"}}},
		{Name: "big", Quotas: []accounts.Quota{{Metric: "api_calls", Limit: ptr(100000), Period: "month", StripeEventName: "api_calls"}}},
	} {
		if _, _, err := st.SavePlan(ctx, p, now); err != nil {
			t.Fatal(err)
		}
	}
	for _, tn := range []accounts.Tenant{{Tenant: "planless"}, {Tenant: "paying", Plan: "big"}} {
		if _, err := st.SetTenant(ctx, tn, time.Time{}, now); err != nil {
			t.Fatal(err)
		}
	}
	res, err := a.Apply(ctx, 0, -1, batch(0, ev("u1", "stranger", "api_calls", 150, now), ev("p1", "planless", "api_calls", 150, now),
		ev("b1", "paying", "api_calls", 150, now)))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, b := range res.Breaches {
		got[b.Tenant] += b.Threshold + " "
	}
	if want := map[string]string{"stranger": "warning exceeded ", "planless": "warning exceeded "}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("breaches by tenant %v, want %v", got, want)
	}
	p, qs, err := usagedata.NewReader(db.Pool).WithDefaultPlan("starter").QuotasInForce(ctx, "planless", now)
	if err != nil || p.Plan != "starter" || p.Source != "default" || len(qs) != 1 || *qs[0].Limit != 100 {
		t.Fatalf("quotas of planless = %+v %+v, %v; want starter from the default", p, qs, err)
	}
}
