package usagedata

import (
	"context"
	"fmt"
	"time"

	"github.com/usagemeter/metering/internal/storage"
)

// MarkReconciled marks the unreconciled corrections of (tenant, metric,
// month period) as reconciled: on their way to Stripe in the billing push
// the caller has just recorded in the same transaction q.
func MarkReconciled(ctx context.Context, q storage.Executor, tenant, metric string, period time.Time) error {
	if _, err := q.Exec(ctx, `UPDATE usage_corrections SET reconciled_at = now()
				WHERE tenant = $1 AND metric = $2 AND period_start = $3 AND reconciled_at IS NULL`,
		tenant, metric, period); err != nil {
		return fmt.Errorf("marking corrections of %s/%s reconciled: %w", tenant, metric, err)
	}
	return nil
}
