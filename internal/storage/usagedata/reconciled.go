package usagedata

import (
	"time"

	"github.com/jackc/pgx/v5"
)

// QueueMarkReconciled queues onto b the marking of (tenant, metric, month
// period)'s unreconciled corrections as reconciled (on their way to
// Stripe), only if the billing push identifier was recorded by the
// transaction b runs on: queue it after the push's insert, on the same
// batch (billingdata.InsertIntent's then), sent on a transaction, not
// inside a savepoint. If the insert recorded nothing (a push with that
// identifier existed), nothing is marked.
func QueueMarkReconciled(b *pgx.Batch, tenant, metric string, period time.Time, identifier string) {
	b.Queue(`UPDATE usage_corrections SET reconciled_at = now()
				WHERE tenant = $1 AND metric = $2 AND period_start = $3 AND reconciled_at IS NULL
					AND EXISTS (SELECT 1 FROM billing_pushes WHERE identifier = $4 AND xmin = pg_current_xact_id_if_assigned()::xid)`,
		tenant, metric, period, identifier)
}
