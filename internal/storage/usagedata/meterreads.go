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

	"github.com/jackc/pgx/v5"
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
	return m.Definition(), true, nil
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

	probeLimit int // keyProbeLimit when 0; tests lower it
}

// keyProbeLimit bounds the index probes that list a meter's group keys;
// a meter with more keys lists those of the windows in range instead.
const keyProbeLimit = 10000

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

// MeterWindows is a list of windows; its JSON is written in one piece
// (an answer may hold 10000 windows), exactly as encoding/json writes
// each MeterWindow.
type MeterWindows []MeterWindow

// MarshalJSON writes the windows as a JSON array.
func (ws MeterWindows) MarshalJSON() ([]byte, error) {
	buf := make([]byte, 0, 2+len(ws)*112)
	buf = append(buf, '[')
	for i, w := range ws {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, `{"start":"`...)
		buf = w.Start.AppendFormat(buf, time.RFC3339Nano)
		buf = append(buf, `","end":"`...)
		buf = w.End.AppendFormat(buf, time.RFC3339Nano)
		buf = append(buf, `","value":`...)
		if w.Value == nil {
			buf = append(buf, "null"...)
		} else {
			buf = w.Value.Append(buf, 10)
		}
		buf = append(buf, `,"events":`...)
		buf = strconv.AppendInt(buf, w.Events, 10)
		buf = append(buf, `,"group":`...)
		g, err := w.Group.MarshalJSON()
		if err != nil {
			return nil, err
		}
		buf = append(buf, g...)
		buf = append(buf, '}')
	}
	return append(buf, ']'), nil
}

// MeterUsage is the answer to a MeterQuery.
type MeterUsage struct {
	// Windows are ordered by group (Totals' order), then start.
	Windows MeterWindows
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
// A group's total over the range folds its windows the same way (for
// sum, count, max and latest, here, from the windows SQL folded, as big
// integers); for unique_count, SQL counts the distinct values seen over
// the range, from the value rows of the windows of this granularity (a
// value seen in two windows counts once). Events always add. A stored
// group key that is a digest (migration 0014) is resolved through
// meter_group_keys.
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
	var (
		ws, ts []usageRow
		all    = usageRow{value: new(big.Int)}
		groups []groupValues // by group number
		runs   []int         // by group number: the index in ws of its first window, -1 for none
	)
	for rows.Next() {
		var x usageRow
		var vals []pgtype.Text
		var start, at pgtype.Timestamptz
		var id pgtype.Text
		var value pgtype.Numeric
		var events pgtype.Int8
		var kind int32
		if err := rows.Scan(&x.group, &vals, &start, &value, &events, &kind, &at, &id); err != nil {
			return MeterUsage{}, fmt.Errorf("reading usage of meter %s: %w", q.Meter.Name, err)
		}
		if kind == -1 { // a group and its values; numbered from 1
			for len(groups) <= int(x.group) {
				groups, runs = append(groups, nil), append(runs, -1)
			}
			groups[x.group] = groupValues(vals)
			continue
		}
		if x.group < 0 || int(x.group) >= len(groups) {
			if kind == 3 {
				x.group = 0 // the total of everything has no group
			} else {
				return MeterUsage{}, fmt.Errorf("reading usage of meter %s: a row of group %d, which is not numbered", q.Meter.Name, x.group)
			}
		}
		x.value, x.events, x.at, x.id = NumericInt(value), events.Int64, at, id
		switch kind {
		case 0: // a window of a group, in order of group then start
			if q.MaxWindows > 0 && len(ws) >= q.MaxWindows {
				return MeterUsage{}, fmt.Errorf("reading usage of meter %s: %w: more than %d", q.Meter.Name, ErrTooManyWindows, q.MaxWindows)
			}
			if runs[x.group] < 0 {
				runs[x.group] = len(ws)
			}
			x.start = start.Time.UTC()
			ws = append(ws, x)
		case 1: // a group's total (unique_count only)
			ts = append(ts, x)
		case 3: // the total of everything (unique_count only)
			all = x
		}
	}
	if err := rows.Err(); err != nil {
		return MeterUsage{}, fmt.Errorf("reading usage of meter %s: %w", q.Meter.Name, err)
	}
	if q.Meter.Aggregation != meter.UniqueCount {
		// The other aggregations fold windows as they fold events, so a
		// total is the fold of the group's windows.
		for i, w := range ws {
			if i == 0 || w.group != ws[i-1].group {
				ts = append(ts, usageRow{group: w.group, value: new(big.Int)})
			}
			ts[len(ts)-1].fold(q.Meter.Aggregation, w)
			all.fold(q.Meter.Aggregation, w)
		}
	}
	// Order the groups with windows by their values: totals in that
	// order, and windows in runs of their group, already by start.
	slices.SortFunc(ts, func(a, b usageRow) int { return groups[a.group].compare(groups[b.group]) })
	gs := make([]Group, len(groups))
	for _, t := range ts {
		gs[t.group] = groups[t.group].group(q.GroupBy)
	}
	ordered := make([]MeterWindow, 0, len(ws))
	for _, t := range ts {
		for i := runs[t.group]; i >= 0 && i < len(ws) && ws[i].group == t.group; i++ {
			w := ws[i]
			ordered = append(ordered, MeterWindow{Start: w.start, End: q.Granularity.End(w.start), Value: w.value, Events: w.events, Group: gs[w.group]})
		}
	}
	out := MeterUsage{Total: all.value, Events: all.events, Totals: make([]GroupTotal, len(ts)), Windows: ordered}
	for i, t := range ts {
		out.Totals[i] = GroupTotal{Group: gs[t.group], Value: t.value, Events: t.events}
	}
	return out, nil
}

