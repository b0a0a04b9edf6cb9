package billingdata

import (
	"context"
	"time"

	"github.com/usagemeter/metering/internal/storage"
)

// ClosePeriod closes the month starting at period, billed by invoice
// invoiceID, for every tenant of Stripe customer customer; a month already
// closed for a tenant stays as it was (the first finalized invoice closes
// it).
func ClosePeriod(ctx context.Context, q storage.Executor, customer string, period time.Time, invoiceID string) error {
	_, err := q.Exec(ctx, `INSERT INTO billing_periods (tenant, period_start, invoice_id)
		SELECT tenant, $2, $3 FROM tenants WHERE stripe_customer_id = $1
		ON CONFLICT (tenant, period_start) DO NOTHING`, customer, period, invoiceID)
	return err
}
