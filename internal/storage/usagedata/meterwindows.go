package usagedata

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/storage"
)

// MeterAdds is what one batch adds to the windows of defined meters, as
// parallel columns (row i is element i of each). Aggregations[i] is the
// aggregation of meter Meters[i]; a meter has one aggregation, so its
// windows are only ever written by one kind of row. Per row:
//
//   - Values: the event value (sum, max, latest), non-negative; ignored for
//     count (which adds Events) and unique_count.
//   - Events: how many events the row stands for, non-negative.
//   - Times, IDs: for latest, the (time, id) of the row's event.
//   - Uniques, HasUniques: for unique_count, the property's value, when the
//     event had it; a row without it adds to events only.
//
// GroupKeys are the keys meter.Group.Key gives ("" or a JSON array), of
// any length: a key longer than 256 bytes is stored as its digest
// (StoredGroupKey). A key starting with "sha256:" is refused, as it could
// be mistaken for a digest.
//
// Several rows may name the same window: they combine as the events would.
type MeterAdds struct {
	Tenants, Meters, GroupKeys, Granularities []string
	Starts                                    []time.Time
	Aggregations                              []meter.Aggregation
	Values, Events                            []int64
	Times                                     []time.Time
	IDs                                       []string
	Uniques                                   []string
	HasUniques                                []bool
}

// Len is the number of rows.
func (a *MeterAdds) Len() int { return len(a.Tenants) }

// Grow makes room for n more rows, so that appending them allocates
// nothing.
func (a *MeterAdds) Grow(n int) {
	a.Tenants = slices.Grow(a.Tenants, n)
	a.Meters = slices.Grow(a.Meters, n)
	a.GroupKeys = slices.Grow(a.GroupKeys, n)
	a.Granularities = slices.Grow(a.Granularities, n)
	a.Starts = slices.Grow(a.Starts, n)
	a.Aggregations = slices.Grow(a.Aggregations, n)
	a.Values = slices.Grow(a.Values, n)
	a.Events = slices.Grow(a.Events, n)
	a.Times = slices.Grow(a.Times, n)
	a.IDs = slices.Grow(a.IDs, n)
	a.Uniques = slices.Grow(a.Uniques, n)
	a.HasUniques = slices.Grow(a.HasUniques, n)
}

// Append adds one row.
func (a *MeterAdds) Append(tenant, meterName, groupKey, granularity string, start time.Time, c meter.Contribution, events int64) {
	a.Tenants = append(a.Tenants, tenant)
	a.Meters = append(a.Meters, meterName)
	a.GroupKeys = append(a.GroupKeys, groupKey)
	a.Granularities = append(a.Granularities, granularity)
	a.Starts = append(a.Starts, start)
	a.Aggregations = append(a.Aggregations, c.Aggregation)
	a.Values = append(a.Values, c.Value)
	a.Events = append(a.Events, events)
	a.Times = append(a.Times, c.Time)
	a.IDs = append(a.IDs, c.ID)
	a.Uniques = append(a.Uniques, c.Distinct)
	a.HasUniques = append(a.HasUniques, c.HasDistinct)
}

var errMeterAdds = errors.New("invalid meter window rows")

// check refuses ragged columns, unknown aggregations and negative amounts.
func (a *MeterAdds) check() error {
	n := a.Len()
	for _, l := range []int{len(a.Meters), len(a.GroupKeys), len(a.Granularities), len(a.Starts), len(a.Aggregations),
		len(a.Values), len(a.Events), len(a.Times), len(a.IDs), len(a.Uniques), len(a.HasUniques)} {
		if l != n {
			return fmt.Errorf("%w: columns of %d and %d rows", errMeterAdds, n, l)
		}
	}
	for i := range n {
		if !a.Aggregations[i].Valid() {
			return fmt.Errorf("%w: aggregation %q", errMeterAdds, a.Aggregations[i])
		}
		if a.Values[i] < 0 || a.Events[i] < 0 {
			return fmt.Errorf("%w: %w: value %d, %d events", errMeterAdds, errNegativeWindow, a.Values[i], a.Events[i])
		}
		if strings.HasPrefix(a.GroupKeys[i], digestPrefix) {
			return fmt.Errorf("%w: group key %.80q has the digest prefix", errMeterAdds, a.GroupKeys[i])
		}
	}
	return nil
}

// digestPrefix starts every stored digest (migration 0014).
const digestPrefix = "sha256:"

// maxStoredLen is the longest group key or unique value stored as itself.
const maxStoredLen = 256

