package accounts

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/storage"
)

// PlanExists reports whether plan name is defined.
func PlanExists(ctx context.Context, q storage.Executor, name string) (bool, error) {
	var exists bool
	err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM plans WHERE name = $1)`, name).Scan(&exists)
	return exists, err
}

// SetCustomerPlan moves every tenant of Stripe customer customer to plan
// (nil: no assignment, the default plan applies) from at on (source
// "stripe") and returns how many there were. at is brought back to now
// when it is later, and forward to a tenant's latest recorded change when
// it is earlier: a change never reaches back before one already made.
// plan must exist (a foreign key refuses it otherwise). hook (when not
// nil) runs on q for every tenant whose plan really changes.
func SetCustomerPlan(ctx context.Context, q storage.Executor, customer string, plan *string, at, now time.Time, hook PlanHook) (int64, error) {
	rows, err := q.Query(ctx, `SELECT tenant FROM tenants WHERE stripe_customer_id = $1 ORDER BY tenant FOR UPDATE`, customer)
	if err != nil {
		return 0, err
	}
	tenants, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return 0, err
	}
	if at.After(now) {
		at = now
	}
	for _, t := range tenants {
		latest, _, err := latestAssignment(ctx, q, t)
		if err != nil {
			return 0, err
		}
		when := at
		if latest != nil && when.Before(latest.boundary()) {
			when = latest.boundary()
		}
		if err := AssignPlan(ctx, q, t, plan, when, now, "stripe", hook); err != nil {
			return 0, fmt.Errorf("tenant %s: %w", t, err)
		}
	}
	return int64(len(tenants)), nil
}

// CountCustomerTenants counts the tenants of Stripe customer customer.
func CountCustomerTenants(ctx context.Context, q storage.Executor, customer string) (int, error) {
	var n int
	err := q.QueryRow(ctx, `SELECT count(*) FROM tenants WHERE stripe_customer_id = $1`, customer).Scan(&n)
	return n, err
}
