package usagedata

// A shadow is a scratch schema that rebuild replays the Kafka log into:
// empty copies of the tables one batch of the rollup writes, which a
// rollup whose connections put the schema first on their search_path
// fills instead of the live ones. The live usage_windows and meter_uniques
// change only through SwapShadow (or SwapShadowWith), in the transaction
// that locked and checked the group's stored offsets (LockOffsets);
// meter_group_keys only gains the shadow's keys; the live ledger is never
// touched.

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/usagemeter/metering/internal/storage"
)

// shadowTables are the tables one batch of the rollup writes.
var shadowTables = []string{"ledger", "ledger_names", "ledger_overflow", "ledger_batches", "ledger_recorded", "ledger_conflicts", "usage_windows", "meter_uniques", "meter_group_keys", "consumer_offsets", "usage_corrections", "quota_breaches", "outbox", "usage_dlq", "usage_adjustments"}

// shadowEmptyTables are tables a rollup in the shadow reads and never
// writes, copied empty: with no packed day of its own, a read of grouped
// hour windows in the shadow (a quota's credit hours) reads the shadow's
// windows, never the live packs.
var shadowEmptyTables = []string{"usage_packed_days", "usage_hour_packs", "usage_pack_stale"}

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
// of the tables one batch of the rollup writes and of the hour packs'
// tables (shadowEmptyTables), and the ledger's trigger that writes each
// transaction's batch row (LIKE copies no trigger; the trigger's function
// names ledger_batches unqualified, so the rollup's search_path sends the
// row to the shadow's). It fails if the schema exists.
func CreateShadow(ctx context.Context, q storage.Executor, schema string) error {
	if err := shadowCheck(schema); err != nil {
		return err
	}
	stmts := []string{"CREATE SCHEMA " + schema}
	for _, t := range append(slices.Clone(shadowTables), shadowEmptyTables...) {
		stmts = append(stmts, fmt.Sprintf("CREATE TABLE %s.%s (LIKE public.%s INCLUDING ALL)", schema, t, t))
	}
	stmts = append(stmts, fmt.Sprintf("CREATE TRIGGER ledger_batch_row AFTER INSERT ON %s.ledger FOR EACH STATEMENT EXECUTE FUNCTION public.ledger_batch_row()", schema))
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
// name for its implicit meter) and Group its group key as stored ("" for
// a meter without groups; a digest for a long key, which GroupKeys gives
// back).
type ShadowChange struct {
	Tenant, Metric, Group, Granularity string
	Start                              time.Time
	Before, After                      string // values; "" when the window is absent
	EventsBefore, EventsAfter          int64
}

// ShadowOptions narrow a comparison or a swap.
type ShadowOptions struct {
	// Meters, when not empty, limits it to the windows (and unique values
	// and long group keys) of these meters: a rebuild of one meter. A
	// metric's implicit meter is named after the metric.
	Meters []string
}

// filter returns the SQL condition on a meter column named col that opts
// asks for, with its argument numbered n, and the argument: "" and nil for
// every meter.
func (o ShadowOptions) filter(col string, n int) (string, []any) {
	if len(o.Meters) == 0 {
		return "", nil
	}
	return fmt.Sprintf(" AND %s = ANY($%d::text[])", col, n), []any{o.Meters}
}

// shadowRebuilt selects the rebuilt windows: the shadow's, plus the held
// conflicts operators counted (live), in every granularity, carrying the
// shadow's latest_time and latest_id. Counted conflicts follow the live
// rule: per (tenant, id, metric, event time) the maximum of the copies
// counted there, over the shadow's counted event when it has that metric
// and time (adding the difference, no event), else on their own (adding
// the maximum and one event); never their sum. Counted conflicts count in
// their metric's implicit meter (the empty group key), as the rollup
// counts them (a month window: the tenant's billing period), so they have
// no latest_time of their own. The replay
// raises the shadow's counted event by resends of its metric and time, so
// a counted conflict recorded before resolutions existed is not added
// twice.
func shadowRebuilt(schema string) string {
	return fmt.Sprintf(`(SELECT tenant, meter, group_key, granularity, window_start, sum(value) AS value, sum(events)::bigint AS events, max(updated_at) AS updated_at,
			max(latest_time) AS latest_time, max(latest_id) AS latest_id
		FROM (SELECT tenant, meter, group_key, granularity, window_start, value, events, updated_at, latest_time, latest_id FROM %[1]s.usage_windows
			UNION ALL
			SELECT c.tenant, c.metric, '', g.g, CASE WHEN g.g = 'month' THEN (public.billing_period(c.tenant, c.event_time)).period_start
					ELSE date_trunc(g.g, c.event_time AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' END, c.value, c.events, now(), NULL, NULL
			FROM (SELECT k.tenant, k.metric, k.event_time, greatest(max(k.value) - coalesce(l.value, 0), 0) AS value,
					CASE WHEN l.value IS NULL THEN 1 ELSE 0 END AS events
				FROM public.ledger_conflicts k
				LEFT JOIN LATERAL (SELECT sl.value FROM %[1]s.ledger sl JOIN %[1]s.ledger_names sn ON sn.ref = sl.ref
						WHERE sl.id = public.ledger_key(k.tenant, k.event_id) AND sl.id_text = public.ledger_id_text(k.event_id)
							AND sn.tenant = k.tenant AND sn.metric = k.metric AND sl.event_time = k.event_time
					UNION ALL
					SELECT so.value FROM %[1]s.ledger_overflow so
						WHERE so.tenant = k.tenant AND so.event_id = k.event_id AND so.metric = k.metric AND so.event_time = k.event_time) l ON true
				WHERE k.resolution = 'counted'
				GROUP BY k.tenant, k.event_id, k.metric, k.event_time, l.value) c
			CROSS JOIN (VALUES ('minute'), ('hour'), ('day'), ('month')) AS g(g)
			WHERE c.value > 0 OR c.events > 0) u
		GROUP BY tenant, meter, group_key, granularity, window_start)`, schema)
}

// CompareShadow returns the windows starting at or after from that differ
// (in value or events) between the live windows and the rebuilt ones (the
// shadow's, plus the held conflicts operators counted), in (tenant, meter,
// group, granularity, start) order, and how many windows it compared.
func CompareShadow(ctx context.Context, q storage.Executor, schema string, from time.Time) ([]ShadowChange, int, error) {
	return CompareShadowWith(ctx, q, schema, from, ShadowOptions{})
}

// CompareShadowWith is CompareShadow over the windows opts names.
func CompareShadowWith(ctx context.Context, q storage.Executor, schema string, from time.Time, opts ShadowOptions) ([]ShadowChange, int, error) {
	if err := shadowCheck(schema); err != nil {
		return nil, 0, err
	}
	only, arg := opts.filter("meter", 2)
	rows, err := q.Query(ctx, fmt.Sprintf(`SELECT coalesce(l.tenant, s.tenant), coalesce(l.meter, s.meter), coalesce(l.group_key, s.group_key), coalesce(l.granularity, s.granularity),
			coalesce(l.window_start, s.window_start), coalesce(l.value::text, ''), coalesce(s.value::text, ''),
			coalesce(l.events, 0), coalesce(s.events, 0), (l.value IS DISTINCT FROM s.value OR l.events IS DISTINCT FROM s.events)
		FROM (SELECT * FROM public.usage_windows WHERE window_start >= $1%[2]s) l
		FULL JOIN (SELECT * FROM %[1]s r WHERE window_start >= $1%[2]s) s
			USING (tenant, meter, group_key, granularity, window_start)
		ORDER BY 1, 2, 3, 4, 5`, shadowRebuilt(schema), only), append([]any{from}, arg...)...)
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

// SwapShadow replaces the live windows starting at or after from, and the
// unique values of those windows, with the rebuilt ones (latest_time and
// latest_id included), and adds the shadow's long group keys to the live
// ones, so that counting continues on the live tables exactly where the
// replay stopped. It first locks ledger_conflicts (EXCLUSIVE) so that no
// conflict is counted between the comparison's read of counted conflicts
// and the swap. Run it in the transaction that holds LockOffsets and found
// the offsets the shadow consumed up to.
func SwapShadow(ctx context.Context, q storage.Executor, schema string, from time.Time) error {
	return SwapShadowWith(ctx, q, schema, from, ShadowOptions{})
}

// SwapShadowWith is SwapShadow over the windows, unique values and group
// keys of the meters opts names; other meters' live rows are kept.
func SwapShadowWith(ctx context.Context, q storage.Executor, schema string, from time.Time, opts ShadowOptions) error {
	if err := shadowCheck(schema); err != nil {
		return err
	}
	if _, err := q.Exec(ctx, `LOCK TABLE public.ledger_conflicts IN EXCLUSIVE MODE`); err != nil {
		return fmt.Errorf("locking conflicts for the swap: %w", err)
	}
	only, arg := opts.filter("meter", 2)
	args := append([]any{from}, arg...)
	keysOnly, keysArg := opts.filter("meter", 1)
	steps := []struct {
		what, sql string
		args      []any
	}{
		{"deleting live windows", `DELETE FROM public.usage_windows WHERE window_start >= $1` + only, args},
		{"deleting live unique values", `DELETE FROM public.meter_uniques WHERE window_start >= $1` + only, args},
		{"inserting rebuilt windows", fmt.Sprintf(`INSERT INTO public.usage_windows (tenant, meter, group_key, granularity, window_start, value, events, updated_at, latest_time, latest_id)
			SELECT tenant, meter, group_key, granularity, window_start, value, events, updated_at, latest_time, latest_id FROM %s r WHERE window_start >= $1%s`, shadowRebuilt(schema), only), args},
		{"inserting rebuilt unique values", fmt.Sprintf(`INSERT INTO public.meter_uniques (tenant, meter, group_key, granularity, window_start, value)
			SELECT tenant, meter, group_key, granularity, window_start, value FROM %s.meter_uniques WHERE window_start >= $1%s`, schema, only), args},
		{"inserting rebuilt group keys", fmt.Sprintf(`INSERT INTO public.meter_group_keys (meter, digest, group_key)
			SELECT meter, digest, group_key FROM %s.meter_group_keys WHERE true%s ORDER BY meter, digest
			ON CONFLICT DO NOTHING`, schema, keysOnly), keysArg},
	}
	for _, st := range steps {
		if _, err := q.Exec(ctx, st.sql, st.args...); err != nil {
			return fmt.Errorf("swapping the shadow: %s: %w", st.what, err)
		}
	}
	return nil
}
