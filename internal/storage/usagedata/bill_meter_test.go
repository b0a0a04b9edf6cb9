package usagedata_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/windows"
)

// billNow is half way through November 2026: a sum or count projects to
// twice its usage so far.
var billNow = time.Date(2026, 11, 16, 0, 0, 0, 0, time.UTC)

// billEvents are one tenant's tokens of the month, by model, region and
// user; one has no model.
func billEvents(tenant string) []events.Event {
	at := time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)
	ev := func(id string, value int64, props map[string]string) events.Event {
		return events.Event{Tenant: tenant, Metric: "tokens", ID: id, Value: value, Time: at, Properties: props}
	}
	return []events.Event{
		ev("e1", 1000, map[string]string{"model": "gpt-4", "region": "eu", "user": "u1"}),
		ev("e2", 500, map[string]string{"model": "gpt-4", "region": "us", "user": "u2"}),
		ev("e3", 2000, map[string]string{"model": "claude", "region": "eu", "user": "u1"}),
		ev("e4", 300, map[string]string{"region": "eu", "user": "u3"}),
		ev("e5", 200, map[string]string{"model": "gpt-4", "region": "eu", "user": "u2"}),
	}
}

// billMeters are the meters of billEvents' metric that the bill tests price.
var billMeters = []meter.Definition{
	meter.Implicit("tokens"),
	{Name: "tokens_by_model", Metric: "tokens", Aggregation: meter.Sum, GroupBy: []string{"model"}},
	{Name: "tokens_mr", Metric: "tokens", Aggregation: meter.Sum, GroupBy: []string{"model", "region"}},
	{Name: "token_users", Metric: "tokens", Aggregation: meter.UniqueCount, GroupBy: []string{"model"}, Property: "user"},
	{Name: "token_peak", Metric: "tokens", Aggregation: meter.Max, GroupBy: []string{"model"}},
}

// addMonthEvents counts evs in the month windows of every meter of ds.
func addMonthEvents(t *testing.T, db *pgtest.DB, ds []meter.Definition, evs []events.Event) {
	t.Helper()
	var a usagedata.MeterAdds
	for _, d := range ds {
		for _, e := range evs {
			if d.Matches(e) {
				a.Append(e.Tenant, d.Name, d.Group(e).Key(), string(windows.Month), windows.Month.Start(e.Time), d.Contribution(e), 1)
			}
		}
	}
	if err := usagedata.AddMeterWindows(context.Background(), db.Pool, a); err != nil {
		t.Fatal(err)
	}
}

// defineBillMeters stores billMeters' defined meters.
func defineBillMeters(t *testing.T, db *pgtest.DB) {
	t.Helper()
	for _, d := range billMeters[1:] {
		m := accounts.Meter{Name: d.Name, Metric: d.Metric, Aggregation: string(d.Aggregation), GroupBy: d.GroupBy, Filter: map[string]string{}, Property: d.Property}
		if _, _, err := accounts.PutMeter(context.Background(), db.Pool, m); err != nil {
			t.Fatal(err)
		}
	}
}

// billLines shows each line as meter|filter|group|used|amount|projected used|projected amount.
func billLines(t *testing.T, b usagedata.Bill) []string {
	t.Helper()
	out := make([]string, len(b.Lines))
	for i, l := range b.Lines {
		g, err := json.Marshal(l.Group)
		if err != nil {
			t.Fatal(err)
		}
		f, _ := json.Marshal(l.Filter)
		out[i] = fmt.Sprintf("%s|%s|%s|%s|%s|%s|%s", l.Meter, f, g, l.Used, l.Amount, l.ProjectedUsed, l.ProjectedAmount)
	}
	return out
}

