package billingdata_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/billingdata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// A tenant without a plan assignment in force in a month is billed by
// the default plan's version in force then; one with an assignment, or
// with an explicit "no plan", is not; with no default plan it is not
// billed.
func TestBillingUsesTheDefaultPlan(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.New(t)
	st := accounts.New(db.Pool)
	oct := time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)
	nov := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	now := time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)
	for name, event := range map[string]string{"starter": "calls_starter", "pro": "calls_pro"} {
		if _, _, err := st.SavePlan(ctx, accounts.Plan{Name: name,
			Quotas: []accounts.Quota{{Metric: "calls", Period: "month", StripeEventName: event}}}, now); err != nil {
			t.Fatal(err)
		}
	}
	// t1 has no plan; t2 is on pro from 1 November (none before); t3
	// has an explicit "no plan" (unlimited, not billed).
	for _, tn := range []string{"t1", "t2", "t3"} {
		if _, err := st.SetTenant(ctx, accounts.Tenant{Tenant: tn, StripeCustomerID: "cus_" + tn}, time.Time{}, now); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.SetTenant(ctx, accounts.Tenant{Tenant: "t2", Plan: "pro", StripeCustomerID: "cus_t2"}, nov, now); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `INSERT INTO tenant_plans (tenant, plan, valid_from, source) VALUES ('t3', NULL, '-infinity', 'admin')`)
	db.Exec(t, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events) VALUES
		('t1', 'calls', '', 'month', $1, 10, 1), ('t1', 'calls', '', 'month', $2, 20, 2),
		('t2', 'calls', '', 'month', $1, 30, 3), ('t2', 'calls', '', 'month', $2, 40, 4),
		('t3', 'calls', '', 'month', $2, 50, 5)`, oct, nov)
	for _, tt := range []struct {
		defaultPlan, deltas, novTotals string
	}{
		{"", "[t2 2026-11 calls_pro]", "[t2 calls_pro]"},
		{"starter", "[t1 2026-10 calls_starter t1 2026-11 calls_starter t2 2026-10 calls_starter t2 2026-11 calls_pro]", "[t1 calls_starter t2 calls_pro]"},
	} {
		ds, err := billingdata.Deltas(ctx, db.Pool, oct, tt.defaultPlan)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, d := range ds {
			got = append(got, fmt.Sprintf("%s %s %s", d.Tenant, d.Period.UTC().Format("2006-01"), d.EventName))
		}
		if fmt.Sprint(got) != tt.deltas {
			t.Errorf("default %q: deltas %v\nwant %s", tt.defaultPlan, got, tt.deltas)
		}
		totals, err := billingdata.PeriodTotals(ctx, db.Pool, nov, tt.defaultPlan)
		if err != nil {
			t.Fatal(err)
		}
		got = nil
		for _, p := range totals {
			got = append(got, p.Tenant+" "+p.EventName)
		}
		if fmt.Sprint(got) != tt.novTotals {
			t.Errorf("default %q: November totals %v, want %s", tt.defaultPlan, got, tt.novTotals)
		}
	}
}
