package billingdata

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/usagemeter/metering/internal/storage"
)

// PartitionWatermark is where a consumer group stands on one partition:
// its stored next offset and its watermark (nil: none recorded yet).
type PartitionWatermark struct {
	Partition  int
	NextOffset int64
	Watermark  *time.Time
}

// Watermarks reads every stored partition of group's topic, by partition.
func Watermarks(ctx context.Context, q storage.Executor, group, topic string) ([]PartitionWatermark, error) {
	rows, err := q.Query(ctx, `SELECT partition, next_offset, watermark FROM consumer_offsets
		WHERE consumer_group = $1 AND topic = $2 ORDER BY partition`, group, topic)
	if err != nil {
		return nil, fmt.Errorf("reading watermarks of %s: %w", topic, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (PartitionWatermark, error) {
		var w PartitionWatermark
		err := r.Scan(&w.Partition, &w.NextOffset, &w.Watermark)
		return w, err
	})
	if err != nil {
		return nil, fmt.Errorf("reading watermarks of %s: %w", topic, err)
	}
	return out, nil
}

// WaitingDeadLetters counts, for each of tenants, the usage dead letters
// that wait for an operator (pending: neither replayed nor discarded).
// Tenants without any are absent from the map.
func WaitingDeadLetters(ctx context.Context, q storage.Executor, tenants []string) (map[string]int, error) {
	rows, err := q.Query(ctx, `SELECT tenant, count(*) FROM usage_dlq
		WHERE status = 'pending' AND tenant = ANY($1) GROUP BY tenant`, tenants)
	if err != nil {
		return nil, fmt.Errorf("counting waiting dead letters: %w", err)
	}
	out := map[string]int{}
	var tenant string
	var n int
	if _, err := pgx.ForEachRow(rows, []any{&tenant, &n}, func() error { out[tenant] = n; return nil }); err != nil {
		return nil, fmt.Errorf("counting waiting dead letters: %w", err)
	}
	return out, nil
}

// TenantPeriod is one tenant's month, by its start.
type TenantPeriod struct {
	Tenant string
	Start  time.Time
}

// UnannouncedMonths lists the tenants' months starting in [from, before)
// that have usage (a month window) and no period.closed recorded yet, by
// start then tenant. It reads month windows by start only (the partial
// index usage_windows_month_start), so its cost is the months' window
// count, not the table's.
func UnannouncedMonths(ctx context.Context, q storage.Executor, from, before time.Time) ([]TenantPeriod, error) {
	rows, err := q.Query(ctx, `SELECT w.window_start, w.tenant FROM usage_windows w
		WHERE w.granularity = 'month' AND w.window_start >= $1 AND w.window_start < $2
			AND NOT EXISTS (SELECT 1 FROM billing_period_events e WHERE e.tenant = w.tenant AND e.period_start = w.window_start)
		GROUP BY w.window_start, w.tenant
		ORDER BY w.window_start, w.tenant COLLATE "C"`, from, before)
	if err != nil {
		return nil, fmt.Errorf("finding months to close: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (TenantPeriod, error) {
		var p TenantPeriod
		err := r.Scan(&p.Start, &p.Tenant)
		return p, err
	})
	if err != nil {
		return nil, fmt.Errorf("finding months to close: %w", err)
	}
	return out, nil
}

// MonthUsage is the usage of one meter and group of a tenant's month.
// Meter is the meter's name (a metric's name for its implicit meter; no
// defined meter shares a metric's name unless it is that implicit meter);
// Metric and Aggregation are its definition's (the metric itself and sum
// for an implicit meter); Group is the group's key, resolved from its
// digest when it was stored as one ("" for a meter without groups).
type MonthUsage struct {
	Meter, Metric, Aggregation, Group string
	Value                             pgtype.Numeric
}

// MonthUsages reads every month window of tenant's month starting at
// start: each meter's and group's exact value, by meter then group.
func MonthUsages(ctx context.Context, q storage.Executor, tenant string, start time.Time) ([]MonthUsage, error) {
	rows, err := q.Query(ctx, `SELECT w.meter, coalesce(m.metric, w.meter), coalesce(m.aggregation, 'sum'),
			coalesce(gk.group_key, w.group_key), w.value
		FROM usage_windows w
		LEFT JOIN meters m ON m.name = w.meter
		LEFT JOIN meter_group_keys gk ON gk.meter = w.meter AND gk.digest = w.group_key
		WHERE w.tenant = $1 AND w.granularity = 'month' AND w.window_start = $2
		ORDER BY w.meter COLLATE "C", w.group_key COLLATE "C"`, tenant, start)
	if err != nil {
		return nil, fmt.Errorf("reading the usage of %s's month %s: %w", tenant, start.Format("2006-01"), err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (MonthUsage, error) {
		var u MonthUsage
		err := r.Scan(&u.Meter, &u.Metric, &u.Aggregation, &u.Group, &u.Value)
		return u, err
	})
	if err != nil {
		return nil, fmt.Errorf("reading the usage of %s's month %s: %w", tenant, start.Format("2006-01"), err)
	}
	return out, nil
}

// RecordPeriodClosed records that tenant's period [start, end) was
// announced with the period.closed event eventID, and reports whether
// this call recorded it: false when it was already (by this or another
// biller), in which case the caller must not queue the event. Run it in
// the transaction that queues the event, so the two commit together.
func RecordPeriodClosed(ctx context.Context, q storage.Executor, tenant string, start, end time.Time, eventID string) (bool, error) {
	tag, err := q.Exec(ctx, `INSERT INTO billing_period_events (tenant, period_start, period_end, event_id)
		VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING`, tenant, start, end, eventID)
	if err != nil {
		return false, fmt.Errorf("recording the close of %s's period %s: %w", tenant, start.Format(time.RFC3339), err)
	}
	return tag.RowsAffected() != 0, nil
}

// PeriodAnnouncements returns, for each tenant whose period starting at
// start was announced, when it was.
func PeriodAnnouncements(ctx context.Context, q storage.Executor, start time.Time) (map[string]time.Time, error) {
	rows, err := q.Query(ctx, `SELECT tenant, closed_at FROM billing_period_events WHERE period_start = $1`, start)
	if err != nil {
		return nil, fmt.Errorf("reading announced periods: %w", err)
	}
	out := map[string]time.Time{}
	var tenant string
	var at time.Time
	if _, err := pgx.ForEachRow(rows, []any{&tenant, &at}, func() error { out[tenant] = at; return nil }); err != nil {
		return nil, fmt.Errorf("reading announced periods: %w", err)
	}
	return out, nil
}
