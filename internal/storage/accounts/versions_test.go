package accounts_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// A version's quotas are immutable: Postgres refuses to update or delete
// them; deleting the plan still removes them with its versions.
func TestVersionQuotasAreImmutable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.New(t)
	st := accounts.New(db.Pool)
	limit := int64(10)
	if _, err := st.PutPlan(ctx, accounts.Plan{Name: "free", Quotas: []accounts.Quota{{Metric: "calls", Limit: &limit, Period: "month", StripeEventName: "calls"}}}); err != nil {
		t.Fatal(err)
	}
	for _, stmt := range []string{`UPDATE plan_quotas SET quota_limit = 20`, `DELETE FROM plan_quotas`} {
		if _, err := db.Pool.Exec(ctx, stmt); err == nil {
			t.Fatalf("%s was accepted", stmt)
		}
	}
	if _, err := db.Pool.Exec(ctx, `DELETE FROM plans WHERE name = 'free'`); err != nil {
		t.Fatalf("deleting the plan: %v", err)
	}
}

// A new version may not take effect before the latest one does; the same
// content makes no version.
func TestSavePlanVersions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := accounts.New(pgtest.New(t).Pool)
	now := time.Date(2026, 11, 21, 0, 0, 0, 0, time.UTC)
	at := func(d int) *time.Time { t := time.Date(2026, 11, d, 0, 0, 0, 0, time.UTC); return &t }
	limit := func(n int64) []accounts.Quota {
		return []accounts.Quota{{Metric: "calls", Limit: &n, Period: "month", StripeEventName: "calls"}}
	}
	steps := []struct {
		plan    accounts.Plan
		version int
		created bool
		err     error
	}{
		{accounts.Plan{Name: "p", Quotas: limit(1)}, 1, true, nil},
		{accounts.Plan{Name: "p", Quotas: limit(1)}, 1, false, nil},
		{accounts.Plan{Name: "p", Quotas: limit(2), EffectiveFrom: at(10)}, 2, true, nil},
		{accounts.Plan{Name: "p", Quotas: limit(3), EffectiveFrom: at(10)}, 0, false, accounts.ErrEffectiveFrom},
		{accounts.Plan{Name: "p", Quotas: limit(3), EffectiveFrom: at(9)}, 0, false, accounts.ErrEffectiveFrom},
		{accounts.Plan{Name: "p", Quotas: limit(2), Proration: "prorate"}, 3, true, nil},
		{accounts.Plan{Name: "p", Quotas: limit(2), Proration: "prorate", Currency: "eur"}, 4, true, nil},
	}
	for i, s := range steps {
		got, created, err := st.SavePlan(ctx, s.plan, now)
		if !errors.Is(err, s.err) || (err == nil && (got.Version != s.version || created != s.created)) {
			t.Fatalf("step %d: version %d, created %v, %v; want %d, %v, %v", i, got.Version, created, err, s.version, s.created, s.err)
		}
	}
	versions, err := st.PlanVersions(ctx, "p", now)
	if err != nil || len(versions) != 4 {
		t.Fatalf("PlanVersions = %d, %v; want 4", len(versions), err)
	}
	if in, err := st.PlanAt(ctx, "p", *at(15)); err != nil || in.Version != 2 {
		t.Fatalf("PlanAt the 15th = %d, %v; want version 2", in.Version, err)
	}
}