// TestBillPerMeterAndGroup: a priced quota on a defined meter is billed
// per group when its Stripe event name has placeholders or it is
// per_group (one line per group with usage, kept by the filter), else in
// one line of its filtered total; sum and count are projected to the
// month's end, max and unique_count are not.
func TestBillPerMeterAndGroup(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	store := accounts.New(db.Pool)
	defineBillMeters(t, db)
	reader := usagedata.NewReader(db.Pool)
	price := func(q accounts.Quota) accounts.Quota {
		if q.UnitPrice == "" {
			q.UnitPrice = "0.001"
		}
		return q
	}
	tests := []struct {
		name   string
		quotas []accounts.Quota
		want   []string
		total  string
		proj   string
	}{
		{"templated event name: a line per group",
			[]accounts.Quota{price(accounts.Quota{Metric: "tokens", Meter: "tokens_by_model", StripeEventName: "tokens_{model}"})},
			[]string{
				`tokens_by_model|{}|{"model":null}|300|0.30|600|0.60`,
				`tokens_by_model|{}|{"model":"claude"}|2000|2.00|4000|4.00`,
				`tokens_by_model|{}|{"model":"gpt-4"}|1700|1.70|3400|3.40`,
			}, "4.00", "8.00"},
		{"per_group without an event name",
			[]accounts.Quota{price(accounts.Quota{Metric: "tokens", Meter: "tokens_by_model", PerGroup: true})},
			[]string{
				`tokens_by_model|{}|{"model":null}|300|0.30|600|0.60`,
				`tokens_by_model|{}|{"model":"claude"}|2000|2.00|4000|4.00`,
				`tokens_by_model|{}|{"model":"gpt-4"}|1700|1.70|3400|3.40`,
			}, "4.00", "8.00"},
		{"a filter keeps only its groups",
			[]accounts.Quota{price(accounts.Quota{Metric: "tokens", Meter: "tokens_mr", StripeEventName: "t_{model}_{region}", Filter: map[string]string{"region": "eu"}})},
			[]string{
				`tokens_mr|{"region":"eu"}|{"model":null,"region":"eu"}|300|0.30|600|0.60`,
				`tokens_mr|{"region":"eu"}|{"model":"claude","region":"eu"}|2000|2.00|4000|4.00`,
				`tokens_mr|{"region":"eu"}|{"model":"gpt-4","region":"eu"}|1200|1.20|2400|2.40`,
			}, "3.50", "7.00"},
		{"not per group: one line of the filtered total",
			[]accounts.Quota{price(accounts.Quota{Metric: "tokens", Meter: "tokens_mr", Filter: map[string]string{"region": "eu"}})},
			[]string{`tokens_mr|{"region":"eu"}|{}|3500|3.50|7000|7.00`}, "3.50", "7.00"},
		{"not per group, no filter: the meter's total",
			[]accounts.Quota{price(accounts.Quota{Metric: "tokens", Meter: "tokens_by_model"})},
			[]string{`tokens_by_model|{}|{}|4000|4.00|8000|8.00`}, "4.00", "8.00"},
		{"unique_count is not extended",
			[]accounts.Quota{price(accounts.Quota{Metric: "tokens", Meter: "token_users", UnitPrice: "0.5"})},
			[]string{`token_users|{}|{}|3|1.50|3|1.50`}, "1.50", "1.50"},
		{"unique_count per group: distinct values of each group",
			[]accounts.Quota{price(accounts.Quota{Metric: "tokens", Meter: "token_users", UnitPrice: "0.5", StripeEventName: "users_{model}"})},
			[]string{
				`token_users|{}|{"model":null}|1|0.50|1|0.50`,
				`token_users|{}|{"model":"claude"}|1|0.50|1|0.50`,
				`token_users|{}|{"model":"gpt-4"}|2|1.00|2|1.00`,
			}, "2.00", "2.00"},
		{"max is not extended",
			[]accounts.Quota{price(accounts.Quota{Metric: "tokens", Meter: "token_peak", Filter: map[string]string{"model": "gpt-4"}})},
			[]string{`token_peak|{"model":"gpt-4"}|{}|1000|1.00|1000|1.00`}, "1.00", "1.00"},
		{"implicit and grouped, ordered by meter",
			[]accounts.Quota{
				price(accounts.Quota{Metric: "tokens", Meter: "tokens_by_model", StripeEventName: "tokens_{model}", UnitPrice: "0.002"}),
				price(accounts.Quota{Metric: "tokens", StripeEventName: "tokens"}),
			},
			[]string{
				`tokens|{}|{}|4000|4.00|8000|8.00`,
				`tokens_by_model|{}|{"model":null}|300|0.60|600|1.20`,
				`tokens_by_model|{}|{"model":"claude"}|2000|4.00|4000|8.00`,
				`tokens_by_model|{}|{"model":"gpt-4"}|1700|3.40|3400|6.80`,
			}, "12.00", "24.00"},
		{"a per-group quota whose filter keeps no group has no line",
			[]accounts.Quota{price(accounts.Quota{Metric: "tokens", Meter: "tokens_by_model", StripeEventName: "tokens_{model}", Filter: map[string]string{"model": "none"}})},
			nil, "0.00", "0.00"},
	}
	for i, tt := range tests {
		tenant, plan := fmt.Sprintf("tenant-%d", i), fmt.Sprintf("plan-%d", i)
		for j := range tt.quotas {
			tt.quotas[j].Period = "month"
		}
		if _, err := store.PutPlan(ctx, accounts.Plan{Name: plan, Quotas: tt.quotas}); err != nil {
			t.Fatal(err)
		}
		if _, err := store.PutTenant(ctx, accounts.Tenant{Tenant: tenant, Plan: plan}); err != nil {
			t.Fatal(err)
		}
		addMonthEvents(t, db, billMeters, billEvents(tenant))
		t.Run(tt.name, func(t *testing.T) {
			b, err := reader.Bill(ctx, tenant, billNow)
			if err != nil {
				t.Fatal(err)
			}
			if got := billLines(t, b); strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("lines:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			if b.Total != tt.total || b.ProjectedTotal != tt.proj {
				t.Errorf("total %s, projected %s; want %s, %s", b.Total, b.ProjectedTotal, tt.total, tt.proj)
			}
		})
	}
}
