package usagedata

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/big"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/usagemeter/metering/internal/meter"
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

// maxKeyLen is the longest key stored as itself; a longer one is stored as
// its digest (migration 0014).
const maxKeyLen = 256

// StoredKey returns how a group key is stored in an indexed column: the
// key itself, or, longer than 256 bytes, "sha256:" and the hex SHA-256 of
// the key (migration 0014).
func StoredKey(key string) string {
	if len(key) <= maxKeyLen {
		return key
	}
	sum := sha256.Sum256([]byte(key))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// GroupValue returns the value of one group of tenant's meter in the
// window of granularity g starting at start (0 when the window does not
// exist). groupKey is the group's key (meter.Group.Key), found whether
// the window stores it as itself or as its digest.
func GroupValue(ctx context.Context, q storage.Executor, tenant, meterName, groupKey string, g windows.Granularity, start time.Time) (*big.Int, error) {
	var used pgtype.Numeric
	if err := q.QueryRow(ctx, `SELECT coalesce(
			(SELECT value FROM usage_windows WHERE tenant = $1 AND meter = $2 AND group_key = $3 AND granularity = $5 AND window_start = $6),
			(SELECT value FROM usage_windows WHERE tenant = $1 AND meter = $2 AND group_key = $4 AND granularity = $5 AND window_start = $6))`,
		tenant, meterName, groupKey, StoredKey(groupKey), string(g), start).Scan(&used); err != nil {
		return nil, fmt.Errorf("reading usage of %s/%s group %.64q: %w", tenant, meterName, groupKey, err)
	}
	return NumericInt(used), nil
}

// meterPeriodIndexed selects a defined meter's day and month windows. It
// was the predicate of the partial index usage_windows_meter_period
// (migration 0015); since migration 0033 the primary key's prefix
// (tenant, meter, granularity, window_start) serves these reads and the
// predicate only filters.
const meterPeriodIndexed = `w.group_key <> '' AND w.granularity IN ('day', 'month')`

// matchingGroups selects the windows ($1 tenant, $2 meter, $3 granularity,
// $4 start) whose group carries, at each position idx[i] of the meter's
// group_by (0-based), the value $(5+i): a group key is a JSON array (or its
// digest, resolved through meter_group_keys), a missing property null,
// which equals no value. The positions are written into the statement,
// so that each row's key is parsed once and compared without a subquery.
func matchingGroups(idx []int) string {
	var b strings.Builder
	b.WriteString(`WITH g AS (
		SELECT w.group_key AS stored, w.value, w.latest_time, w.latest_id
		FROM usage_windows w`)
	if len(idx) > 0 {
		b.WriteString(`
		LEFT JOIN meter_group_keys k ON k.meter = w.meter AND k.digest = w.group_key
		CROSS JOIN LATERAL (SELECT CASE WHEN left(coalesce(k.group_key, w.group_key), 1) = '['
			THEN coalesce(k.group_key, w.group_key)::jsonb END AS j) AS p`)
	}
	b.WriteString(`
		WHERE w.tenant = $1 AND w.meter = $2 AND w.granularity = $3 AND w.window_start = $4 AND ` + meterPeriodIndexed)
	for i, at := range idx {
		fmt.Fprintf(&b, ` AND (p.j ->> %d) = $%d`, at, 5+i)
	}
	b.WriteString(`)`)
	return b.String()
}

// meterValueSQL folds the matching groups' windows as the aggregation
// folds events: the sum of sums and of counts, the greatest max, the value
// of the latest (time, id), and the distinct values across the groups.
var meterValueSQL = map[meter.Aggregation]string{
	meter.Sum:   ` SELECT sum(value) FROM g`,
	meter.Count: ` SELECT sum(value) FROM g`,
	meter.Max:   ` SELECT max(value) FROM g`,
	meter.Latest: ` SELECT (SELECT value FROM g
		ORDER BY latest_time DESC NULLS LAST, latest_id DESC NULLS LAST, value DESC LIMIT 1)`,
	meter.UniqueCount: ` SELECT count(DISTINCT u.value)::numeric FROM meter_uniques u JOIN g ON u.group_key = g.stored
		WHERE u.tenant = $1 AND u.meter = $2 AND u.granularity = $3 AND u.window_start = $4`,
}

// MeterValue returns the value of tenant's meter (aggregation agg, grouped
// by groupBy) in the period of granularity g (day or month: a quota's)
// starting at start, over the groups whose values match filter (every
// group when filter is empty): the meter's value as if it had counted
// only those groups' events. A filter naming a property groupBy lacks
// matches nothing (0).
func MeterValue(ctx context.Context, q storage.Executor, tenant, meterName string, agg meter.Aggregation, groupBy []string,
	filter map[string]string, g windows.Granularity, start time.Time) (*big.Int, error) {
	query, ok := meterValueSQL[agg]
	if !ok {
		return nil, fmt.Errorf("reading usage of %s/%s: unknown aggregation %q", tenant, meterName, agg)
	}
	if g != windows.Day && g != windows.Month {
		return nil, fmt.Errorf("reading usage of %s/%s: a quota's period is a day or a month, not %q", tenant, meterName, g)
	}
	if len(groupBy) == 0 {
		// One group, of key "": its window is the meter's value.
		if len(filter) > 0 {
			return new(big.Int), nil
		}
		return GroupValue(ctx, q, tenant, meterName, "", g, start)
	}
	var idx []int
	args := []any{tenant, meterName, string(g), start}
	for i, k := range groupBy {
		v, ok := filter[k]
		if ok {
			idx, args = append(idx, i), append(args, v)
		}
	}
	if len(idx) != len(filter) {
		return new(big.Int), nil // a property groupBy lacks
	}
	var used pgtype.Numeric
	if err := q.QueryRow(ctx, matchingGroups(idx)+query, args...).Scan(&used); err != nil {
		return nil, fmt.Errorf("reading usage of %s/%s: %w", tenant, meterName, err)
	}
	return NumericInt(used), nil
}

// GroupWindow names one group's window: tenant, meter, group key (as
// meter.Group.Key makes it), granularity and start.
type GroupWindow struct {
	Tenant, Meter, GroupKey string
	Granularity             windows.Granularity
	Start                   time.Time
}

// GroupValues returns the value of each window of ws (0 for a window that
// does not exist), in the order of ws, in one statement: GroupValue for
// many groups.
func GroupValues(ctx context.Context, q storage.Executor, ws []GroupWindow) ([]*big.Int, error) {
	out := make([]*big.Int, len(ws))
	if len(ws) == 0 {
		return out, nil
	}
	n := len(ws)
	ts, ms, ks, ds, gs, ss := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]time.Time, n)
	for i, w := range ws {
		ts[i], ms[i], ks[i], ds[i], gs[i], ss[i] = w.Tenant, w.Meter, w.GroupKey, StoredKey(w.GroupKey), string(w.Granularity), w.Start
		out[i] = new(big.Int)
	}
	// The window under the key itself, else under its digest: two lookups
	// by the primary key (an OR of the two would not use it).
	rows, err := q.Query(ctx, `SELECT b.i, coalesce(
			(SELECT w.value FROM usage_windows w WHERE w.tenant = b.t AND w.meter = b.m AND w.group_key = b.k AND w.granularity = b.g AND w.window_start = b.s),
			(SELECT w.value FROM usage_windows w WHERE w.tenant = b.t AND w.meter = b.m AND w.group_key = b.d AND w.granularity = b.g AND w.window_start = b.s))
		FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[]) WITH ORDINALITY AS b(t, m, k, d, g, s, i)`,
		ts, ms, ks, ds, gs, ss)
	if err != nil {
		return nil, fmt.Errorf("reading usage of %d groups: %w", n, err)
	}
	for rows.Next() {
		var i int64
		var used pgtype.Numeric
		if err := rows.Scan(&i, &used); err != nil {
			rows.Close()
			return nil, fmt.Errorf("reading usage of %d groups: %w", n, err)
		}
		out[i-1] = NumericInt(used)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading usage of %d groups: %w", n, err)
	}
	return out, nil
}

