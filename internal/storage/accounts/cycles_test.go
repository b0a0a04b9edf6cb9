package accounts_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/billingcycle"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// TestBillingPeriodSQLMatchesSchedule: the SQL function billing_period
// (migration 0025) answers, for tenants with histories of every kind of
// cycle (anchors on the 31st, at a time of day, yearly, weekly, changes
// mid-period) and for a tenant without one, the period
// billingcycle.Schedule.Span answers, at random instants and at every
// boundary; Schedules reads the same schedules in one statement.
func TestBillingPeriodSQLMatchesSchedule(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.New(t)
	store := accounts.New(db.Pool)
	at := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	cyc := func(anchor string, iv billingcycle.Interval, n int) billingcycle.Cycle {
		return billingcycle.Cycle{Anchor: at(anchor), Interval: iv, Count: n}
	}
	histories := map[string][]billingcycle.Change{
		"calendar": nil,
		"on14th":   {{From: at("2026-03-14T09:23:11Z"), Cycle: cyc("2026-03-14T09:23:11Z", billingcycle.Month, 1)}},
		"on31st":   {{From: at("2026-01-20T00:00:00Z"), Cycle: cyc("2025-12-31T18:00:00.123456Z", billingcycle.Month, 1)}},
		"yearly":   {{From: at("2026-02-28T00:00:00Z"), Cycle: cyc("2024-02-29T12:00:00Z", billingcycle.Year, 1)}},
		"changes": {
			{From: at("2026-02-10T00:00:00Z"), Cycle: cyc("2026-02-10T00:00:00Z", billingcycle.Week, 2)},
			{From: at("2026-05-05T05:05:05Z"), Cycle: cyc("2026-01-30T00:00:00Z", billingcycle.Month, 3)},
			{From: at("2026-09-01T00:00:00Z"), Cycle: cyc("2026-08-17T10:00:00Z", billingcycle.Day, 10)},
		},
	}
	scheds := map[string]billingcycle.Schedule{}
	for tenant, hist := range histories {
		if _, err := store.PutTenant(ctx, accounts.Tenant{Tenant: tenant}); err != nil {
			t.Fatal(err)
		}
		for _, ch := range hist {
			err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
				_, err := accounts.SetCycle(ctx, tx, tenant, ch, ch.From.Add(-time.Hour), "admin")
				return err
			})
			if err != nil {
				t.Fatalf("%s: %v", tenant, err)
			}
		}
		s, err := billingcycle.NewSchedule(hist)
		if err != nil {
			t.Fatal(err)
		}
		scheds[tenant] = s
	}
	read, err := accounts.Schedules(ctx, db.Pool, []string{"calendar", "on14th", "on31st", "yearly", "changes"})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := read["calendar"]; ok || len(read) != 4 {
		t.Fatalf("Schedules read %d tenants (calendar: %v), want the 4 with a cycle", len(read), ok)
	}
	rng := rand.New(rand.NewPCG(25, 1))
	lo, hi := at("2025-06-01T00:00:00Z"), at("2028-06-01T00:00:00Z")
	for tenant, s := range scheds {
		if got := read.Of(tenant); fmt.Sprint(got.Changes()) != fmt.Sprint(s.Changes()) {
			t.Fatalf("%s: Schedules read %v, want %v", tenant, got.Changes(), s.Changes())
		}
		var instants []time.Time
		for _, p := range s.Periods(lo, hi) {
			instants = append(instants, p[0], p[1].Add(-time.Microsecond))
		}
		for range 200 {
			instants = append(instants, lo.Add(time.Duration(rng.Int64N(int64(hi.Sub(lo))))).Truncate(time.Microsecond))
		}
		for _, ti := range instants {
			ws, we := s.Span(ti)
			var gs, ge time.Time
			if err := db.Pool.QueryRow(ctx, `SELECT period_start, period_end FROM billing_period($1, $2)`, tenant, ti).Scan(&gs, &ge); err != nil {
				t.Fatal(err)
			}
			if !gs.Equal(ws) || !ge.Equal(we) {
				t.Fatalf("%s at %s: SQL [%s, %s), Go [%s, %s)", tenant, ti.Format(time.RFC3339Nano), gs.UTC(), ge.UTC(), ws, we)
			}
		}
	}
}

// TestSetCycleMargin: a change of cycle takes effect at least
// billingcycle.ChangeMargin after it is recorded (ErrCycleTooEarly
// otherwise), never before the latest change (ErrEffectiveFrom); a change
// from Stripe is brought forward to now plus the margin.
func TestSetCycleMargin(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.New(t)
	store := accounts.New(db.Pool)
	if _, err := store.PutTenant(ctx, accounts.Tenant{Tenant: "acme", StripeCustomerID: "cus_1"}); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 21, 19, 0, 0, 0, time.UTC)
	month := billingcycle.Cycle{Anchor: time.Date(2026, 10, 14, 0, 0, 0, 0, time.UTC), Interval: billingcycle.Month, Count: 1}
	set := func(from time.Time, c billingcycle.Cycle) error {
		return pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			_, err := accounts.SetCycle(ctx, tx, "acme", billingcycle.Change{From: from, Cycle: c}, now, "admin")
			return err
		})
	}
	for _, tt := range []struct {
		name string
		from time.Time
		want error
	}{
		{"now", now, accounts.ErrCycleTooEarly},
		{"in the past", now.Add(-time.Hour), accounts.ErrCycleTooEarly},
		{"a minute short of the margin", now.Add(billingcycle.ChangeMargin - time.Minute), accounts.ErrCycleTooEarly},
		{"at the margin", now.Add(billingcycle.ChangeMargin), nil},
		{"before the latest change", now.Add(billingcycle.ChangeMargin + time.Second), nil},
	} {
		c := month
		if tt.name == "before the latest change" {
			c.Interval = billingcycle.Year
			if err := set(now.Add(time.Hour), c); err != nil {
				t.Fatal(err)
			}
			tt.want = accounts.ErrEffectiveFrom
		}
		if err := set(tt.from, c); !errors.Is(err, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		}
	}
	// From Stripe, with the subscription's period start in the past: from
	// the latest change on (later than now plus the margin here).
	week := billingcycle.Cycle{Anchor: now.Add(-48 * time.Hour), Interval: billingcycle.Week, Count: 1}
	if err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		_, err := accounts.SetCustomerCycle(ctx, tx, "cus_1", billingcycle.Change{From: now.Add(-48 * time.Hour), Cycle: week}, now.Add(2*time.Hour))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	hist, err := accounts.TenantCycles(ctx, db.Pool, "acme")
	if err != nil {
		t.Fatal(err)
	}
	last := hist[len(hist)-1]
	if want := now.Add(2*time.Hour + billingcycle.ChangeMargin); !last.From.Equal(want) || last.Cycle.Interval != billingcycle.Week {
		t.Fatalf("the Stripe change: %+v, want a week from %s", last, want)
	}
}
