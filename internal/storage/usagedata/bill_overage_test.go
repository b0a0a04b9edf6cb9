package usagedata_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// TestBillOverageLine: a quota with an overage price has an overage line
// after its line: the usage beyond its limit (never below 0), priced at
// the overage price, exact and rounded once; the projection likewise.
func TestBillOverageLine(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	store := accounts.New(db.Pool)
	defineBillMeters(t, db)
	reader := usagedata.NewReader(db.Pool)
	limit := func(n int64) *int64 { return &n }
	over := `{"model":"per_unit","unit_amount":"0.002333333333"}`
	tests := []struct {
		name        string
		quota       accounts.Quota
		want        []string
		overage     []bool
		total, proj string
	}{
		// 4000 used (8000 projected) against 3000: 1000 × 0.002333333333 =
		// 2.333333333 → 2.33; 5000 × … = 11.666666665 → 11.67.
		{"priced with overage", accounts.Quota{Metric: "tokens", StripeEventName: "tokens", Limit: limit(3000), UnitPrice: "0.001", OveragePrice: parsePrice(t, over)},
			[]string{`tokens|{}|{}|4000|4.00|8000|8.00`, `tokens|{}|{}|1000|2.33|5000|11.67`}, []bool{false, true}, "6.33", "19.67"},
		// Only the overage priced, usage under the limit so far.
		{"overage only, under the limit", accounts.Quota{Metric: "tokens", StripeEventName: "tokens", Limit: limit(6000), OveragePrice: parsePrice(t, over)},
			[]string{`tokens|{}|{}|0|0.00|2000|4.67`}, []bool{true}, "0.00", "4.67"},
	}
	for i, tt := range tests {
		tenant, plan := fmt.Sprintf("over-%d", i), fmt.Sprintf("over-%d", i)
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
			for j, l := range b.Lines {
				if j < len(tt.overage) && l.Overage != tt.overage[j] {
					t.Errorf("line %d: overage %v, want %v", j, l.Overage, tt.overage[j])
				}
				if l.Overage && (l.Included == nil || l.Included.Int64() != *tt.quota.Limit || l.Price.UnitPrice() != "0.002333333333") {
					t.Errorf("overage line %d: %+v", j, l)
				}
			}
			if b.Total != tt.total || b.ProjectedTotal != tt.proj {
				t.Errorf("total %s, projected %s; want %s, %s", b.Total, b.ProjectedTotal, tt.total, tt.proj)
			}
		})
	}
}

// TestOveragePriceIsVersionContent: an overage price is stored, read
// back, and a change of it alone makes a new plan version.
func TestOveragePriceIsVersionContent(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	store := accounts.New(db.Pool)
	limit := int64(100)
	q := accounts.Quota{Metric: "calls", Period: "month", StripeEventName: "calls", Limit: &limit}
	save := func(overage string) accounts.Plan {
		t.Helper()
		qq := q
		if overage != "" {
			qq.OveragePrice = parsePrice(t, overage)
		}
		p, err := store.PutPlan(ctx, accounts.Plan{Name: "pro", Quotas: []accounts.Quota{qq}})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	for i, step := range []struct {
		overage string
		version int
	}{
		{"", 1},
		{`{"model":"per_unit","unit_amount":"0.01"}`, 2},
		{`{"model":"per_unit","unit_amount":"0.01"}`, 2},
		{`{"model":"per_unit","unit_amount":"0.02"}`, 3},
	} {
		p := save(step.overage)
		if p.Version != step.version {
			t.Fatalf("step %d: version %d, want %d", i, p.Version, step.version)
		}
		got := p.Quotas[0].OveragePrice
		if (step.overage == "") != (got == nil) || (got != nil && got.UnitPrice() != parsePrice(t, step.overage).UnitPrice()) {
			t.Fatalf("step %d: overage price %+v, want %s", i, got, step.overage)
		}
	}
}