// usageRow is a row of meterUsageSQL: a group's window, a group's total
// or the total of everything.
type usageRow struct {
	group  int32
	start  time.Time
	value  *big.Int
	events int64
	// at and id are the (latest_time, latest_id) of a latest meter's value.
	at pgtype.Timestamptz
	id pgtype.Text
}

// fold adds window w to the total u as aggregation agg folds (not
// unique_count, whose distinct values only SQL sees).
func (u *usageRow) fold(agg meter.Aggregation, w usageRow) {
	u.events += w.events
	switch agg {
	case meter.Sum, meter.Count:
		u.value.Add(u.value, w.value)
	case meter.Max:
		if w.value.Cmp(u.value) > 0 {
			u.value.Set(w.value)
		}
	case meter.Latest:
		if w.later(*u) { // u starts with no time and 0, which any window passes
			u.value.Set(w.value)
			u.at, u.id = w.at, w.id
		}
	}
}

// later reports whether w's value is later than o's: a greater
// (latest_time, latest_id), then a greater value; no time is earliest.
func (w usageRow) later(o usageRow) bool {
	switch {
	case w.at.Valid != o.at.Valid:
		return w.at.Valid
	case w.at.Valid && !w.at.Time.Equal(o.at.Time):
		return w.at.Time.After(o.at.Time)
	case w.id.String != o.id.String:
		return w.id.String > o.id.String
	}
	return w.value.Cmp(o.value) > 0
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
		elems[i] = "j.k->>" + strconv.Itoa(at)
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
		where = append(where, fmt.Sprintf("j.k->>%d = $%d", at, len(args)))
	}
	// ks: the distinct group keys the tenant's meter has, found by
	// skipping through the primary key, one probe per key whatever the
	// number of windows, up to keyProbeLimit probes; keys: those, or, when
	// the meter has more keys than that, the distinct keys of the windows
	// in range, from a scan of them (the other branch is cut by a one-time
	// filter); kg: each with its group key as jsonb (a digest resolved
	// through meter_group_keys), kept when the filter matches, with the
	// requested values; g: a number for each requested group; km: stored
	// key to group number; w: the windows in range, of the keys kept.
	// Windows then fold by (group number, start), hashed.
	var sql string
	if len(d.GroupBy) == 0 {
		sql = `WITH km AS (
		SELECT ''::text AS sk, 1 AS gid
	), g AS (
		SELECT '{}'::text[] AS grp, 1 AS gid
	)`
	} else {
		limit := strconv.Itoa(cmp.Or(q.probeLimit, keyProbeLimit))
		sql = `WITH RECURSIVE ks AS (
		(SELECT group_key AS sk, 1 AS n FROM usage_windows WHERE tenant = $1 AND meter = $2 AND group_key > '' ORDER BY group_key LIMIT 1)
		UNION ALL
		SELECT (SELECT group_key FROM usage_windows WHERE tenant = $1 AND meter = $2 AND group_key > ks.sk ORDER BY group_key LIMIT 1), ks.n + 1
		FROM ks WHERE ks.sk IS NOT NULL AND ks.n < ` + limit + `
	), keys AS (
		SELECT sk FROM ks WHERE sk IS NOT NULL AND (SELECT max(n) FROM ks) < ` + limit + `
		UNION ALL
		SELECT DISTINCT group_key FROM usage_windows
		WHERE tenant = $1 AND meter = $2 AND granularity = $3 AND window_start >= $4 AND window_start < $5 AND group_key <> ''
			AND (SELECT max(n) FROM ks) >= ` + limit + `
	), kg AS (
		SELECT ks.sk, ` + grp + ` AS grp FROM keys ks
		LEFT JOIN meter_group_keys gk ON NOT starts_with(ks.sk, '[') AND gk.meter = $2 AND gk.digest = ks.sk
		CROSS JOIN LATERAL (SELECT CASE WHEN starts_with(ks.sk, '[') THEN ks.sk::jsonb ELSE gk.group_key::jsonb END AS k) j
		WHERE true`
		for _, c := range where {
			sql += ` AND ` + c
		}
		sql += `
	), g AS (
		SELECT grp, (row_number() OVER ())::int AS gid FROM (SELECT DISTINCT grp FROM kg) x
	), km AS (
		SELECT kg.sk, g.gid FROM kg JOIN g ON g.grp = kg.grp
	)`
	}
	sql += `, w AS (
		SELECT km.gid, uw.window_start AS s, uw.value AS v, uw.events AS e, uw.latest_time AS lt, uw.latest_id AS li
		FROM km JOIN usage_windows uw ON uw.tenant = $1 AND uw.meter = $2 AND uw.group_key = km.sk
			AND uw.granularity = $3 AND uw.window_start >= $4 AND uw.window_start < $5
	)`
	// a: the folded rows, each (group number, start, value, events,
	// GROUPING(gid, s): 0 a window, 1 a group's total, 3 everything, and
	// for latest the (time, id) of the value). The answer is each group
	// of g once (kind -1, with its values), then a's rows by kind, group
	// number and start.
	switch d.Aggregation {
	case meter.Sum, meter.Count:
		sql += `, a AS (SELECT w.gid, w.s, sum(w.v) AS v, sum(w.e)::bigint AS e, 0 AS gr, NULL::timestamptz AS lt, NULL::text AS li FROM w GROUP BY w.gid, w.s)`
	case meter.Max:
		sql += `, a AS (SELECT w.gid, w.s, max(w.v) AS v, sum(w.e)::bigint AS e, 0 AS gr, NULL::timestamptz AS lt, NULL::text AS li FROM w GROUP BY w.gid, w.s)`
	case meter.Latest:
		sql += `, a AS (SELECT w.gid, w.s,
			(array_agg(w.v ORDER BY w.lt DESC NULLS LAST, w.li DESC NULLS LAST, w.v DESC))[1] AS v,
			sum(w.e)::bigint AS e, 0 AS gr,
			(array_agg(w.lt ORDER BY w.lt DESC NULLS LAST, w.li DESC NULLS LAST, w.v DESC))[1] AS lt,
			(array_agg(w.li ORDER BY w.lt DESC NULLS LAST, w.li DESC NULLS LAST, w.v DESC))[1] AS li
		FROM w GROUP BY w.gid, w.s)`
	case meter.UniqueCount:
		// Each window once with its events, and each value row of the
		// windows in range with none: count(DISTINCT) skips the NULLs.
		sql += `, x AS (
		SELECT w.gid, w.s, w.e, NULL::text AS u FROM w
		UNION ALL
		SELECT km.gid, mu.window_start, 0, mu.value FROM meter_uniques mu JOIN km ON km.sk = mu.group_key
		WHERE mu.tenant = $1 AND mu.meter = $2 AND mu.granularity = $3 AND mu.window_start >= $4 AND mu.window_start < $5
	), a AS (
		SELECT coalesce(gid, 0) AS gid, s, count(DISTINCT u)::numeric AS v, sum(e)::bigint AS e, GROUPING(gid, s) AS gr,
			NULL::timestamptz AS lt, NULL::text AS li
		FROM x GROUP BY GROUPING SETS ((gid, s), (gid), ())
	)`
	}
	sql += `
	SELECT * FROM (
		SELECT gid, grp, NULL::timestamptz AS s, NULL::numeric AS v, NULL::bigint AS e, -1 AS gr, NULL::timestamptz AS lt, NULL::text AS li FROM g
		UNION ALL
		SELECT gid, NULL::text[], s, v, e, gr, lt, li FROM a
	) r ORDER BY gr, gid, s`
	return sql, args, nil
}

