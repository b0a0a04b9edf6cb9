package accounts

import (
	"context"

	"github.com/usagemeter/metering/internal/storage"
)

// PlanExists reports whether plan name is defined.
func PlanExists(ctx context.Context, q storage.Executor, name string) (bool, error) {
	var exists bool
	err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM plans WHERE name = $1)`, name).Scan(&exists)
	return exists, err
}

// SetCustomerPlan moves every tenant of Stripe customer customer to plan
// (nil: no plan) and returns how many there were. plan must exist (a
// foreign key refuses it otherwise).
func SetCustomerPlan(ctx context.Context, q storage.Executor, customer string, plan *string) (int64, error) {
	tag, err := q.Exec(ctx, `UPDATE tenants SET plan = $2, updated_at = now() WHERE stripe_customer_id = $1`, customer, plan)
	if err != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}

// CountCustomerTenants counts the tenants of Stripe customer customer.
func CountCustomerTenants(ctx context.Context, q storage.Executor, customer string) (int, error) {
	var n int
	err := q.QueryRow(ctx, `SELECT count(*) FROM tenants WHERE stripe_customer_id = $1`, customer).Scan(&n)
	return n, err
}
