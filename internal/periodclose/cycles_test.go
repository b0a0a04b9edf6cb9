package periodclose_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/billingcycle"
	"github.com/usagemeter/metering/internal/billingevents"
	"github.com/usagemeter/metering/internal/periodclose"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// TestClosesATenantsBillingPeriod: a tenant billed monthly on the 14th at
// 09:23:11 has its period [Oct 14 09:23:11, Nov 14 09:23:11) closed with
// that span, only once every partition has counted up to its end plus the
// lateness, and once only; the period running then is not closed.
func TestClosesATenantsBillingPeriod(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	start := time.Date(2026, 10, 14, 9, 23, 11, 0, time.UTC)
	end := start.AddDate(0, 1, 0)
	db.Exec(t, `INSERT INTO plans (name) VALUES ('pro')`)
	db.Exec(t, `INSERT INTO tenants (tenant, plan) VALUES ('acme', 'pro')`)
	if err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		_, err := accounts.SetCycle(ctx, tx, "acme", billingcycle.Change{From: start,
			Cycle: billingcycle.Cycle{Anchor: start, Interval: billingcycle.Month, Count: 1}}, start.Add(-time.Hour), "admin")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events) VALUES
		('acme', 'api_calls', '', 'month', $1, 5, 5), ('acme', 'api_calls', '', 'month', $2, 3, 3)`, start, end)
	// Partition 0 has counted up to 40 minutes after the period's end:
	// short of the hour of lateness.
	if ok, err := usagedata.AdvanceOffsetTo(ctx, db.Pool, group, topic, 0, -1, 100, end.Add(40*time.Minute)); err != nil || !ok {
		t.Fatalf("storing partition 0: %v %v", ok, err)
	}
	c := periodclose.New(db.Pool, periodclose.Config{Group: group, Topic: topic, Lateness: time.Hour,
		Now: func() time.Time { return end.Add(3 * time.Hour) }})
	if res, err := c.Close(ctx); err != nil || res.Closed != 0 {
		t.Fatalf("before the lateness passed: %+v %v", res, err)
	}
	if ok, err := usagedata.AdvanceOffsetTo(ctx, db.Pool, group, topic, 0, 100, 101, end.Add(61*time.Minute)); err != nil || !ok {
		t.Fatalf("advancing partition 0: %v %v", ok, err)
	}
	for range 2 {
		if _, err := c.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	evs := events(t, db)
	if len(evs) != 1 {
		t.Fatalf("%d period.closed events, want 1: %+v", len(evs), evs)
	}
	data := evs[0].Data.(billingevents.PeriodClosed)
	if !data.PeriodStart.Equal(start) || !data.PeriodEnd.Equal(end) || len(data.Usage) != 1 || data.Usage[0].Value.String() != "5" {
		t.Fatalf("period.closed %+v, want [%s, %s) with 5 api_calls", data, start, end)
	}
}
