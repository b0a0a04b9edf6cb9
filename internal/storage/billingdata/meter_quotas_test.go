package billingdata_test

import (
	"context"
	"testing"

	"github.com/usagemeter/metering/internal/storage/billingdata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// A plan with quotas on defined meters of a metric besides the metric's
// own quota bills the metric once: billing reads the implicit meter's
// quota only, whatever the meters' quotas say.
func TestMeterQuotasBillNothingMore(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.New(t)
	db.Exec(t, `INSERT INTO plans (name) VALUES ('pro')`)
	db.Exec(t, `INSERT INTO plan_quotas (plan, metric, quota_limit, period, stripe_event_name, meter, group_filter, per_group) VALUES
		('pro', 'tokens', 1000, 'month', 'tokens_used', NULL, '{}', false),
		('pro', 'tokens', 100, 'month', 'other_name', 'tokens_by_model', '{"model":"gpt-4"}', false),
		('pro', 'tokens', 50, 'day', 'other_name', 'tokens_by_model', '{}', true)`)
	db.Exec(t, `INSERT INTO tenants (tenant, plan, stripe_customer_id) VALUES ('t1', 'pro', 'cus_1')`)
	db.Exec(t, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events) VALUES
		('t1', 'tokens', '', 'month', $1, 500, 5), ('t1', 'tokens_by_model', '["gpt-4"]', 'month', $1, 200, 2)`, month)

	ds, err := billingdata.Deltas(ctx, db.Pool, month)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 1 || ds[0].Metric != "tokens" || ds[0].EventName != "tokens_used" {
		t.Fatalf("Deltas = %+v; want tokens once, as tokens_used", ds)
	}
	ts, err := billingdata.PeriodTotals(ctx, db.Pool, month)
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) != 1 || ts[0].Metric != "tokens" || ts[0].EventName != "tokens_used" {
		t.Fatalf("PeriodTotals = %+v; want tokens once, as tokens_used", ts)
	}
}
