package rollup_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/quota"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/credits"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

func makeGrant(t *testing.T, db *pgtest.DB, id, meterName string, amount int64, priority int) {
	t.Helper()
	if _, _, err := credits.Create(context.Background(), db.Pool, credits.Grant{
		ID: id, Tenant: "acme", Meter: meterName, Amount: amount, EffectiveAt: now, Priority: priority,
		Reason: "test", Source: "goodwill", CreatedBy: "test",
	}); err != nil {
		t.Fatal(err)
	}
}

// TestGrantLiftsABlock: a tenant at 100 % of a hard limit gets a grant:
// its next events are judged against the allowance, so it is not
// blocked; the breaches recorded before stay; beyond the allowance it is
// blocked, the breach carrying the allowance as its limit.
func TestGrantLiftsABlock(t *testing.T) {
	a, db := newAgg(t)
	ctx := context.Background()
	st := accounts.New(db.Pool)
	if _, err := st.PutPlan(ctx, accounts.Plan{Name: "hard", Quotas: []accounts.Quota{
		{Metric: "api_calls", Limit: ptr(100), Period: "month", Hard: true, StripeEventName: "api_calls"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutTenant(ctx, accounts.Tenant{Tenant: "acme", Plan: "hard"}); err != nil {
		t.Fatal(err)
	}
	offset := int64(0)
	send := func(value int64) []quota.Breach {
		t.Helper()
		res, err := a.Apply(ctx, 0, offset-boolToInt(offset == 0), batch(offset, ev(fmt.Sprint("e", offset), "acme", "api_calls", value, now)))
		if err != nil {
			t.Fatal(err)
		}
		offset = res.NextOffset
		return res.Breaches
	}
	show := func(bs []quota.Breach) string {
		var parts []string
		for _, b := range bs {
			parts = append(parts, fmt.Sprintf("%s@%d", b.Threshold, b.Limit))
		}
		return strings.Join(parts, " ")
	}
	if got := show(send(100)); got != "warning@100 exceeded@100" {
		t.Fatalf("at 100 %%: %s", got)
	}
	makeGrant(t, db, "0193a5c2-7d3e-7b2a-9f1e-3c4d5e6f7a01", "api_calls", 50, 10)
	if got := show(send(1)); got != "" {
		t.Fatalf("101 of an allowance of 150: %s", got)
	}
	_, qs, err := usagedata.NewReader(db.Pool).Quotas(ctx, "acme", now)
	if err != nil {
		t.Fatal(err)
	}
	if q := qs[0]; q.State != quota.OK || q.Allowance.String() != "150" || q.Remaining.String() != "49" || len(q.Grants) != 1 || q.Grants[0].Burnt.String() != "1" {
		t.Fatalf("quota: %+v", q)
	}
	if n := count(t, db, `SELECT count(*) FROM quota_breaches WHERE tenant = 'acme'`); n != 2 {
		t.Fatalf("%d breaches, want the 2 recorded before the grant", n)
	}
	if got := show(send(50)); got != "blocked@150" {
		t.Fatalf("151 of an allowance of 150: %s", got)
	}
}

// TestGrantsBurnInPriorityOrder: usage of a filter quota on a defined
// meter beyond its limit burns the priority-1 grant before the
// priority-2 one, as GET /v1/quotas shows, and the warning is judged
// against the allowance.
func TestGrantsBurnInPriorityOrder(t *testing.T) {
	a, db := newAgg(t)
	ctx := context.Background()
	putMeters(t, db, meter.Definition{Name: "tokens_by_model", Metric: "tokens", Aggregation: meter.Sum, GroupBy: []string{"model"}})
	st := accounts.New(db.Pool)
	if _, err := st.PutPlan(ctx, accounts.Plan{Name: "ai", Quotas: []accounts.Quota{
		{Metric: "tokens", Meter: "tokens_by_model", Filter: map[string]string{"model": "gpt-4"}, Limit: ptr(100), Period: "month", StripeEventName: "tokens"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutTenant(ctx, accounts.Tenant{Tenant: "acme", Plan: "ai"}); err != nil {
		t.Fatal(err)
	}
	const p1, p2 = "0193a5c2-7d3e-7b2a-9f1e-3c4d5e6f7a01", "0193a5c2-7d3e-7b2a-9f1e-3c4d5e6f7a02"
	makeGrant(t, db, p2, "tokens_by_model", 50, 2)
	makeGrant(t, db, p1, "tokens_by_model", 30, 1)
	offset := int64(0)
	send := func(value int64) []quota.Breach {
		t.Helper()
		e := ev(fmt.Sprint("e", offset), "acme", "tokens", value, now)
		e.Properties = map[string]string{"model": "gpt-4"}
		res, err := a.Apply(ctx, 0, offset-boolToInt(offset == 0), batch(offset, []any{e}...))
		if err != nil {
			t.Fatal(err)
		}
		offset = res.NextOffset
		return res.Breaches
	}
	grants := func() string {
		t.Helper()
		_, qs, err := usagedata.NewReader(db.Pool).Quotas(ctx, "acme", now)
		if err != nil {
			t.Fatal(err)
		}
		q := qs[0]
		parts := []string{q.Allowance.String(), q.Used.String(), string(q.State)}
		for _, g := range q.Grants {
			parts = append(parts, fmt.Sprintf("%s:%s/%s", g.ID[34:], g.Burnt, g.Remaining))
		}
		return strings.Join(parts, " ")
	}
	if bs := send(120); len(bs) != 0 {
		t.Fatalf("120 of an allowance of 180: %v", bs)
	}
	if got, want := grants(), "180 120 ok 01:20/10 02:0/50"; got != want {
		t.Fatalf("after 120: %s, want %s", got, want)
	}
	bs := send(40)
	if len(bs) != 1 || bs[0].Threshold != "warning" || bs[0].Limit != 180 || bs[0].Meter != "tokens_by_model" {
		t.Fatalf("160 of an allowance of 180: %+v", bs)
	}
	if got, want := grants(), "180 160 warning 01:30/0 02:30/20"; got != want {
		t.Fatalf("after 160: %s, want %s", got, want)
	}
}
