package stripesync_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/billingcycle"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/testkit/stripefake"
	"github.com/usagemeter/metering/internal/windows"
)

// TestPushesFollowBillingPeriods: for a tenant billed monthly on the 14th
// at 09:23:11 and one billed yearly, the biller plans a push per billing
// period and stamps each meter event inside its period's whole minutes;
// through the Stripe test server each period's total equals its metered
// total, and the reconciliation of each period (named by the month it
// starts in) shows drift 0 with the tenant's [start, end).
func TestPushesFollowBillingPeriods(t *testing.T) {
	f := newFixture(t, 2, stripefake.Config{})
	ctx := context.Background()
	now := f.now
	y, m := now.Year(), now.Month()
	monthly := billingcycle.Change{From: time.Date(y, m-2, 14, 9, 23, 11, 0, time.UTC),
		Cycle: billingcycle.Cycle{Anchor: time.Date(y, m-2, 14, 9, 23, 11, 0, time.UTC), Interval: billingcycle.Month, Count: 1}}
	yearly := billingcycle.Change{From: time.Date(y, m-3, 5, 0, 0, 7, 0, time.UTC),
		Cycle: billingcycle.Cycle{Anchor: time.Date(y-1, m-3, 5, 0, 0, 7, 0, time.UTC), Interval: billingcycle.Year, Count: 1}}
	scheds := map[string]billingcycle.Schedule{}
	for tenant, ch := range map[string]billingcycle.Change{"t1": monthly, "t2": yearly} {
		if err := pgx.BeginFunc(ctx, f.db.Pool, func(tx pgx.Tx) error {
			_, err := accounts.SetCycle(ctx, tx, tenant, ch, ch.From.Add(-time.Hour), "admin")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		s, err := billingcycle.NewSchedule([]billingcycle.Change{ch})
		if err != nil {
			t.Fatal(err)
		}
		scheds[tenant] = s
	}
	type period struct {
		tenant     string
		start, end time.Time
		metered    int64
	}
	cs, ce := scheds["t1"].Span(now)
	ps, pe := scheds["t1"].Span(cs.Add(-time.Nanosecond))
	ys, ye := scheds["t2"].Span(now)
	periods := []period{{"t1", ps, pe, 70}, {"t1", cs, ce, 30}, {"t2", ys, ye, 500}}
	for _, p := range periods {
		f.db.Exec(t, `INSERT INTO usage_windows (tenant, meter, granularity, window_start, value, events) VALUES ($1, 'api_calls', 'month', $2, $3, 1)`,
			p.tenant, p.start, p.metered)
	}
	res, err := f.biller.Sync(ctx)
	if err != nil || res.Intents != 3 || res.Sent != 3 {
		t.Fatalf("sync: %+v, %v", res, err)
	}
	for _, p := range periods {
		var n int
		if err := f.db.Pool.QueryRow(ctx, `SELECT count(*) FROM billing_pushes WHERE tenant = $1 AND period_start = $2 AND billed_period_start = $2 AND delta = $3`,
			p.tenant, p.start, p.metered).Scan(&n); err != nil || n != 1 {
			t.Errorf("%s's period from %s: %d pushes (%v), want 1 of %d", p.tenant, p.start, n, err, p.metered)
		}
		// Stripe's summaries are minute-aligned: the period's whole minutes.
		from, to := p.start.Truncate(time.Minute), p.end.Truncate(time.Minute)
		if from.Before(p.start) {
			from = from.Add(time.Minute)
		}
		if got := f.fake.Total("api_calls", "cus_"+p.tenant, from, to); got != p.metered {
			t.Errorf("%s's period [%s, %s): Stripe %d, metered %d", p.tenant, p.start, p.end, got, p.metered)
		}
	}
	for _, e := range f.fake.Events() {
		inside := false
		for _, p := range periods {
			if "cus_"+p.tenant == e.Customer && !e.Timestamp.Before(p.start) && e.Timestamp.Before(p.end) {
				inside = true
			}
		}
		if !inside {
			t.Errorf("meter event %+v stamped outside its tenant's periods", e)
		}
	}
	// The reconciliation of each period: --period names the UTC month the
	// period starts in (the period in force at that month's end).
	for _, p := range periods {
		month := windows.Month.Start(p.start)
		rows, err := f.biller.Reconcile(ctx, month)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, r := range rows {
			if r.Tenant != p.tenant || r.Metric != "api_calls" {
				continue
			}
			found = true
			if !r.PeriodStart.Equal(p.start) || !r.PeriodEnd.Equal(p.end) || r.Metered.Int64() != p.metered || r.Stripe == nil ||
				r.Stripe.Int64() != p.metered || r.Drift.Sign() != 0 {
				t.Errorf("reconciliation of %s for %s: %+v, want [%s, %s) metered and in Stripe %d, drift 0",
					p.tenant, month.Format("2006-01"), r, p.start, p.end, p.metered)
			}
		}
		if !found {
			t.Errorf("reconciliation of %s: no row of %s", month.Format("2006-01"), p.tenant)
		}
	}
}

// TestReconcilesEveryPeriodOfAMonth: a tenant whose cycle changed in the
// middle of last month has two billing periods starting in that month
// (the calendar month's first part, then the new cycle's first period);
// the reconciliation of that month lists both, each with its own
// [start, end), metered total and Stripe total, drift 0, so no period's
// usage is left out of every month's reconciliation.
func TestReconcilesEveryPeriodOfAMonth(t *testing.T) {
	f := newFixture(t, 1, stripefake.Config{})
	ctx := context.Background()
	y, m := f.now.Year(), f.now.Month()
	at := time.Date(y, m-1, 10, 12, 0, 0, 0, time.UTC)
	ch := billingcycle.Change{From: at, Cycle: billingcycle.Cycle{Anchor: at, Interval: billingcycle.Month, Count: 1}}
	if err := pgx.BeginFunc(ctx, f.db.Pool, func(tx pgx.Tx) error {
		_, err := accounts.SetCycle(ctx, tx, "t1", ch, at.Add(-time.Hour), "admin")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	month := time.Date(y, m-1, 1, 0, 0, 0, 0, time.UTC)
	periods := []struct {
		start, end time.Time
		metered    int64
	}{{month, at, 40}, {at, at.AddDate(0, 1, 0), 60}}
	for _, p := range periods {
		f.db.Exec(t, `INSERT INTO usage_windows (tenant, meter, granularity, window_start, value, events) VALUES ('t1', 'api_calls', 'month', $1, $2, 1)`,
			p.start, p.metered)
	}
	if res, err := f.biller.Sync(ctx); err != nil || res.Sent < 2 {
		t.Fatalf("sync: %+v, %v", res, err)
	}
	rows, err := f.biller.Reconcile(ctx, month)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rows {
		if r.Tenant != "t1" || r.Metric != "api_calls" {
			continue
		}
		got = append(got, r.PeriodStart.Format(time.RFC3339)+" "+r.Metered.String()+" "+r.Stripe.String()+" "+r.Drift.String())
	}
	want := []string{month.Format(time.RFC3339) + " 40 40 0", at.Format(time.RFC3339) + " 60 60 0"}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("reconciliation of %s: %q, want %q", month.Format("2006-01"), got, want)
	}
}
