package usagedata

// A shadow is a scratch schema that rebuild replays the Kafka log into:
// empty copies of the tables one batch of the rollup writes, which a
// rollup whose connections put the schema first on their search_path
// fills instead of the live ones. The live usage_windows change only
// through SwapShadow, in the transaction that locked and checked the
// group's stored offsets (LockOffsets); the live ledger is never touched.

import (
	"context"
	"fmt"
	"time"

	"github.com/usagemeter/metering/internal/storage"
)

// shadowTables are the tables one batch of the rollup writes.
var shadowTables = []string{"ledger", "ledger_conflicts", "usage_windows", "consumer_offsets", "usage_corrections", "quota_breaches", "outbox", "usage_dlq"}

// shadowCheck refuses a schema name that is not a plain lower-case
// identifier: the name is written into the statements.
func shadowCheck(schema string) error {
	if schema == "" || len(schema) > 63 || schema[0] >= '0' && schema[0] <= '9' {
		return fmt.Errorf("shadow schema name %q: want a lower-case identifier", schema)
	}
	for _, r := range schema {
		if r != '_' && (r < 'a' || r > 'z') && (r < '0' || r > '9') {
			return fmt.Errorf("shadow schema name %q: want a lower-case identifier", schema)
		}
	}
	return nil
}

// CreateShadow creates schema with empty copies (LIKE ... INCLUDING ALL)
// of the tables one batch of the rollup writes. It fails if the schema
// exists.
func CreateShadow(ctx context.Context, q storage.Executor, schema string) error {
	if err := shadowCheck(schema); err != nil {
		return err
	}
	stmts := []string{"CREATE SCHEMA " + schema}
	for _, t := range shadowTables {
		stmts = append(stmts, fmt.Sprintf("CREATE TABLE %s.%s (LIKE public.%s INCLUDING ALL)", schema, t, t))
	}
	for _, s := range stmts {
		if _, err := q.Exec(ctx, s); err != nil {
			return fmt.Errorf("creating the shadow schema: %w", err)
		}
	}
	return nil
}

// DropShadow drops schema and everything in it; a schema that does not
// exist is not an error.
func DropShadow(ctx context.Context, q storage.Executor, schema string) error {
	if err := shadowCheck(schema); err != nil {
		return err
	}
	if _, err := q.Exec(ctx, "DROP SCHEMA IF EXISTS "+schema+" CASCADE"); err != nil {
		return fmt.Errorf("dropping the shadow schema %s: %w", schema, err)
	}
	return nil
}

// LockOffsets returns the stored next offset of every partition of a
// group's topic, as Offsets does, and locks those rows until q's
// transaction ends: the group's batches cannot commit meanwhile.
func LockOffsets(ctx context.Context, q storage.Executor, group, topic string) (map[int]int64, error) {
	return offsetsRead(ctx, q, "locking stored offsets", `SELECT partition, next_offset FROM consumer_offsets
		WHERE consumer_group = $1 AND topic = $2 FOR UPDATE`, group, topic)
}

// ShadowChange is one window whose value differs between the live
// windows and the rebuilt ones. Metric is the window's meter (a metric's
// name for its implicit meter) and Group its group key ("" for a meter
// without groups).
type ShadowChange struct {
	Tenant, Metric, Group, Granularity string
	Start                              time.Time
	Before, After                      string // values; "" when the window is absent
	EventsBefore, EventsAfter          int64
}