// digest is s's stored digest: "sha256:" and the 64 lower-case hex digits
// of its SHA-256.
func digest(s string) string {
	sum := sha256.Sum256([]byte(s))
	return digestPrefix + hex.EncodeToString(sum[:])
}

// StoredGroupKey is the group key usage_windows and meter_uniques store
// for key: key itself, or its digest ("sha256:" and 64 hex digits) when
// key is longer than 256 bytes, too long for an index entry. GroupKeys
// gives a digest's key back.
func StoredGroupKey(key string) string {
	if len(key) > maxStoredLen {
		return digest(key)
	}
	return key
}

// storedUnique is the value meter_uniques stores for a unique value: the
// value itself, or its digest when it is longer than 256 bytes or starts
// with "sha256:" (so that a value that looks like a digest and the value
// that digest stands for are two values).
func storedUnique(v string) string {
	if len(v) > maxStoredLen || strings.HasPrefix(v, digestPrefix) {
		return digest(v)
	}
	return v
}

// ErrUnknownDigest is returned by GroupKeys for a stored digest that
// meter_group_keys does not hold.
var ErrUnknownDigest = errors.New("group key digest not recorded")

// GroupKeys returns the group key of each digest among stored (group keys
// as usage_windows holds them) for meterName, digest → key. Stored keys
// that are not digests are not in the map: they are their own keys.
func GroupKeys(ctx context.Context, q storage.Executor, meterName string, stored []string) (map[string]string, error) {
	var digests []string
	seen := map[string]bool{}
	for _, k := range stored {
		if strings.HasPrefix(k, digestPrefix) && !seen[k] {
			seen[k] = true
			digests = append(digests, k)
		}
	}
	out := make(map[string]string, len(digests))
	if len(digests) == 0 {
		return out, nil
	}
	rows, err := q.Query(ctx, `SELECT digest, group_key FROM meter_group_keys WHERE meter = $1 AND digest = ANY($2)`, meterName, digests)
	if err != nil {
		return nil, fmt.Errorf("reading group keys of meter %s: %w", meterName, err)
	}
	defer rows.Close()
	for rows.Next() {
		var d, k string
		if err := rows.Scan(&d, &k); err != nil {
			return nil, fmt.Errorf("reading group keys of meter %s: %w", meterName, err)
		}
		out[d] = k
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading group keys of meter %s: %w", meterName, err)
	}
	for _, d := range digests {
		if _, ok := out[d]; !ok {
			return nil, fmt.Errorf("meter %s: %w: %s", meterName, ErrUnknownDigest, d)
		}
	}
	return out, nil
}

// kindColumns is the rows of one aggregation, as the arrays a statement
// takes.
type kindColumns struct {
	t, m, k, g []string
	s          []time.Time
	v, e       []int64
	at         []time.Time
	id, u      []string
	h          []bool
}

func newKindColumns(n int) *kindColumns {
	return &kindColumns{
		t: make([]string, 0, n), m: make([]string, 0, n), k: make([]string, 0, n), g: make([]string, 0, n),
		s: make([]time.Time, 0, n), v: make([]int64, 0, n), e: make([]int64, 0, n), at: make([]time.Time, 0, n),
		id: make([]string, 0, n), u: make([]string, 0, n), h: make([]bool, 0, n),
	}
}

