package billingdata

import (
	"context"
	"time"

	"github.com/usagemeter/metering/internal/storage"
)

// ClosePeriod closes, for every tenant of Stripe customer customer, its
// billing period containing at (the invoice's period start), billed by
// invoice invoiceID; a period already closed for a tenant stays as it was
// (the first finalized invoice closes it).
func ClosePeriod(ctx context.Context, q storage.Executor, customer string, at time.Time, invoiceID string) error {
	_, err := q.Exec(ctx, `INSERT INTO billing_periods (tenant, period_start, invoice_id)
		SELECT tenant, (billing_period(tenant, $2)).period_start, $3 FROM tenants WHERE stripe_customer_id = $1
		ON CONFLICT (tenant, period_start) DO NOTHING`, customer, at, invoiceID)
	return err
}
