package usagedata_test

import (
	"context"
	"fmt"
	"log/slog"
	"math/big"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/usagemeter/metering/internal/migrate"
	"github.com/usagemeter/metering/internal/quota"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/windows"
	"github.com/usagemeter/metering/migrations"
)

// A database made by the schema of 0014 upgrades in place: its quotas
// become quotas on their metrics' implicit meters (no meter, no filter,
// not per group) and its breaches breaches of those meters (the metric,
// the empty group), read back as before, still recorded once per (tenant,
// metric, period, threshold); a row written as the release before writes
// it takes its metric as meter; and a plan may then hold several quotas on
// one metric.
func TestUpgradeKeepsQuotasAndBreachesAsImplicitMeters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	quiet := slog.New(slog.DiscardHandler)
	db := pgtest.NewEmpty(t)
	if _, err := migrate.Apply(ctx, db.Pool, migrationsThrough(t, 14), quiet); err != nil {
		t.Fatalf("applying migrations through 0014: %v", err)
	}
	month := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	db.Exec(t, `INSERT INTO plans (name, currency) VALUES ('pro', 'eur')`)
	db.Exec(t, `INSERT INTO plan_quotas (plan, metric, quota_limit, period, burst_percent, hard, stripe_event_name, unit_price)
		VALUES ('pro', 'tokens', 1000, 'month', 10, true, 'tokens_used', 0.002), ('pro', 'api_calls', NULL, 'day', 0, false, 'api_calls', NULL)`)
	db.Exec(t, `INSERT INTO tenants (tenant, plan) VALUES ('acme', 'pro')`)
	old := quota.Breach{BreachID: quota.BreachID("acme", "tokens", month, "warning"), Tenant: "acme", Metric: "tokens",
		PeriodStart: month, PeriodEnd: month.AddDate(0, 1, 0), Limit: 1000, Value: big.NewInt(800), Threshold: "warning",
		DetectedAt: month.Add(time.Hour)}
	db.Exec(t, `INSERT INTO quota_breaches (breach_id, tenant, metric, period_start, period_end, threshold, quota_limit, value, detected_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8::numeric, $9)`,
		old.BreachID, old.Tenant, old.Metric, old.PeriodStart, old.PeriodEnd, old.Threshold, old.Limit, old.Value.String(), old.DetectedAt)

	if res, err := migrate.Apply(ctx, db.Pool, migrations.FS, quiet); err != nil || res.From != 14 {
		t.Fatalf("upgrading = %+v, %v", res, err)
	}

	// Quotas: the implicit meters', read as before.
	var implicit int
	db.Pool.QueryRow(ctx, `SELECT count(*) FROM plan_quotas WHERE meter IS NULL AND group_filter = '{}' AND NOT per_group`).Scan(&implicit)
	if implicit != 2 {
		t.Fatalf("%d quotas on implicit meters after the upgrade, want 2", implicit)
	}
	st := accounts.New(db.Pool)
	p, err := st.Plan(ctx, "pro")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, q := range p.Quotas {
		got = append(got, fmt.Sprintf("%s %s %v %v %v %s %s", q.Metric, q.Meter, q.Filter, q.PerGroup, q.Limit != nil, q.Period, q.UnitPrice))
	}
	if want := []string{"api_calls api_calls map[] false false day ", "tokens tokens map[] false true month 0.002"}; !slices.Equal(got, want) {
		t.Fatalf("plan after the upgrade:\n%q\nwant\n%q", got, want)
	}
	rules, err := rulesNow(ctx, db.Pool, "acme")
	if err != nil || len(rules) != 1 || !rules[0].Implicit() || rules[0].Metric != "tokens" || *rules[0].Limit != 1000 {
		t.Fatalf("QuotaRules = %+v, %v; want tokens' implicit quota", rules, err)
	}

	// Breaches: the implicit meter's, recorded once.
	history, err := usagedata.NewReader(db.Pool).Breaches(ctx, "acme", 10)
	if err != nil || len(history) != 1 {
		t.Fatalf("Breaches = %+v, %v", history, err)
	}
	if h := history[0]; h.BreachID != old.BreachID || h.Meter != "tokens" || h.GroupKey != "" || string(h.Group) != "{}" || h.Value.Cmp(old.Value) != 0 {
		t.Fatalf("upgraded breach = %+v %s", h, h.Group)
	}
	again := old
	again.Meter, again.Group = "tokens", quota.WholeMeter
	for _, b := range []quota.Breach{again, func() quota.Breach { b := again; b.BreachID = "another id"; return b }()} {
		if recorded, err := usagedata.RecordBreach(ctx, db.Pool, b); err != nil || recorded {
			t.Fatalf("RecordBreach of the upgraded breach (id %s) = %v, %v; want not recorded", b.BreachID, recorded, err)
		}
	}
	// The aggregator of the release before, still running, names no meter.
	db.Exec(t, `INSERT INTO quota_breaches (breach_id, tenant, metric, period_start, period_end, threshold, quota_limit, value, detected_at)
		VALUES ('older release', 'acme', 'tokens', $1, $2, 'exceeded', 1000, 1000, now())`, old.PeriodStart, old.PeriodEnd)
	var meterName, groupKey string
	db.Pool.QueryRow(ctx, `SELECT meter, group_key FROM quota_breaches WHERE breach_id = 'older release'`).Scan(&meterName, &groupKey)
	if meterName != "tokens" || groupKey != "" {
		t.Fatalf("a breach written without a meter has meter %q, group key %q", meterName, groupKey)
	}

	// Several quotas on one metric: the implicit meter's and a meter's
	// filters; the same (meter, filter) twice is refused.
	if _, _, err := accounts.PutMeter(ctx, db.Pool, accounts.Meter{Name: "tokens_by_model", Metric: "tokens", Aggregation: accounts.AggregationSum, GroupBy: []string{"model"}}); err != nil {
		t.Fatal(err)
	}
	plan := accounts.Plan{Name: "pro", Currency: "eur", Quotas: []accounts.Quota{
		{Metric: "tokens", Limit: ptr(1000), Period: "month", StripeEventName: "tokens_used", UnitPrice: "0.002"},
		{Metric: "tokens", Meter: "tokens_by_model", Filter: map[string]string{"model": "gpt-4"}, Limit: ptr(100), Period: "month", StripeEventName: "tokens"},
		{Metric: "tokens", Meter: "tokens_by_model", Filter: map[string]string{"model": "gpt-3"}, Limit: ptr(200), Period: "month", StripeEventName: "tokens"},
		{Metric: "tokens", Meter: "tokens_by_model", PerGroup: true, Limit: ptr(50), Period: "day", StripeEventName: "tokens"},
	}}
	if p, err = st.PutPlan(ctx, plan); err != nil || len(p.Quotas) != 4 {
		t.Fatalf("PutPlan of four quotas on tokens = %+v, %v", p, err)
	}
	plan.Quotas = append(plan.Quotas, plan.Quotas[1])
	if _, err := st.PutPlan(ctx, plan); err == nil {
		t.Fatal("PutPlan accepted one (meter, filter) twice")
	}
	if rules, err = rulesNow(ctx, db.Pool, "acme"); err != nil || len(rules) != 4 {
		t.Fatalf("QuotaRules = %+v, %v; want 4", rules, err)
	}
}

func ptr(n int64) *int64 { return &n }

// rulesNow reads the limited quotas of tenant in force in the periods
// containing the present time.
func rulesNow(ctx context.Context, pool *pgxpool.Pool, tenant string) ([]usagedata.QuotaRule, error) {
	now := time.Now()
	from, to := windows.Month.Span(now)
	plans, err := usagedata.QuotaRules(ctx, pool, []string{tenant}, nil, from, to, "", now)
	if err != nil {
		return nil, err
	}
	return plans.At(tenant, now), nil
}