// AddMeterWindows applies a batch of rows to the windows of defined meters,
// one statement per aggregation present (in the order of
// meter.Aggregations), creating windows as needed:
//
//   - sum: value += Values, events += Events;
//   - count: value += Events, events += Events;
//   - max: value = GREATEST(value, Values), events += Events;
//   - latest: value, latest_time and latest_id are replaced when the row's
//     (time, id) is greater than the stored one, times compared at Postgres
//     precision (the Go time is truncated to the microsecond first), and
//     the value alone is raised when the row's (time, id) equals the
//     stored one and its value is greater: an event's id is unique in its
//     tenant (the ledger makes it so), so an equal (time, id) is the same
//     event, raised by a resend; events += Events;
//   - unique_count: each value is inserted into meter_uniques, and the
//     window's value grows by the rows actually inserted; events += Events.
//
// A group key longer than 256 bytes is written as its digest
// (StoredGroupKey), and (meter, digest, key) is recorded in
// meter_group_keys in the same call; a unique value longer than 256 bytes
// or starting with "sha256:" is stored as its digest, so that any value
// counts, exactly, whatever its length.
//
// Each statement writes its rows in the order of the table's primary key
// (tenant, meter, granularity, window_start, group_key; meter_uniques'
// then value), so concurrent batches lock them in one order and cannot
// deadlock, and each statement's new index entries go in key order. Nothing is written when the rows
// are refused.
func AddMeterWindows(ctx context.Context, q storage.Executor, rows MeterAdds) error {
	if rows.Len() == 0 {
		return nil
	}
	if err := rows.check(); err != nil {
		return fmt.Errorf("adding to meter windows: %w", err)
	}
	// The columns of each aggregation, allocated once at their size.
	sizes := make(map[meter.Aggregation]int, len(meter.Aggregations))
	for _, agg := range rows.Aggregations {
		sizes[agg]++
	}
	kinds := make(map[meter.Aggregation]*kindColumns, len(sizes))
	for agg, n := range sizes {
		kinds[agg] = newKindColumns(n)
	}
	var long longKeys
	for i := range rows.Len() {
		c := kinds[rows.Aggregations[i]]
		key := rows.GroupKeys[i]
		if len(key) > maxStoredLen {
			key = long.add(rows.Meters[i], key)
		}
		c.t = append(c.t, rows.Tenants[i])
		c.m = append(c.m, rows.Meters[i])
		c.k = append(c.k, key)
		c.g = append(c.g, rows.Granularities[i])
		c.s = append(c.s, rows.Starts[i])
		c.v = append(c.v, rows.Values[i])
		c.e = append(c.e, rows.Events[i])
		c.at = append(c.at, rows.Times[i].Truncate(time.Microsecond))
		c.id = append(c.id, rows.IDs[i])
		c.u = append(c.u, storedUnique(rows.Uniques[i]))
		c.h = append(c.h, rows.HasUniques[i])
	}
	if len(long.m) > 0 {
		if _, err := q.Exec(ctx, groupKeysSQL, long.m, long.d, long.k); err != nil {
			return fmt.Errorf("recording long group keys: %w", err)
		}
	}
	for _, kind := range meter.Aggregations {
		c := kinds[kind]
		if c == nil {
			continue
		}
		var err error
		switch kind {
		case meter.Sum, meter.Count, meter.Max:
			_, err = q.Exec(ctx, addsSQL[kind], c.t, c.m, c.k, c.g, c.s, c.v, c.e)
		case meter.Latest:
			_, err = q.Exec(ctx, latestSQL, c.t, c.m, c.k, c.g, c.s, c.v, c.e, c.at, c.id)
		case meter.UniqueCount:
			_, err = q.Exec(ctx, uniqueSQL, c.t, c.m, c.k, c.g, c.s, c.e, c.u, c.h)
		}
		if err != nil {
			return fmt.Errorf("adding to %s meter windows: %w", kind, err)
		}
	}
	return nil
}

// longKeys are the distinct (meter, digest, key) of a batch's group keys
// longer than 256 bytes.
type longKeys struct {
	m, d, k []string
	seen    map[[2]string]string
}

// add records meterName's long key and returns its digest.
func (l *longKeys) add(meterName, key string) string {
	if l.seen == nil {
		l.seen = map[[2]string]string{}
	}
	if d, ok := l.seen[[2]string{meterName, key}]; ok {
		return d
	}
	d := digest(key)
	l.seen[[2]string{meterName, key}] = d
	l.m, l.d, l.k = append(l.m, meterName), append(l.d, d), append(l.k, key)
	return d
}

// groupKeysSQL records long group keys by their digests, in key order (as
// the windows are written) so that concurrent batches lock in one order.
// A digest already recorded stands for the same key.
const groupKeysSQL = `INSERT INTO meter_group_keys (meter, digest, group_key)
	SELECT m, d, k FROM unnest($1::text[], $2::text[], $3::text[]) AS b(m, d, k) ORDER BY m, d
	ON CONFLICT DO NOTHING`

// batchSQL unnests the common columns plus value and events.
const batchSQL = `unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::bigint[], $7::bigint[]) AS b(t, m, k, g, s, v, e)`

const windowKey = `(tenant, meter, group_key, granularity, window_start)`