// RecordBreach records b unless a breach with its id, or of its (tenant,
// meter, group key, period, threshold), is recorded already, and reports
// whether it recorded it: each crossing is recorded once.
func RecordBreach(ctx context.Context, q storage.Executor, b quota.Breach) (bool, error) {
	recorded, err := RecordBreaches(ctx, q, []quota.Breach{b})
	if err != nil {
		return false, err
	}
	return recorded[0], nil
}

// RecordBreaches records, in one statement and in the order given, each
// breach of bs unless a breach with its id, or of its (tenant, meter,
// group key, period, threshold), is recorded already (or comes earlier in
// bs), and reports for each whether it recorded it. An empty Meter is the
// metric, a nil Group {}; GroupKey is stored as StoredKey stores it; a
// warning's Percent is part of what it is a breach of (0 is 80).
func RecordBreaches(ctx context.Context, q storage.Executor, bs []quota.Breach) ([]bool, error) {
	recorded := make([]bool, len(bs))
	if len(bs) == 0 {
		return recorded, nil
	}
	n := len(bs)
	ids, tenants, metrics, thresholds, values, meters, keys, groups := make([]string, n), make([]string, n), make([]string, n), make([]string, n),
		make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	starts, ends, detected := make([]time.Time, n), make([]time.Time, n), make([]time.Time, n)
	limits := make([]int64, n)
	percents := make([]int32, n)
	at := make(map[string]int, n)
	for i, b := range bs {
		meterName, group := b.Meter, b.Group
		if meterName == "" {
			meterName = b.Metric
		}
		if len(group) == 0 {
			group = quota.WholeMeter
		}
		ids[i], tenants[i], metrics[i], thresholds[i], values[i] = b.BreachID, b.Tenant, b.Metric, b.Threshold, b.Value.String()
		meters[i], keys[i], groups[i] = meterName, StoredKey(b.GroupKey), string(group)
		starts[i], ends[i], detected[i], limits[i], percents[i] = b.PeriodStart, b.PeriodEnd, b.DetectedAt, b.Limit, int32(b.Percent)
		if b.Threshold == string(quota.Warning) && b.Percent == 0 {
			percents[i] = quota.WarningPercent // a warning that names no threshold is the 80 % one
		}
		if _, dup := at[b.BreachID]; !dup {
			at[b.BreachID] = i
		}
	}
	rows, err := q.Query(ctx, `INSERT INTO quota_breaches (breach_id, tenant, metric, period_start, period_end, threshold, quota_limit, value, detected_at,
				meter, group_key, group_values, percent)
			SELECT id, t, m, ps, pe, th, l, v::numeric, d, mt, k, gv::jsonb, pc
			FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::text[], $7::bigint[], $8::text[], $9::timestamptz[],
				$10::text[], $11::text[], $12::text[], $13::int[]) WITH ORDINALITY AS b(id, t, m, ps, pe, th, l, v, d, mt, k, gv, pc, i)
			ORDER BY i
			ON CONFLICT DO NOTHING RETURNING breach_id`,
		ids, tenants, metrics, starts, ends, thresholds, limits, values, detected, meters, keys, groups, percents)
	if err != nil {
		return nil, fmt.Errorf("recording %d breaches: %w", n, err)
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, fmt.Errorf("recording %d breaches: %w", n, err)
		}
		recorded[at[id]] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("recording %d breaches: %w", n, err)
	}
	return recorded, nil
}

// ExceededSince returns when tenant's quota on meterName (group key
// groupKey: "" for a whole meter, a filter's JSON object, a per_group
// quota's group key) was first exceeded in the period starting at
// periodStart: its exceeded breach's detected_at, zero when it was not.
func ExceededSince(ctx context.Context, q storage.Executor, tenant, meterName, groupKey string, periodStart time.Time) (time.Time, error) {
	var at pgtype.Timestamptz
	err := q.QueryRow(ctx, `SELECT min(detected_at) FROM quota_breaches
		WHERE tenant = $1 AND meter = $2 AND group_key = $3 AND period_start = $4 AND threshold = 'exceeded'`,
		tenant, meterName, StoredKey(groupKey), periodStart).Scan(&at)
	if err != nil {
		return time.Time{}, fmt.Errorf("reading when %s's quota on %s was exceeded: %w", tenant, meterName, err)
	}
	if !at.Valid {
		return time.Time{}, nil
	}
	return at.Time, nil
}
