package usagedata

import (
	"context"
	"fmt"
	"math/big"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/usagemeter/metering/internal/quota"
	"github.com/usagemeter/metering/internal/storage"
	"github.com/usagemeter/metering/internal/windows"
)

// WindowValue returns the value of tenant's metric in the window of
// granularity g starting at start; the window must exist.
func WindowValue(ctx context.Context, q storage.Executor, tenant, metric string, g windows.Granularity, start time.Time) (*big.Int, error) {
	var used pgtype.Numeric
	if err := q.QueryRow(ctx, `SELECT value FROM usage_windows
			WHERE tenant = $1 AND meter = $2 AND group_key = '' AND granularity = $3 AND window_start = $4`,
		tenant, metric, string(g), start).Scan(&used); err != nil {
		return nil, fmt.Errorf("reading usage of %s/%s: %w", tenant, metric, err)
	}
	return NumericInt(used), nil
}

// RecordBreach records b unless a breach with its id is recorded already,
// and reports whether it recorded it: each crossing is recorded once.
func RecordBreach(ctx context.Context, q storage.Executor, b quota.Breach) (bool, error) {
	tag, err := q.Exec(ctx, `INSERT INTO quota_breaches (breach_id, tenant, metric, period_start, period_end, threshold, quota_limit, value, detected_at)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8::numeric, $9) ON CONFLICT DO NOTHING`,
		b.BreachID, b.Tenant, b.Metric, b.PeriodStart, b.PeriodEnd, b.Threshold, b.Limit, b.Value.String(), b.DetectedAt)
	if err != nil {
		return false, fmt.Errorf("recording breach: %w", err)
	}
	return tag.RowsAffected() == 1, nil
}