// addsSQL folds each window's rows in the batch first (an INSERT may not
// touch a row twice), then folds the result into the stored window.
var addsSQL = map[meter.Aggregation]string{
	meter.Sum: `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events)
		SELECT t, m, k, g, s, sum(v::numeric), sum(e) FROM ` + batchSQL + `
		GROUP BY t, m, g, s, k ORDER BY t, m, g, s, k
		ON CONFLICT ` + windowKey + ` DO UPDATE
		SET value = usage_windows.value + EXCLUDED.value, events = usage_windows.events + EXCLUDED.events, updated_at = now()`,
	meter.Count: `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events)
		SELECT t, m, k, g, s, sum(e::numeric), sum(e) FROM ` + batchSQL + `
		GROUP BY t, m, g, s, k ORDER BY t, m, g, s, k
		ON CONFLICT ` + windowKey + ` DO UPDATE
		SET value = usage_windows.value + EXCLUDED.value, events = usage_windows.events + EXCLUDED.events, updated_at = now()`,
	meter.Max: `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events)
		SELECT t, m, k, g, s, max(v)::numeric, sum(e) FROM ` + batchSQL + `
		GROUP BY t, m, g, s, k ORDER BY t, m, g, s, k
		ON CONFLICT ` + windowKey + ` DO UPDATE
		SET value = GREATEST(usage_windows.value, EXCLUDED.value), events = usage_windows.events + EXCLUDED.events, updated_at = now()`,
}

// latestSQL keeps, per window of the batch, the row of greatest (time, id,
// value) and the batch's events, then replaces the stored value, time and
// id when that row is later than the stored one, or raises the stored
// value when the row is the same event (equal (time, id)) with a greater
// value. A stored window without latest_time (none should exist for a
// latest meter) takes the row's.
const latestSQL = `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events, latest_time, latest_id)
	SELECT t, m, k, g, s, v::numeric, n, at, id FROM (
		SELECT DISTINCT ON (t, m, g, s, k) t, m, k, g, s, v, at, id, sum(e) OVER (PARTITION BY t, m, g, s, k) AS n
		FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::bigint[], $7::bigint[], $8::timestamptz[], $9::text[]) AS b(t, m, k, g, s, v, e, at, id)
		ORDER BY t, m, g, s, k, at DESC, id DESC, v DESC
	) AS w ORDER BY t, m, g, s, k
	ON CONFLICT ` + windowKey + ` DO UPDATE
	SET value = CASE WHEN ` + latestWins + ` THEN EXCLUDED.value ELSE usage_windows.value END,
		latest_time = CASE WHEN ` + latestWins + ` THEN EXCLUDED.latest_time ELSE usage_windows.latest_time END,
		latest_id = CASE WHEN ` + latestWins + ` THEN EXCLUDED.latest_id ELSE usage_windows.latest_id END,
		events = usage_windows.events + EXCLUDED.events, updated_at = now()`

// latestWins is when a latest row replaces the stored window's value: a
// later (time, id), or the same (time, id) with a greater value. It never
// lowers the value of one (time, id).
const latestWins = `(usage_windows.latest_time IS NULL
			OR (EXCLUDED.latest_time, EXCLUDED.latest_id) > (usage_windows.latest_time, usage_windows.latest_id)
			OR (EXCLUDED.latest_time, EXCLUDED.latest_id) = (usage_windows.latest_time, usage_windows.latest_id) AND EXCLUDED.value > usage_windows.value)`

// uniqueSQL inserts the batch's distinct values in key order (a value that
// is already stored, or inserted by a concurrent batch that commits first,
// is not inserted), then adds to each window the number of its values
// actually inserted and the batch's events. The data-modifying CTE runs to
// completion before the windows are written, since they aggregate over it.
const uniqueSQL = `WITH b AS (
		SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::bigint[], $7::text[], $8::boolean[]) AS b(t, m, k, g, s, e, u, h)
	), ins AS (
		INSERT INTO meter_uniques (tenant, meter, group_key, granularity, window_start, value)
		SELECT DISTINCT t, m, k, g, s, u FROM b WHERE h ORDER BY t, m, g, s, k, u
		ON CONFLICT DO NOTHING
		RETURNING tenant, meter, group_key, granularity, window_start
	), added AS (
		SELECT tenant, meter, group_key, granularity, window_start, count(*) AS n FROM ins
		GROUP BY tenant, meter, group_key, granularity, window_start
	), w AS (
		SELECT t, m, k, g, s, sum(e) AS e FROM b GROUP BY t, m, g, s, k
	)
	INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events)
	SELECT w.t, w.m, w.k, w.g, w.s, coalesce(added.n, 0)::numeric, w.e FROM w
	LEFT JOIN added ON (added.tenant, added.meter, added.group_key, added.granularity, added.window_start) = (w.t, w.m, w.k, w.g, w.s)
	ORDER BY w.t, w.m, w.g, w.s, w.k
	ON CONFLICT ` + windowKey + ` DO UPDATE
	SET value = usage_windows.value + EXCLUDED.value, events = usage_windows.events + EXCLUDED.events, updated_at = now()`
