package usagedata

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/windows"
)

// Meter returns the definition of the meter name and whether it is
// defined. A name that no meter row holds is the implicit meter of the
// metric of that name (sum, no groups, no filter), whose windows are the
// ones GET /v1/usage?metric= reads: it is returned, undefined, whether or
// not that metric was ever counted, as a metric= read answers no windows
// rather than an error.
func (r *Reader) Meter(ctx context.Context, name string) (meter.Definition, bool, error) {
	m, err := accounts.GetMeter(ctx, r.q, name)
	if errors.Is(err, accounts.ErrNotFound) {
		return meter.Implicit(name), false, nil
	}
	if err != nil {
		return meter.Definition{}, false, fmt.Errorf("reading usage of meter %s: %w", name, err)
	}
	return meter.Definition{
		Name: m.Name, Metric: m.Metric, Aggregation: meter.Aggregation(m.Aggregation), GroupBy: m.GroupBy,
		Filter: m.Filter, Property: m.Property, Description: m.Description,
	}, true, nil
}

// MeterQuery is a grouped read of one meter's windows.
type MeterQuery struct {
	Tenant string
	// Meter is the meter's definition (Reader.Meter): its name, group_by
	// and aggregation decide what is read and how groups fold.
	Meter       meter.Definition
	Granularity windows.Granularity
	// From is inclusive, To exclusive, on window starts.
	From, To time.Time
	// GroupBy names the properties to answer groups of, in the answer's
	// order: a subset of Meter.GroupBy (none: one group of everything).
	GroupBy []string
	// Filter keeps only the meter's groups whose properties have these
	// values; each property must be one of Meter.GroupBy. A missing
	// property matches no value.
	Filter map[string]string
	// MaxWindows, when positive, is the most windows (groups times
	// periods) an answer may hold; more is ErrTooManyWindows.
	MaxWindows int
}

// ErrBadMeterQuery is returned for a query the meter cannot answer: a
// group_by or filter property the meter does not group by, or a property
// named twice in group_by.
var ErrBadMeterQuery = errors.New("invalid meter usage query")

// ErrTooManyWindows is returned when an answer would hold more than
// MeterQuery.MaxWindows windows.
var ErrTooManyWindows = errors.New("too many windows")

// Group is one group of an answer: the values of the query's group_by
// properties, in that order. Its JSON is an object of them, null for a
// missing property: {"model":"gpt-4","region":null}; {} when the query
// groups by nothing.
type Group = meter.Group

// MeterWindow is one window of one group.
type MeterWindow struct {
	Start  time.Time `json:"start"`
	End    time.Time `json:"end"`
	Value  *big.Int  `json:"value"`
	Events int64     `json:"events"`
	Group  Group     `json:"group"`
}

// GroupTotal is one group's usage over the whole range.
type GroupTotal struct {
	Group  Group    `json:"group"`
	Value  *big.Int `json:"value"`
	Events int64    `json:"events"`
}

// MeterUsage is the answer to a MeterQuery.
type MeterUsage struct {
	// Windows are ordered by group (Totals' order), then start.
	Windows []MeterWindow
	// Totals hold one entry per group that has a window in the range,
	// ordered by the groups' values byte by byte, a missing value first.
	Totals []GroupTotal
	// Total folds every window of the answer, as Totals fold a group's.
	Total *big.Int
	// Events is the number of events counted in the answer's windows.
	Events int64
}

