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

// Each month is billed under the quotas in force at its end: the plan of
// the tenant's assignment then, in the version in force then. A version
// or a plan change of November leaves October's event names alone.
func TestBillingUsesTheVersionInForceInThePeriod(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.New(t)
	st := accounts.New(db.Pool)
	oct := time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)
	nov := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	mid := time.Date(2026, 11, 15, 0, 0, 0, 0, time.UTC)
	now := time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)
	plan := func(name, event string, from *time.Time) {
		t.Helper()
		if _, _, err := st.SavePlan(ctx, accounts.Plan{Name: name, EffectiveFrom: from,
			Quotas: []accounts.Quota{{Metric: "calls", Period: "month", StripeEventName: event}}}, now); err != nil {
			t.Fatal(err)
		}
	}
	plan("pro", "calls_v1", nil)
	plan("pro", "calls_v2", &mid)
	plan("eu", "calls_eu", nil)
	for _, tn := range []string{"t1", "t2"} {
		if _, err := st.SetTenant(ctx, accounts.Tenant{Tenant: tn, Plan: "pro", StripeCustomerID: "cus_" + tn}, time.Time{}, now); err != nil {
			t.Fatal(err)
		}
	}
	// t2 moves to eu on 10 November.
	if _, err := st.SetTenant(ctx, accounts.Tenant{Tenant: "t2", Plan: "eu", StripeCustomerID: "cus_t2"}, time.Date(2026, 11, 10, 0, 0, 0, 0, time.UTC), now); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events) VALUES
		('t1', 'calls', '', 'month', $1, 10, 1), ('t1', 'calls', '', 'month', $2, 20, 2),
		('t2', 'calls', '', 'month', $1, 30, 3), ('t2', 'calls', '', 'month', $2, 40, 4)`, oct, nov)
	ds, err := billingdata.Deltas(ctx, db.Pool, oct, "")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range ds {
		got = append(got, fmt.Sprintf("%s %s %s", d.Tenant, d.Period.UTC().Format("2006-01"), d.EventName))
	}
	if want := "[t1 2026-10 calls_v1 t1 2026-11 calls_v2 t2 2026-10 calls_v1 t2 2026-11 calls_eu]"; fmt.Sprint(got) != want {
		t.Fatalf("deltas %v\nwant %s", got, want)
	}
	for _, month := range []struct {
		start time.Time
		want  string
	}{{oct, "[t1 calls_v1 t2 calls_v1]"}, {nov, "[t1 calls_v2 t2 calls_eu]"}} {
		totals, err := billingdata.PeriodTotals(ctx, db.Pool, month.start, "")
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, p := range totals {
			got = append(got, p.Tenant+" "+p.EventName)
		}
		if fmt.Sprint(got) != month.want {
			t.Fatalf("%s: totals %v, want %s", month.start.Format("2006-01"), got, month.want)
		}
	}
}
