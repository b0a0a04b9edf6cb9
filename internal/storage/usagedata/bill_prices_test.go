package usagedata_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/usagemeter/metering/internal/price"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

func parsePrice(t *testing.T, s string) *price.Price {
	t.Helper()
	p, err := price.Parse(json.RawMessage(s))
	if err != nil {
		t.Fatalf("price %s: %v", s, err)
	}
	return &p
}

// TestBillPriceModels: each price model's amounts in the bill, exact and
// rounded once per line; a per-group line is priced on its group's usage
// alone (its own tiers); the projection is priced the same way; a line
// shows its price, and unit_price only for a per_unit price.
func TestBillPriceModels(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	store := accounts.New(db.Pool)
	defineBillMeters(t, db)
	reader := usagedata.NewReader(db.Pool)
	const (
		graduated = `{"model":"graduated","tiers":[{"up_to":1000,"unit_amount":"0","flat_amount":"1"},{"up_to":5000,"unit_amount":"0.001","flat_amount":"2"},{"up_to":null,"unit_amount":"0.0005","flat_amount":"3"}]}`
		volume    = `{"model":"volume","tiers":[{"up_to":1000,"unit_amount":"0.01"},{"up_to":null,"unit_amount":"0.001","flat_amount":"1"}]}`
	)
	tests := []struct {
		name        string
		quota       accounts.Quota
		want        []string
		total, proj string
	}{
		// 4000: 1 + 3000 × 0.001 + 2; 8000: 1 + 4 + 2 + 3000 × 0.0005 + 3.
		{"graduated", accounts.Quota{Metric: "tokens", StripeEventName: "tokens", Price: parsePrice(t, graduated)},
			[]string{`tokens|{}|{}|4000|6.00|8000|11.50`}, "6.00", "11.50"},
		// Each group on its own tiers: 300 and 600 in the first; 2000 and
		// 4000, 1700 and 3400 in the second, with its fee.
		{"volume per group", accounts.Quota{Metric: "tokens", Meter: "tokens_by_model", StripeEventName: "tokens_{model}", Price: parsePrice(t, volume)},
			[]string{
				`tokens_by_model|{}|{"model":null}|300|3.00|600|6.00`,
				`tokens_by_model|{}|{"model":"claude"}|2000|3.00|4000|5.00`,
				`tokens_by_model|{}|{"model":"gpt-4"}|1700|2.70|3400|4.40`,
			}, "8.70", "15.40"},
		// The same price on the meter's total: 4000 at 0.001 + 1.
		{"volume on the total", accounts.Quota{Metric: "tokens", Meter: "tokens_by_model", Price: parsePrice(t, volume)},
			[]string{`tokens_by_model|{}|{}|4000|5.00|8000|9.00`}, "5.00", "9.00"},
		// 3500 units: 4 packages started, 3 whole; 7000: 7.
		{"package up", accounts.Quota{Metric: "tokens", Meter: "tokens_mr", Filter: map[string]string{"region": "eu"},
			Price: parsePrice(t, `{"model":"package","package_size":1000,"package_amount":"2.5"}`)},
			[]string{`tokens_mr|{"region":"eu"}|{}|3500|10.00|7000|17.50`}, "10.00", "17.50"},
		{"package down", accounts.Quota{Metric: "tokens", Meter: "tokens_mr", Filter: map[string]string{"region": "eu"},
			Price: parsePrice(t, `{"model":"package","package_size":1000,"package_amount":"2.5","round":"down"}`)},
			[]string{`tokens_mr|{"region":"eu"}|{}|3500|7.50|7000|17.50`}, "7.50", "17.50"},
		// 3 × 0.333333333333 = 0.999999999999, rounded once: 1.00.
		{"per_unit rounded once", accounts.Quota{Metric: "tokens", Meter: "token_users", Price: parsePrice(t, `{"model":"per_unit","unit_amount":"0.333333333333"}`)},
			[]string{`token_users|{}|{}|3|1.00|3|1.00`}, "1.00", "1.00"},
		// Each group's line rounds on its own: 3 × 0.005 = 0.015 → 0.02.
		{"per group rounding", accounts.Quota{Metric: "tokens", Meter: "token_users", StripeEventName: "users_{model}", UnitPrice: "0.005"},
			[]string{
				`token_users|{}|{"model":null}|1|0.01|1|0.01`,
				`token_users|{}|{"model":"claude"}|1|0.01|1|0.01`,
				`token_users|{}|{"model":"gpt-4"}|2|0.01|2|0.01`,
			}, "0.03", "0.03"},
	}
	for i, tt := range tests {
		tenant, plan := fmt.Sprintf("priced-%d", i), fmt.Sprintf("priced-%d", i)
		tt.quota.Period = "month"
		if _, err := store.PutPlan(ctx, accounts.Plan{Name: plan, Quotas: []accounts.Quota{tt.quota}}); err != nil {
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
			for _, l := range b.Lines {
				raw, err := json.Marshal(l)
				if err != nil {
					t.Fatal(err)
				}
				p, _ := json.Marshal(l.Price)
				wantPrice := `"price":` + string(p)
				perUnit := l.Price.Model == price.PerUnit
				if !strings.Contains(string(raw), wantPrice) || strings.Contains(string(raw), `"unit_price"`) != perUnit {
					t.Errorf("line %s: want %s, and unit_price only for per_unit", raw, wantPrice)
				}
			}
		})
	}
}
