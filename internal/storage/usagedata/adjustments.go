package usagedata

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/storage"
)

// AdjustmentLedgerPrefix starts the ledger id of an adjustment (its
// dedup row). It is not ASCII, and event ids are printable ASCII, so no
// event id can equal an adjustment's ledger id, and readers of counted
// events leave these rows out.
const AdjustmentLedgerPrefix = "\u0394adjustment:"

// Adjustment is one applied usage adjustment (usage_adjustments): Amount
// added to the month window of Meter, group GroupKey, starting at
// PeriodStart.
type Adjustment struct {
	Tenant      string    `json:"tenant"`
	ID          string    `json:"id"`
	Meter       string    `json:"meter"`
	GroupKey    string    `json:"group_key"`
	PeriodStart time.Time `json:"period_start"`
	Amount      int64     `json:"amount"`
	Reason      string    `json:"reason"`
	Reference   string    `json:"reference"`
	Partition   int32     `json:"source_partition"`
	Offset      int64     `json:"source_offset"`
	RecordedAt  time.Time `json:"recorded_at"`
}

// LockMonthWindow locks the month window (tenant, meter, groupKey,
// start) FOR UPDATE and returns its value; ok is false when the window
// does not exist (its value is then 0). groupKey is the key itself, of
// any length (StoredGroupKey is applied here).
func LockMonthWindow(ctx context.Context, q storage.Executor, tenant, meterName, groupKey string, start time.Time) (*big.Int, bool, error) {
	var v string
	err := q.QueryRow(ctx, `SELECT value::text FROM usage_windows
		WHERE tenant = $1 AND meter = $2 AND group_key = $3 AND granularity = 'month' AND window_start = $4
		FOR UPDATE`, tenant, meterName, StoredGroupKey(groupKey), start).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return new(big.Int), false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("locking the month window of %s/%s: %w", tenant, meterName, err)
	}
	n, ok := new(big.Int).SetString(v, 10)
	if !ok {
		return nil, false, fmt.Errorf("month window of %s/%s holds %q, not an integer", tenant, meterName, v)
	}
	return n, true, nil
}

// MeterHasUsage reports whether tenant has any window of meterName: a
// metric the tenant never sent has no implicit meter to adjust.
func MeterHasUsage(ctx context.Context, q storage.Executor, tenant, meterName string) (bool, error) {
	var ok bool
	if err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM usage_windows WHERE tenant = $1 AND meter = $2)`,
		tenant, meterName).Scan(&ok); err != nil {
		return false, fmt.Errorf("looking for usage of %s/%s: %w", tenant, meterName, err)
	}
	return ok, nil
}

// RecordAdjustment inserts adj into usage_adjustments and, when it was
// not there yet, adds its amount to its month window (made with no events
// when missing; a long group key is recorded in meter_group_keys). It
// reports whether adj was new: an adjustment already recorded changes
// nothing. The caller checked that the window stays non-negative, under
// LockMonthWindow's lock.
func RecordAdjustment(ctx context.Context, q storage.Executor, adj Adjustment) (bool, error) {
	tag, err := q.Exec(ctx, `INSERT INTO usage_adjustments (tenant, adjustment_id, meter, group_key, period_start, amount,
			reason, reference, src_partition, src_offset)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
		ON CONFLICT (tenant, adjustment_id) DO NOTHING`,
		adj.Tenant, adj.ID, adj.Meter, adj.GroupKey, adj.PeriodStart, adj.Amount, adj.Reason, adj.Reference, adj.Partition, adj.Offset)
	if err != nil {
		return false, fmt.Errorf("recording adjustment %s of %s: %w", adj.ID, adj.Tenant, err)
	}
	if tag.RowsAffected() == 0 {
		return false, nil
	}
	stored := StoredGroupKey(adj.GroupKey)
	if stored != adj.GroupKey {
		if _, err := q.Exec(ctx, groupKeysSQL, []string{adj.Meter}, []string{stored}, []string{adj.GroupKey}); err != nil {
			return false, fmt.Errorf("recording the long group key of adjustment %s: %w", adj.ID, err)
		}
	}
	if _, err := q.Exec(ctx, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events)
		VALUES ($1, $2, $3, 'month', $4, $5, 0)
		ON CONFLICT `+windowKey+` DO UPDATE SET value = usage_windows.value + EXCLUDED.value, updated_at = now()`,
		adj.Tenant, adj.Meter, stored, adj.PeriodStart, adj.Amount); err != nil {
		return false, fmt.Errorf("adjusting the month window of %s/%s: %w", adj.Tenant, adj.Meter, err)
	}
	return true, nil
}

// ListAdjustments returns tenant's adjustments of periods starting in
// [from, to), ordered by period, then source offset. An empty tenant
// lists every tenant's.
func ListAdjustments(ctx context.Context, q storage.Executor, tenant string, from, to time.Time) ([]Adjustment, error) {
	return listAdjustments(ctx, q, `SELECT tenant, adjustment_id, meter, group_key, period_start, amount, reason, reference,
			src_partition, src_offset, recorded_at
		FROM usage_adjustments
		WHERE ($1 = '' OR tenant = $1) AND period_start >= $2 AND period_start < $3
		ORDER BY tenant, period_start, src_partition, src_offset`, tenant, from, to)
}

// AdjustmentsOfMonth returns the adjustments an adjustment's `period:
// YYYY-MM` names for month (its first instant): for each tenant, those of
// its billing period in force at the month's last instant, as rollup
// places them, whenever that period started (a quarterly or yearly
// period starts months before). An empty tenant lists every tenant's.
func AdjustmentsOfMonth(ctx context.Context, q storage.Executor, tenant string, month time.Time) ([]Adjustment, error) {
	last := month.AddDate(0, 1, 0).Add(-time.Microsecond)
	return listAdjustments(ctx, q, `SELECT tenant, adjustment_id, meter, group_key, period_start, amount, reason, reference,
			src_partition, src_offset, recorded_at
		FROM usage_adjustments
		WHERE ($1 = '' OR tenant = $1) AND period_start <= $2 AND period_start = (billing_period(tenant, $2)).period_start
		ORDER BY tenant, period_start, src_partition, src_offset`, tenant, last)
}

func listAdjustments(ctx context.Context, q storage.Executor, sql string, args ...any) ([]Adjustment, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("listing adjustments: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Adjustment, error) {
		var a Adjustment
		err := r.Scan(&a.Tenant, &a.ID, &a.Meter, &a.GroupKey, &a.PeriodStart, &a.Amount, &a.Reason, &a.Reference,
			&a.Partition, &a.Offset, &a.RecordedAt)
		a.PeriodStart, a.RecordedAt = a.PeriodStart.UTC(), a.RecordedAt.UTC()
		return a, err
	})
	if err != nil {
		return nil, fmt.Errorf("listing adjustments: %w", err)
	}
	return out, nil
}
