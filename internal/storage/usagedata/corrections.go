package usagedata

import (
	"context"
	"fmt"
	"time"

	"github.com/usagemeter/metering/internal/storage"
)

// RecordLateUsage records value (a non-negative decimal integer) and
// events counted into tenant's metric for the billing period starting at
// periodStart after that period had ended (reason period_closed), for the
// biller to reconcile.
func RecordLateUsage(ctx context.Context, q storage.Executor, tenant, metric string, periodStart time.Time, value string, events int64) error {
	if _, err := q.Exec(ctx, `INSERT INTO usage_corrections (tenant, metric, period_start, value, events, reason)
			VALUES ($1, $2, $3, $4::numeric, $5, 'period_closed')`, tenant, metric, periodStart, value, events); err != nil {
		return fmt.Errorf("recording a correction: %w", err)
	}
	return nil
}
