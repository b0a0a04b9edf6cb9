package usagedata

import (
	"context"
	"fmt"
	"time"

	"github.com/usagemeter/metering/internal/storage"
	"github.com/usagemeter/metering/internal/windows"
)

// CountedEvent is one event the ledger counted: its id, what it counted,
// and the record of usage.events it came from.
type CountedEvent struct {
	ID         string    `json:"id"`
	Tenant     string    `json:"tenant"`
	Metric     string    `json:"metric"`
	Value      int64     `json:"value"`
	Time       time.Time `json:"time"`
	Partition  int32     `json:"partition"`
	Offset     int64     `json:"offset"`
	RecordedAt time.Time `json:"recorded_at"`
}

// EachCountedEvent calls fn, in (time, id) order, for every event of
// tenant (of metric, unless "") whose time is in [from, to) that the
// ledger holds (the events of the dedup horizon; not the ledger rows of
// adjustments, which usage_adjustments lists). Rows stream from
// Postgres as fn consumes them: memory does not grow with the result. An
// error of fn stops the walk and is returned.
func EachCountedEvent(ctx context.Context, q storage.Executor, tenant, metric string, from, to time.Time, fn func(CountedEvent) error) error {
	rows, err := q.Query(ctx, `SELECT event_id, metric, value, event_time, src_partition, src_offset, recorded_at
		FROM ledger_events WHERE tenant = $1 AND ($2 = '' OR metric = $2) AND event_time >= $3 AND event_time < $4
			AND NOT starts_with(event_id, $5)
		ORDER BY event_time, event_id COLLATE "C"`, tenant, metric, from, to, AdjustmentLedgerPrefix)
	if err != nil {
		return fmt.Errorf("reading the counted events of tenant %s: %w", tenant, err)
	}
	defer rows.Close()
	e := CountedEvent{Tenant: tenant}
	for rows.Next() {
		if err := rows.Scan(&e.ID, &e.Metric, &e.Value, &e.Time, &e.Partition, &e.Offset, &e.RecordedAt); err != nil {
			return fmt.Errorf("reading the counted events of tenant %s: %w", tenant, err)
		}
		e.Time, e.RecordedAt = e.Time.UTC(), e.RecordedAt.UTC()
		if err := fn(e); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("reading the counted events of tenant %s: %w", tenant, err)
	}
	return nil
}

// ExportWindow is one stored window of a meter, as an export shows it.
type ExportWindow struct {
	Tenant string              `json:"tenant"`
	Meter  string              `json:"meter"`
	Group  string              `json:"group"` // the group key: a JSON array of the group_by values, "" without groups
	Window windows.Granularity `json:"window"`
	Start  time.Time           `json:"start"`
	End    time.Time           `json:"end"`
	Value  string              `json:"value"` // an exact decimal integer
	Events int64               `json:"events"`
}

// EachWindow calls fn, in (group key, start) order, for every stored
// window of granularity g of tenant's meter (a defined meter's name, or a
// metric for its implicit meter) starting in [from, to), with long group
// keys given back in full. Rows stream as fn consumes them. An error of
// fn stops the walk and is returned.
func EachWindow(ctx context.Context, q storage.Executor, tenant, meter string, g windows.Granularity, from, to time.Time, fn func(ExportWindow) error) error {
	sched, err := periodsOf(ctx, q, tenant, g)
	if err != nil {
		return err
	}
	rows, err := q.Query(ctx, `SELECT coalesce(k.group_key, w.group_key), w.window_start, w.value::text, w.events
		FROM usage_windows w
		LEFT JOIN meter_group_keys k ON starts_with(w.group_key, 'sha256:') AND k.meter = w.meter AND k.digest = w.group_key
		WHERE w.tenant = $1 AND w.meter = $2 AND w.granularity = $3 AND w.window_start >= $4 AND w.window_start < $5
		ORDER BY coalesce(k.group_key, w.group_key) COLLATE "C", w.window_start`, tenant, meter, string(g), from, to)
	if err != nil {
		return fmt.Errorf("reading the %s windows of meter %s of tenant %s: %w", g, meter, tenant, err)
	}
	defer rows.Close()
	w := ExportWindow{Tenant: tenant, Meter: meter, Window: g}
	for rows.Next() {
		if err := rows.Scan(&w.Group, &w.Start, &w.Value, &w.Events); err != nil {
			return fmt.Errorf("reading the %s windows of meter %s of tenant %s: %w", g, meter, tenant, err)
		}
		w.Start = w.Start.UTC()
		w.End = g.EndIn(sched, w.Start)
		if err := fn(w); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("reading the %s windows of meter %s of tenant %s: %w", g, meter, tenant, err)
	}
	return nil
}