// TenantMeters returns the defined meters that counted usage of tenant in
// a month starting at or after from, in name order. It finds the
// tenant's meters by skipping through usage_windows' primary key (a few
// index lookups per meter, never a scan of the tenant's windows), keeps
// those with a month window in range, and takes their definitions from
// accounts.ListMeters (implicit meters are not stored, so they drop out).
func (r *Reader) TenantMeters(ctx context.Context, tenant string, from time.Time) ([]meter.Definition, error) {
	rows, err := r.q.Query(ctx, `WITH RECURSIVE m AS (
			(SELECT meter FROM usage_windows WHERE tenant = $1 ORDER BY meter LIMIT 1)
			UNION ALL
			SELECT (SELECT meter FROM usage_windows WHERE tenant = $1 AND meter > m.meter ORDER BY meter LIMIT 1) FROM m WHERE m.meter IS NOT NULL
		)
		SELECT m.meter FROM m
		WHERE m.meter IS NOT NULL AND EXISTS (SELECT 1 FROM usage_windows w WHERE w.tenant = $1 AND w.meter = m.meter
			AND w.group_key >= '' AND w.granularity = 'month' AND w.window_start >= $2)
		ORDER BY m.meter`, tenant, from)
	if err != nil {
		return nil, fmt.Errorf("listing the meters of tenant %s: %w", tenant, err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("listing the meters of tenant %s: %w", tenant, err)
	}
	if len(names) == 0 {
		return nil, nil
	}
	defined, err := accounts.ListMeters(ctx, r.q)
	if err != nil {
		return nil, fmt.Errorf("listing the meters of tenant %s: %w", tenant, err)
	}
	byName := make(map[string]accounts.Meter, len(defined))
	for _, m := range defined {
		byName[m.Name] = m
	}
	var out []meter.Definition
	for _, name := range names {
		if m, ok := byName[name]; ok {
			out = append(out, m.Definition())
		}
	}
	return out, nil
}