// shadowRebuilt selects the rebuilt windows: the shadow's, plus the held
// conflicts operators counted (live), in every granularity. Counted
// conflicts follow the live rule: per (tenant, id, metric, event time)
// the maximum of the copies counted there, over the shadow's counted
// event when it has that metric and time (adding the difference, no
// event), else on their own (adding the maximum and one event); never
// their sum. Counted conflicts count in their metric's implicit meter
// (the empty group key), as the rollup counts them. The replay raises
// the shadow's counted event by resends of its metric and time, so a
// counted conflict recorded before resolutions existed is not added twice.
func shadowRebuilt(schema string) string {
	return fmt.Sprintf(`(SELECT tenant, meter, group_key, granularity, window_start, sum(value) AS value, sum(events)::bigint AS events, max(updated_at) AS updated_at
		FROM (SELECT tenant, meter, group_key, granularity, window_start, value, events, updated_at FROM %[1]s.usage_windows
			UNION ALL
			SELECT c.tenant, c.metric, '', g.g, date_trunc(g.g, c.event_time AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', c.value, c.events, now()
			FROM (SELECT k.tenant, k.metric, k.event_time, greatest(max(k.value) - coalesce(l.value, 0), 0) AS value,
					CASE WHEN l.value IS NULL THEN 1 ELSE 0 END AS events
				FROM public.ledger_conflicts k
				LEFT JOIN %[1]s.ledger l ON l.tenant = k.tenant AND l.event_id = k.event_id AND l.metric = k.metric AND l.event_time = k.event_time
				WHERE k.resolution = 'counted'
				GROUP BY k.tenant, k.event_id, k.metric, k.event_time, l.value) c
			CROSS JOIN (VALUES ('minute'), ('hour'), ('day'), ('month')) AS g(g)
			WHERE c.value > 0 OR c.events > 0) u
		GROUP BY tenant, meter, group_key, granularity, window_start)`, schema)
}

// CompareShadow returns the windows starting at or after from that differ
// between the live windows and the rebuilt ones (the shadow's, plus the
// held conflicts operators counted), in (tenant, meter, group,
// granularity, start) order, and how many windows it compared.
func CompareShadow(ctx context.Context, q storage.Executor, schema string, from time.Time) ([]ShadowChange, int, error) {
	if err := shadowCheck(schema); err != nil {
		return nil, 0, err
	}
	rows, err := q.Query(ctx, fmt.Sprintf(`SELECT coalesce(l.tenant, s.tenant), coalesce(l.meter, s.meter), coalesce(l.group_key, s.group_key), coalesce(l.granularity, s.granularity),
			coalesce(l.window_start, s.window_start), coalesce(l.value::text, ''), coalesce(s.value::text, ''),
			coalesce(l.events, 0), coalesce(s.events, 0), (l.value IS DISTINCT FROM s.value OR l.events IS DISTINCT FROM s.events)
		FROM (SELECT * FROM public.usage_windows WHERE window_start >= $1) l
		FULL JOIN (SELECT * FROM %s r WHERE window_start >= $1) s
			USING (tenant, meter, group_key, granularity, window_start)
		ORDER BY 1, 2, 3, 4, 5`, shadowRebuilt(schema)), from)
	if err != nil {
		return nil, 0, fmt.Errorf("comparing windows: %w", err)
	}
	defer rows.Close()
	var changes []ShadowChange
	total := 0
	for rows.Next() {
		var c ShadowChange
		var differs bool
		if err := rows.Scan(&c.Tenant, &c.Metric, &c.Group, &c.Granularity, &c.Start, &c.Before, &c.After, &c.EventsBefore, &c.EventsAfter, &differs); err != nil {
			return nil, 0, fmt.Errorf("comparing windows: %w", err)
		}
		total++
		if differs {
			changes = append(changes, c)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("comparing windows: %w", err)
	}
	return changes, total, nil
}

// SwapShadow replaces the live windows starting at or after from with the
// rebuilt ones. It first locks ledger_conflicts (EXCLUSIVE) so that no
// conflict is counted between the comparison's read of counted conflicts
// and the swap. Run it in the transaction that holds LockOffsets and found
// the offsets the shadow consumed up to.
func SwapShadow(ctx context.Context, q storage.Executor, schema string, from time.Time) error {
	if err := shadowCheck(schema); err != nil {
		return err
	}
	if _, err := q.Exec(ctx, `LOCK TABLE public.ledger_conflicts IN EXCLUSIVE MODE`); err != nil {
		return fmt.Errorf("locking conflicts for the swap: %w", err)
	}
	if _, err := q.Exec(ctx, `DELETE FROM public.usage_windows WHERE window_start >= $1`, from); err != nil {
		return fmt.Errorf("swapping windows: %w", err)
	}
	if _, err := q.Exec(ctx, fmt.Sprintf(`INSERT INTO public.usage_windows (tenant, meter, group_key, granularity, window_start, value, events, updated_at)
			SELECT tenant, meter, group_key, granularity, window_start, value, events, updated_at FROM %s r WHERE window_start >= $1`, shadowRebuilt(schema)), from); err != nil {
		return fmt.Errorf("swapping windows: %w", err)
	}
	return nil
}
