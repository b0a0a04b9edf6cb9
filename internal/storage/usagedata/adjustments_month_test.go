package usagedata_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/billingcycle"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// TestAdjustmentsOfMonth: a month names, for each tenant, the billing
// period in force at its last instant, as an adjustment's period does:
// a quarterly tenant's November is the period that began in September,
// a calendar tenant's its November; ListAdjustments by period start would
// miss the quarterly one.
func TestAdjustmentsOfMonth(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.New(t)
	store := accounts.New(db.Pool)
	sep15 := time.Date(2026, 9, 15, 0, 0, 0, 0, time.UTC)
	for _, tenant := range []string{"quarterly", "calendar"} {
		if _, err := store.PutTenant(ctx, accounts.Tenant{Tenant: tenant}); err != nil {
			t.Fatal(err)
		}
	}
	err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		ch := billingcycle.Change{From: sep15, Cycle: billingcycle.Cycle{Anchor: sep15, Interval: billingcycle.Month, Count: 3}}
		_, err := accounts.SetCycle(ctx, tx, "quarterly", ch, sep15.Add(-time.Hour), "admin")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	nov, oct, dec15 := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 12, 15, 0, 0, 0, 0, time.UTC)
	db.Exec(t, `INSERT INTO usage_adjustments (tenant, adjustment_id, meter, group_key, period_start, amount, reason, reference, src_partition, src_offset)
		VALUES ('quarterly', 'q-sep', 'api_calls', '', $1, 5, 'r', '', 0, 1),
		       ('quarterly', 'q-dec', 'api_calls', '', $2, 6, 'r', '', 0, 2),
		       ('calendar', 'c-nov', 'api_calls', '', $3, 7, 'r', '', 0, 3),
		       ('calendar', 'c-oct', 'api_calls', '', $4, 8, 'r', '', 0, 4)`, sep15, dec15, nov, oct)
	ids := func(as []usagedata.Adjustment) []string {
		var out []string
		for _, a := range as {
			out = append(out, a.ID)
		}
		return out
	}
	tests := []struct {
		tenant string
		month  time.Time
		want   []string
	}{
		{"", nov, []string{"c-nov", "q-sep"}},
		{"quarterly", nov, []string{"q-sep"}},
		{"quarterly", oct, []string{"q-sep"}},
		{"quarterly", time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), []string{"q-dec"}},
		{"quarterly", time.Date(2026, 8, 1, 0, 0, 0, 0, time.UTC), nil},
		{"calendar", oct, []string{"c-oct"}},
		{"calendar", nov, []string{"c-nov"}},
	}
	for _, tt := range tests {
		got, err := usagedata.AdjustmentsOfMonth(ctx, db.Pool, tt.tenant, tt.month)
		if err != nil {
			t.Fatal(err)
		}
		if g := ids(got); !slices.Equal(g, tt.want) {
			t.Errorf("AdjustmentsOfMonth(%q, %s) = %v, want %v", tt.tenant, tt.month.Format("2006-01"), g, tt.want)
		}
	}
	old, err := usagedata.ListAdjustments(ctx, db.Pool, "quarterly", nov, nov.AddDate(0, 1, 0))
	if err != nil || len(old) != 0 {
		t.Fatalf("ListAdjustments by period start in November: %v, %v (the quarterly period began in September)", ids(old), err)
	}
}