// MeterUsage reads q.Tenant's windows of meter q.Meter at granularity
// q.Granularity whose start is in [q.From, q.To), keeps the meter's
// groups that match q.Filter and folds them into the groups of
// q.GroupBy, in SQL, exactly, as the meter's aggregation folds events:
//
//   - sum and count: the values add;
//   - max: the greatest value;
//   - latest: the value of the window of the greatest (latest_time,
//     latest_id), the event latest would have kept;
//   - unique_count: the number of distinct values across the folded
//     windows' meter_uniques rows, not the sum of their counts.
//
// A group's total over the range folds its windows the same way: for
// unique_count, it is the number of distinct values seen over the range,
// counted from the value rows of the windows of this granularity (a value
// seen in two windows counts once). Events always add. A stored group key
// that is a digest (migration 0014) is resolved through meter_group_keys.
func (r *Reader) MeterUsage(ctx context.Context, q MeterQuery) (MeterUsage, error) {
	sql, args, err := meterUsageSQL(q)
	if err != nil {
		return MeterUsage{}, err
	}
	rows, err := r.q.Query(ctx, sql, args...)
	if err != nil {
		return MeterUsage{}, fmt.Errorf("reading usage of meter %s: %w", q.Meter.Name, err)
	}
	defer rows.Close()
	type row struct {
		group  int // index in groups
		start  time.Time
		value  *big.Int
		events int64
	}
	var (
		ws, ts []row
		out    = MeterUsage{Total: new(big.Int)}
		groups []groupValues
		index  = map[string]int{}
		key    strings.Builder
	)
	for rows.Next() {
		var vals []pgtype.Text
		var start pgtype.Timestamptz
		var value pgtype.Numeric
		var events pgtype.Int8
		var grouping int32
		if err := rows.Scan(&vals, &start, &value, &events, &grouping); err != nil {
			return MeterUsage{}, fmt.Errorf("reading usage of meter %s: %w", q.Meter.Name, err)
		}
		if grouping == 3 { // the grouping set (): everything
			out.Total, out.Events = NumericInt(value), events.Int64
			continue
		}
		key.Reset()
		for _, v := range vals {
			if !v.Valid {
				key.WriteString("-,")
				continue
			}
			key.WriteString(strconv.Itoa(len(v.String)))
			key.WriteString(":")
			key.WriteString(v.String)
		}
		gi, ok := index[key.String()]
		if !ok {
			gi = len(groups)
			index[key.String()] = gi
			groups = append(groups, groupValues(vals))
		}
		x := row{group: gi, value: NumericInt(value), events: events.Int64}
		if grouping == 0 {
			if q.MaxWindows > 0 && len(ws) >= q.MaxWindows {
				return MeterUsage{}, fmt.Errorf("reading usage of meter %s: %w: more than %d", q.Meter.Name, ErrTooManyWindows, q.MaxWindows)
			}
			x.start = start.Time.UTC()
			ws = append(ws, x)
		} else {
			ts = append(ts, x)
		}
	}
	if err := rows.Err(); err != nil {
		return MeterUsage{}, fmt.Errorf("reading usage of meter %s: %w", q.Meter.Name, err)
	}
	// Order the groups by their values, then give each its rank.
	order := make([]int, len(groups))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return groups[a].compare(groups[b]) })
	rank := make([]int, len(groups))
	gs := make([]Group, len(groups))
	for r, gi := range order {
		rank[gi] = r
		gs[gi] = groups[gi].group(q.GroupBy)
	}
	slices.SortFunc(ts, func(a, b row) int { return cmp.Compare(rank[a.group], rank[b.group]) })
	slices.SortFunc(ws, func(a, b row) int {
		if c := cmp.Compare(rank[a.group], rank[b.group]); c != 0 {
			return c
		}
		return a.start.Compare(b.start)
	})
	out.Totals = make([]GroupTotal, len(ts))
	for i, t := range ts {
		out.Totals[i] = GroupTotal{Group: gs[t.group], Value: t.value, Events: t.events}
	}
	out.Windows = make([]MeterWindow, len(ws))
	for i, w := range ws {
		out.Windows[i] = MeterWindow{Start: w.start, End: q.Granularity.End(w.start), Value: w.value, Events: w.events, Group: gs[w.group]}
	}
	return out, nil
}

// groupValues is one group's values as read: invalid is a missing property.
type groupValues []pgtype.Text

// compare orders groups value by value, a missing value first, then byte
// by byte.
func (g groupValues) compare(o groupValues) int {
	for i := range min(len(g), len(o)) {
		switch {
		case !g[i].Valid && !o[i].Valid:
			continue
		case !g[i].Valid:
			return -1
		case !o[i].Valid:
			return 1
		}
		if c := strings.Compare(g[i].String, o[i].String); c != 0 {
			return c
		}
	}
	return cmp.Compare(len(g), len(o))
}

// group returns the values as a Group of the properties names.
func (g groupValues) group(names []string) Group {
	props := make(map[string]string, len(g))
	for i, v := range g {
		if v.Valid {
			props[names[i]] = v.String
		}
	}
	return meter.Definition{GroupBy: names}.Group(events.Event{Properties: props})
}

