package usagedata

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/big"
	"slices"
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
	if err := q.QueryRow(ctx, `SELECT (SELECT value FROM usage_windows
			WHERE tenant = $1 AND meter = $2 AND group_key IN ($3, $4) AND granularity = $5 AND window_start = $6
			ORDER BY group_key = $3 DESC LIMIT 1)`,
		tenant, meterName, groupKey, StoredKey(groupKey), string(g), start).Scan(&used); err != nil {
		return nil, fmt.Errorf("reading usage of %s/%s group %.64q: %w", tenant, meterName, groupKey, err)
	}
	return NumericInt(used), nil
}

// matchingGroups selects the windows ($1 tenant, $2 meter, $3 granularity,
// $4 start) whose group carries, at each position $5[i] of the meter's
// group_by (0-based), the value $6[i]: a group key is a JSON array (or its
// digest, resolved through meter_group_keys), a missing property null.
const matchingGroups = `WITH g AS (
		SELECT w.group_key AS stored, w.value, w.latest_time, w.latest_id
		FROM usage_windows w
		LEFT JOIN meter_group_keys k ON k.meter = w.meter AND k.digest = w.group_key
		WHERE w.tenant = $1 AND w.meter = $2 AND w.granularity = $3 AND w.window_start = $4
			AND NOT EXISTS (SELECT 1 FROM unnest($5::int[], $6::text[]) AS f(i, v)
				WHERE (CASE WHEN left(coalesce(k.group_key, w.group_key), 1) = '['
					THEN coalesce(k.group_key, w.group_key)::jsonb END ->> f.i) IS DISTINCT FROM f.v))`

// meterValueSQL folds the matching groups' windows as the aggregation
// folds events: the sum of sums and of counts, the greatest max, the value
// of the latest (time, id), and the distinct values across the groups.
var meterValueSQL = map[meter.Aggregation]string{
	meter.Sum:   matchingGroups + ` SELECT sum(value) FROM g`,
	meter.Count: matchingGroups + ` SELECT sum(value) FROM g`,
	meter.Max:   matchingGroups + ` SELECT max(value) FROM g`,
	meter.Latest: matchingGroups + ` SELECT (SELECT value FROM g
		ORDER BY latest_time DESC NULLS LAST, latest_id DESC NULLS LAST, value DESC LIMIT 1)`,
	meter.UniqueCount: matchingGroups + ` SELECT count(DISTINCT u.value)::numeric FROM meter_uniques u JOIN g ON u.group_key = g.stored
		WHERE u.tenant = $1 AND u.meter = $2 AND u.granularity = $3 AND u.window_start = $4`,
}

// MeterValue returns the value of tenant's meter (aggregation agg, grouped
// by groupBy) in the period of granularity g starting at start, over the
// groups whose values match filter (every group when filter is empty): the
// meter's value as if it had counted only those groups' events. A filter
// naming a property groupBy lacks matches nothing (0).
func MeterValue(ctx context.Context, q storage.Executor, tenant, meterName string, agg meter.Aggregation, groupBy []string,
	filter map[string]string, g windows.Granularity, start time.Time) (*big.Int, error) {
	query, ok := meterValueSQL[agg]
	if !ok {
		return nil, fmt.Errorf("reading usage of %s/%s: unknown aggregation %q", tenant, meterName, agg)
	}
	idx, vals := make([]int32, 0, len(filter)), make([]string, 0, len(filter))
	for k, v := range filter {
		i := slices.Index(groupBy, k)
		if i < 0 {
			return new(big.Int), nil
		}
		idx, vals = append(idx, int32(i)), append(vals, v)
	}
	var used pgtype.Numeric
	if err := q.QueryRow(ctx, query, tenant, meterName, string(g), start, idx, vals).Scan(&used); err != nil {
		return nil, fmt.Errorf("reading usage of %s/%s: %w", tenant, meterName, err)
	}
	return NumericInt(used), nil
}

// RecordBreach records b unless a breach with its id, or of its (tenant,
// meter, group key, period, threshold), is recorded already, and reports
// whether it recorded it: each crossing is recorded once. An empty
// b.Meter is b.Metric, a nil b.Group {}; b.GroupKey is stored as
// StoredKey stores it.
func RecordBreach(ctx context.Context, q storage.Executor, b quota.Breach) (bool, error) {
	meterName, group := b.Meter, b.Group
	if meterName == "" {
		meterName = b.Metric
	}
	if len(group) == 0 {
		group = quota.WholeMeter
	}
	tag, err := q.Exec(ctx, `INSERT INTO quota_breaches (breach_id, tenant, metric, period_start, period_end, threshold, quota_limit, value, detected_at,
				meter, group_key, group_values)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8::numeric, $9, $10, $11, $12::jsonb) ON CONFLICT DO NOTHING`,
		b.BreachID, b.Tenant, b.Metric, b.PeriodStart, b.PeriodEnd, b.Threshold, b.Limit, b.Value.String(), b.DetectedAt,
		meterName, StoredKey(b.GroupKey), string(group))
	if err != nil {
		return false, fmt.Errorf("recording breach: %w", err)
	}
	return tag.RowsAffected() == 1, nil
}
