package stripesync_test

import (
	"context"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/stripesync"
	"github.com/usagemeter/metering/internal/testkit/stripefake"
	"github.com/usagemeter/metering/internal/windows"
)

func rowsByKey(t *testing.T, rows []stripesync.Row) map[string]stripesync.Row {
	t.Helper()
	out := map[string]stripesync.Row{}
	for _, r := range rows {
		out[r.Tenant+"/"+r.Metric] = r
	}
	return out
}

func TestReconcileStatuses(t *testing.T) {
	f := newFixture(t, 4, stripefake.Config{})
	ctx := context.Background()
	f.meter("t1", "api_calls", 100) // ok
	f.meter("t2", "api_calls", 50)  // dead letter: drift
	f.meter("t3", "api_calls", 70)  // metered after the sync: under-reported drift
	f.db.Exec(t, `UPDATE tenants SET stripe_customer_id = NULL WHERE tenant = 't4'`)
	f.meter("t4", "api_calls", 9) // no customer: unmapped
	f.fake.SetReject(func(_, customer string) bool { return customer == "cus_t2" })
	if _, err := f.biller.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	f.meter("t3", "api_calls", 90)
	rows, err := f.biller.Reconcile(ctx, f.now)
	if err != nil {
		t.Fatal(err)
	}
	got := rowsByKey(t, rows)
	check := func(key, status string, metered, reported, drift int64) {
		t.Helper()
		r := got[key]
		if r.Status != status || r.Metered.Int64() != metered || r.Reported.Int64() != reported || r.Drift.Int64() != drift || r.Period != f.now.Format("2006-01") {
			t.Errorf("%s: %+v (note %q), want %s metered %d reported %d drift %d", key, r, r.Note, status, metered, reported, drift)
		}
	}
	check("t1/api_calls", stripesync.StatusOK, 100, 100, 0)
	check("t2/api_calls", stripesync.StatusDrift, 50, 0, 50)
	check("t3/api_calls", stripesync.StatusDrift, 90, 70, 20)
	check("t4/api_calls", stripesync.StatusUnmapped, 9, 0, 0)
	if got["t4/api_calls"].Stripe != nil {
		t.Errorf("unmapped row has a Stripe total")
	}

	// The cause is fixed: replaying the DLQ and syncing brings every row to ok.
	f.fake.SetReject(nil)
	if _, _, err := f.biller.SendOpen(ctx, true); err != nil {
		t.Fatal(err)
	}
	if _, err := f.biller.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	rows, _ = f.biller.Reconcile(ctx, f.now)
	for _, r := range rows {
		if r.Status != stripesync.StatusOK && r.Status != stripesync.StatusUnmapped {
			t.Errorf("after fixes: %+v %s", r, r.Note)
		}
	}
}

func TestReconcilePendingWhileStripeAggregates(t *testing.T) {
	f := newFixture(t, 1, stripefake.Config{AggregationDelay: time.Hour})
	ctx := context.Background()
	f.meter("t1", "tokens", 500)
	if _, err := f.biller.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	rows, err := f.biller.Reconcile(ctx, f.now)
	if err != nil {
		t.Fatal(err)
	}
	if r := rowsByKey(t, rows)["t1/tokens"]; r.Status != stripesync.StatusPending || r.Stripe.Int64() != 0 || r.Reported.Int64() != 500 {
		t.Fatalf("row %+v %s", r, r.Note)
	}
}

func TestLateUsageAfterAFinalInvoiceIsCarried(t *testing.T) {
	f := newFixture(t, 1, stripefake.Config{})
	ctx := context.Background()
	last := windows.Month.Start(f.now).AddDate(0, -1, 0)
	f.db.Exec(t, `INSERT INTO usage_windows (tenant, meter, granularity, window_start, value, events) VALUES ('t1', 'bytes', 'month', $1, 40, 1)`, last)
	f.db.Exec(t, `INSERT INTO billing_periods (tenant, period_start, invoice_id) VALUES ('t1', $1, 'in_1')`, last)
	f.db.Exec(t, `INSERT INTO usage_corrections (tenant, metric, period_start, value, events, reason) VALUES ('t1', 'bytes', $1, 40, 1, 'period_closed')`, last)
	res, err := f.biller.Sync(ctx)
	if err != nil || res.Carried != 1 {
		t.Fatalf("sync: %+v, %v", res, err)
	}
	var open int
	_ = f.db.Pool.QueryRow(ctx, `SELECT count(*) FROM usage_corrections WHERE reconciled_at IS NULL`).Scan(&open)
	if open != 0 {
		t.Fatalf("%d corrections still open after their delta was pushed", open)
	}
	lastRows, _ := f.biller.Reconcile(ctx, last)
	r := rowsByKey(t, lastRows)["t1/bytes"]
	if r.CarriedOut.Int64() != 40 || r.Reported.Int64() != 40 || r.Status != stripesync.StatusOK || r.Note == "" {
		t.Fatalf("last month: %+v %q", r, r.Note)
	}
	thisRows, _ := f.biller.Reconcile(ctx, f.now)
	r = rowsByKey(t, thisRows)["t1/bytes"]
	if r.CarriedIn.Int64() != 40 || r.Stripe.Int64() != 40 || r.Drift.Sign() != 0 {
		t.Fatalf("this month: %+v %q", r, r.Note)
	}
}

func TestOverReportingIsCancelledWithin24h(t *testing.T) {
	f := newFixture(t, 1, stripefake.Config{})
	ctx := context.Background()
	f.meter("t1", "api_calls", 100)
	if _, err := f.biller.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	f.meter("t1", "api_calls", 80) // a rebuild found 20 too many
	res, err := f.biller.Sync(ctx)
	if err != nil || res.Cancelled != 1 || res.Sent != 1 {
		t.Fatalf("sync: %+v, %v", res, err)
	}
	if got := f.stripeTotal("t1", "api_calls"); got != 80 {
		t.Fatalf("Stripe total %d after the fix, want 80", got)
	}
	rows, _ := f.biller.Reconcile(ctx, f.now)
	if r := rowsByKey(t, rows)["t1/api_calls"]; r.Status != stripesync.StatusOK {
		t.Fatalf("row %+v %s", r, r.Note)
	}
}