// meterUsageSQL checks q against its meter and returns the statement that
// answers it and its arguments. The statement's rows are (group values,
// start, value, events, GROUPING(group, start)): 0 for a window, 1 for a
// group's total, 3 for the total of everything.
func meterUsageSQL(q MeterQuery) (string, []any, error) {
	d := q.Meter
	if !d.Aggregation.Valid() {
		return "", nil, fmt.Errorf("%w: meter %s has aggregation %q", ErrBadMeterQuery, d.Name, d.Aggregation)
	}
	pos := func(field, p string) (int, error) {
		i := slices.Index(d.GroupBy, p)
		if i < 0 {
			if len(d.GroupBy) == 0 {
				return 0, fmt.Errorf("%w: %s %q: meter %s has no groups", ErrBadMeterQuery, field, p, d.Name)
			}
			return 0, fmt.Errorf("%w: %s %q: meter %s groups only by %s", ErrBadMeterQuery, field, p, d.Name, strings.Join(d.GroupBy, ", "))
		}
		return i, nil
	}
	args := []any{q.Tenant, d.Name, string(q.Granularity), q.From, q.To}
	// The requested values, by their position in the stored key: the
	// positions are integers this function wrote, never input text.
	elems := make([]string, len(q.GroupBy))
	for i, p := range q.GroupBy {
		at, err := pos("group_by", p)
		if err != nil {
			return "", nil, err
		}
		if slices.Index(q.GroupBy[:i], p) >= 0 {
			return "", nil, fmt.Errorf("%w: group_by names %q twice", ErrBadMeterQuery, p)
		}
		elems[i] = "w.k->>" + strconv.Itoa(at)
	}
	grp := "'{}'::text[]"
	if len(elems) > 0 {
		grp = "ARRAY[" + strings.Join(elems, ", ") + "]::text[]"
	}
	var where []string
	for _, p := range slices.Sorted(maps.Keys(q.Filter)) {
		at, err := pos("filter", p)
		if err != nil {
			return "", nil, err
		}
		args = append(args, q.Filter[p])
		where = append(where, fmt.Sprintf("w.k->>%d = $%d", at, len(args)))
	}
	keys := "uw.group_key = ''"
	if len(d.GroupBy) > 0 {
		keys = "uw.group_key <> ''"
	}
	// w: the meter's windows in range, each with its group key as jsonb (a
	// digest resolved through meter_group_keys); f: those the filter keeps,
	// with the requested values.
	sql := `WITH w AS (
		SELECT uw.group_key AS sk, uw.window_start AS s, uw.value AS v, uw.events AS e, uw.latest_time AS lt, uw.latest_id AS li,
			CASE WHEN starts_with(uw.group_key, '[') THEN uw.group_key::jsonb ELSE gk.group_key::jsonb END AS k
		FROM usage_windows uw
		LEFT JOIN meter_group_keys gk ON uw.group_key <> '' AND NOT starts_with(uw.group_key, '[') AND gk.meter = uw.meter AND gk.digest = uw.group_key
		WHERE uw.tenant = $1 AND uw.meter = $2 AND uw.granularity = $3 AND uw.window_start >= $4 AND uw.window_start < $5 AND ` + keys + `
	), f AS (
		SELECT ` + grp + ` AS grp, w.sk, w.s, w.v, w.e, w.lt, w.li FROM w`
	if len(where) > 0 {
		sql += ` WHERE ` + strings.Join(where, " AND ")
	}
	sql += `)
	`
	const sets = ` GROUP BY GROUPING SETS ((grp, s), (grp), ())`
	switch d.Aggregation {
	case meter.Sum, meter.Count:
		sql += `SELECT grp, s, sum(v), sum(e)::bigint, GROUPING(grp, s) FROM f` + sets
	case meter.Max:
		sql += `SELECT grp, s, max(v), sum(e)::bigint, GROUPING(grp, s) FROM f` + sets
	case meter.Latest:
		sql += `SELECT grp, s, (array_agg(v ORDER BY lt DESC NULLS LAST, li DESC NULLS LAST, v DESC))[1], sum(e)::bigint, GROUPING(grp, s) FROM f` + sets
	case meter.UniqueCount:
		// Each window once with its events, and each of its distinct
		// values with none: count(DISTINCT) skips the NULLs.
		sql += `, x AS (
			SELECT grp, s, e, NULL::text AS u FROM f
			UNION ALL
			SELECT f.grp, f.s, 0, mu.value FROM f JOIN meter_uniques mu
				ON mu.tenant = $1 AND mu.meter = $2 AND mu.group_key = f.sk AND mu.granularity = $3 AND mu.window_start = f.s
		)
		SELECT grp, s, count(DISTINCT u)::numeric, sum(e)::bigint, GROUPING(grp, s) FROM x` + sets
	}
	return sql, args, nil
}
