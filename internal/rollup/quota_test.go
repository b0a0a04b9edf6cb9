package rollup_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/quota"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

func ptr(n int64) *int64 { return &n }

func setupPlans(t *testing.T, db *pgtest.DB) {
	t.Helper()
	st := accounts.New(db.Pool)
	ctx := context.Background()
	if _, err := st.PutPlan(ctx, accounts.Plan{Name: "free", Quotas: []accounts.Quota{
		{Metric: "api_calls", Limit: ptr(100), Period: "month", BurstPercent: 20, Hard: true, StripeEventName: "api_calls"},
		{Metric: "tokens", Limit: ptr(100), Period: "day", BurstPercent: 0, Hard: false, StripeEventName: "tokens"},
		{Metric: "bytes", Limit: nil, Period: "month", StripeEventName: "bytes"},
	}}); err != nil {
		t.Fatal(err)
	}
	for _, tenant := range []string{"acme", "globex"} {
		if _, err := st.PutTenant(ctx, accounts.Tenant{Tenant: tenant, Plan: "free"}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestQuotaThresholds(t *testing.T) {
	a, db := newAgg(t)
	setupPlans(t, db)
	ctx := context.Background()
	offset := int64(0)
	send := func(tenant, metric string, values ...int64) rollup.Result {
		t.Helper()
		var items []any
		for _, v := range values {
			items = append(items, ev(fmt.Sprint(tenant, metric, offset, len(items)), tenant, metric, v, now))
		}
		res, err := a.Apply(ctx, 0, offset-boolToInt(offset == 0), batch(offset, items...))
		if err != nil {
			t.Fatal(err)
		}
		offset = res.NextOffset
		return res
	}
	steps := []struct {
		tenant, metric string
		values         []int64
		newBreaches    []string
	}{
		{"acme", "api_calls", []int64{79}, nil},
		{"acme", "api_calls", []int64{1}, []string{"warning"}},                            // 80 %
		{"acme", "api_calls", []int64{5}, nil},                                            // still warning: no new breach
		{"acme", "api_calls", []int64{15}, []string{"exceeded"}},                          // 100 %
		{"acme", "api_calls", []int64{20}, nil},                                           // 120 % = limit × (1 + burst): not yet blocked
		{"acme", "api_calls", []int64{1}, []string{"blocked"}},                            // beyond the burst on a hard quota
		{"acme", "api_calls", []int64{50}, nil},                                           // each threshold once per period
		{"globex", "api_calls", []int64{200}, []string{"warning", "exceeded", "blocked"}}, // one batch crosses all
		{"acme", "tokens", []int64{1000}, []string{"warning", "exceeded"}},                // soft: never blocked
		{"acme", "bytes", []int64{1 << 50}, nil},                                          // unlimited
		{"acme", "unplanned", []int64{1 << 50}, nil},                                      // not in the plan
	}
	for i, s := range steps {
		res := send(s.tenant, s.metric, s.values...)
		var got []string
		for _, b := range res.Breaches {
			got = append(got, b.Threshold)
			if b.BreachID != quota.BreachID(b.Tenant, b.Metric, b.PeriodStart, b.Threshold) {
				t.Errorf("step %d: unstable breach id", i)
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(s.newBreaches) {
			t.Fatalf("step %d (%s/%s +%v): breaches %v, want %v", i, s.tenant, s.metric, s.values, got, s.newBreaches)
		}
	}
	// Each breach is in the outbox for quota.breaches, keyed by tenant.
	rows, err := db.Pool.Query(ctx, `SELECT msg_key, msg_value FROM outbox WHERE topic = 'quota.breaches' ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var k, v []byte
		if err := rows.Scan(&k, &v); err != nil {
			t.Fatal(err)
		}
		var b map[string]any
		if err := json.Unmarshal(v, &b); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"breach_id", "tenant", "metric", "period_start", "period_end", "limit", "value", "threshold", "detected_at"} {
			if _, ok := b[f]; !ok {
				t.Errorf("breach message lacks %s: %s", f, v)
			}
		}
		if string(k) != b["tenant"] {
			t.Errorf("key %s, tenant %v", k, b["tenant"])
		}
		n++
	}
	if n != 8 {
		t.Fatalf("%d breach messages, want 8", n)
	}
	// Day quotas are per day: tomorrow starts clean.
	tomorrow := now.Add(24 * time.Hour)
	a2 := rollup.New(db.Pool, rollup.Config{Group: "test", Topic: "usage.events", Now: func() time.Time { return tomorrow }})
	res, err := a2.Apply(ctx, 0, offset, batch(offset, ev("tomorrow", "acme", "tokens", 79, tomorrow)))
	if err != nil || len(res.Breaches) != 0 {
		t.Fatalf("next day: %+v, %v", res, err)
	}
}

func boolToInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}
