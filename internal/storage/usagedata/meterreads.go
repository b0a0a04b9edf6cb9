package usagedata

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/billingcycle"
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
	// periods) an answer may hold; more is ErrTooManyWindows, as is a sum,
	// count or max range of more than 100 times as many stored windows
	// (of all the meter's groups, before filter and folding).
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

// MeterWindows is a list of windows; its JSON is written in one piece
// (an answer may hold 10000 windows), exactly as encoding/json writes
// each MeterWindow.
type MeterWindows []MeterWindow

// MarshalJSON writes the windows as a JSON array.
func (ws MeterWindows) MarshalJSON() ([]byte, error) {
	return ws.AppendJSON(make([]byte, 0, 2+len(ws)*112)), nil
}

// AppendJSON appends what MarshalJSON writes to dst.
func (ws MeterWindows) AppendJSON(dst []byte) []byte {
	dst = slices.Grow(dst, 2+len(ws)*112)
	dst = append(dst, '[')
	for i, w := range ws {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"start":"`...)
		dst = appendTime(dst, w.Start)
		dst = append(dst, `","end":"`...)
		dst = appendTime(dst, w.End)
		dst = append(dst, `","value":`...)
		dst = appendInt(dst, w.Value)
		dst = append(dst, `,"events":`...)
		dst = strconv.AppendInt(dst, w.Events, 10)
		dst = append(dst, `,"group":`...)
		dst = w.Group.AppendJSON(dst)
		dst = append(dst, '}')
	}
	return append(dst, ']')
}

// GroupTotals is a list of group totals; its JSON is what encoding/json
// writes for each GroupTotal.
type GroupTotals []GroupTotal

// MarshalJSON writes the totals as a JSON array.
func (ts GroupTotals) MarshalJSON() ([]byte, error) {
	return ts.AppendJSON(nil), nil
}

// AppendJSON appends what MarshalJSON writes to dst.
func (ts GroupTotals) AppendJSON(dst []byte) []byte {
	dst = append(dst, '[')
	for i, t := range ts {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"group":`...)
		dst = t.Group.AppendJSON(dst)
		dst = append(dst, `,"value":`...)
		dst = appendInt(dst, t.Value)
		dst = append(dst, `,"events":`...)
		dst = strconv.AppendInt(dst, t.Events, 10)
		dst = append(dst, '}')
	}
	return append(dst, ']')
}

// appendInt appends v as encoding/json writes a *big.Int: its digits, or
// null.
func appendInt(dst []byte, v *big.Int) []byte {
	switch {
	case v == nil:
		return append(dst, "null"...)
	case v.IsInt64():
		return strconv.AppendInt(dst, v.Int64(), 10)
	}
	return v.Append(dst, 10)
}

// appendTime appends t as time.RFC3339Nano, what encoding/json writes
// for a time.Time between its quotes, digit by digit for the common
// whole second at offset 0 of years 0 to 9999.
func appendTime(dst []byte, t time.Time) []byte {
	if _, off := t.Zone(); off != 0 || t.Nanosecond() != 0 {
		return t.AppendFormat(dst, time.RFC3339Nano)
	}
	y, mo, d := t.Date()
	if y < 0 || y > 9999 {
		return t.AppendFormat(dst, time.RFC3339Nano)
	}
	h, mi, s := t.Clock()
	two := func(dst []byte, n int) []byte { return append(dst, byte('0'+n/10), byte('0'+n%10)) }
	dst = two(dst, y/100)
	dst = two(dst, y%100)
	dst = two(append(dst, '-'), int(mo))
	dst = two(append(dst, '-'), d)
	dst = two(append(dst, 'T'), h)
	dst = two(append(dst, ':'), mi)
	dst = two(append(dst, ':'), s)
	return append(dst, 'Z')
}

// MeterUsage is the answer to a MeterQuery.
type MeterUsage struct {
	// Windows are ordered by group (Totals' order), then start.
	Windows MeterWindows
	// Totals hold one entry per group that has a window in the range,
	// ordered by the groups' values byte by byte, a missing value first.
	Totals GroupTotals
	// Total folds every window of the answer, as Totals fold a group's.
	Total *big.Int
	// Events is the number of events counted in the answer's windows.
	Events int64
}

// MeterUsage reads q.Tenant's windows of meter q.Meter at granularity
// q.Granularity whose start is in [q.From, q.To), keeps the meter's
// groups that match q.Filter and folds them into the groups of
// q.GroupBy, exactly, as the meter's aggregation folds events:
//
//   - sum and count: the values add;
//   - max: the greatest value;
//   - latest: the value of the window of the greatest (latest_time,
//     latest_id), the event latest would have kept;
//   - unique_count: the number of distinct values across the folded
//     windows' meter_uniques rows, not the sum of their counts.
//
// Sum, count and max windows are folded here, from the stored windows,
// in int64 while the values fit and as big integers beyond; latest and
// unique_count windows are folded in SQL. A group's total over the range
// folds its windows the same way (for sum, count, max and latest, here);
// for unique_count, SQL counts the distinct values seen over the range,
// from the value rows of the windows of this granularity (a value seen
// in two windows counts once). Events always add. A stored group key
// that is a digest (migration 0014) is resolved through
// meter_group_keys.
//
// The windows in range are one range of usage_windows' primary key
// (tenant, meter, granularity, window_start, group_key; migration 0033),
// read by one index scan in start order, so a read costs the windows it
// answers, not the tenant's other windows or the meter's other periods.
// Sum, count and max windows are read as stored, with their group keys,
// and a second statement gives the group of each distinct key; latest
// and unique_count are answered by one statement.
func (r *Reader) MeterUsage(ctx context.Context, q MeterQuery) (MeterUsage, error) {
	if foldsStoredWindows(q.Meter.Aggregation) {
		return r.storedUsage(ctx, q)
	}
	return r.meterUsage(ctx, q)
}

// The columns of meterUsageSQL's rows.
const (
	colGroup = iota
	colValues
	colStart
	colValue
	colEvents
	colKind
	colLatestTime
	colLatestID
)

// cellKey is a window of the answer: a group number and a start.
type cellKey struct {
	group int32
	start int64 // Unix microseconds
}

// folded is an answer being folded: its groups, its windows (one per
// group and start) and, for unique_count, its totals from SQL.
type folded struct {
	agg    meter.Aggregation
	max    int // MeterQuery.MaxWindows
	ws, ts []usageRow
	cells  map[cellKey]int32
	all    usageRow
	groups []groupValues // by group number
	// byGroup lists each group's windows (indexes in ws) as they come;
	// windows mostly come in order of start, so the group's last window
	// is the one most rows fold into.
	byGroup [][]int32
	// dense, when not nil, replaces cells for windows of one size: 1 +
	// the index in ws of the window of group g starting origin + i*step
	// microseconds is dense[g*slots+i] (0: none yet).
	dense                []int32
	slots                int64
	origin, step, finish int64
}

// denseMax bounds the cells of folded.dense (4 bytes each).
const denseMax = 1 << 20

// useDense makes f index its windows by group and start in a slice
// rather than a map, when windows of g have one size (minute, hour and
// day: UTC days have no leap seconds in Go's time) and groups (numbered
// below groups) times the windows of [from, to) are few enough.
func (f *folded) useDense(groups int, g windows.Granularity, from, to time.Time) {
	var step time.Duration
	switch g {
	case windows.Minute:
		step = time.Minute
	case windows.Hour:
		step = time.Hour
	case windows.Day:
		step = 24 * time.Hour
	default:
		return
	}
	origin := g.Start(from)
	slots := int64(to.Sub(origin)/step) + 1
	if groups <= 0 || slots <= 0 || int64(groups) > denseMax/slots {
		return
	}
	f.dense = make([]int32, int64(groups)*slots)
	f.slots, f.origin, f.step, f.finish = slots, origin.UnixMicro(), step.Microseconds(), origin.UnixMicro()+slots*step.Microseconds()
}

var errTooMany = errors.New("too many windows")

// window folds x, a window of group x.group starting at x.start, into
// the answer's window of that group and start.
func (f *folded) window(x usageRow) error {
	if x.group < 0 || x.group > math.MaxInt32-1 {
		return fmt.Errorf("a row of group %d, which is not numbered", x.group)
	}
	for len(f.byGroup) <= int(x.group) {
		f.byGroup = append(f.byGroup, nil)
	}
	mine := f.byGroup[x.group]
	if n := len(mine); n > 0 && f.ws[mine[n-1]].start.Equal(x.start) {
		f.ws[mine[n-1]].fold(f.agg, x)
		return nil
	}
	us := x.start.UnixMicro()
	cell := -1
	if f.dense != nil && us >= f.origin && us < f.finish && (us-f.origin)%f.step == 0 && int64(x.group) < int64(len(f.dense))/f.slots {
		cell = int(int64(x.group)*f.slots + (us-f.origin)/f.step)
		if i := f.dense[cell]; i > 0 {
			f.ws[i-1].fold(f.agg, x)
			return nil
		}
	} else {
		if f.cells == nil {
			f.cells = make(map[cellKey]int32)
		}
		if i, ok := f.cells[cellKey{x.group, us}]; ok {
			f.ws[i].fold(f.agg, x)
			return nil
		}
	}
	if f.max > 0 && len(f.ws) >= f.max {
		return errTooMany
	}
	if len(f.ws) >= math.MaxInt32-1 {
		return errors.New("more windows than an int32 counts")
	}
	if cell >= 0 {
		f.dense[cell] = int32(len(f.ws)) + 1
	} else {
		f.cells[cellKey{x.group, us}] = int32(len(f.ws))
	}
	f.byGroup[x.group] = append(mine, int32(len(f.ws)))
	f.ws = append(f.ws, x)
	return nil
}

// group records group number n and its values; groups are numbered from 1.
func (f *folded) group(n int64, vals []pgtype.Text) error {
	if n < 0 || n > math.MaxInt32-1 {
		return fmt.Errorf("a group numbered %d", n)
	}
	for len(f.groups) <= int(n) {
		f.groups = append(f.groups, nil)
	}
	f.groups[n] = groupValues(vals)
	return nil
}

// storedPerWindow bounds the stored windows a sum, count or max read
// holds in memory before folding: at most this many per window its answer
// may hold (q.MaxWindows), so that a range of a meter with very many
// groups, read to answer a few of them (a filter) or to fold them into
// few, is refused rather than read whole into memory.
const storedPerWindow = 100

// tooMany is the error of an answer of more than q.MaxWindows windows.
func tooMany(q MeterQuery) error {
	return fmt.Errorf("reading usage of meter %s: %w: more than %d", q.Meter.Name, ErrTooManyWindows, q.MaxWindows)
}

// stored is a stored window as storedUsage holds it before folding. It
// holds no pointer, so that the garbage collector need not scan the
// read's largest slice: its start in Unix microseconds, and its value in
// value or, past int64, in the read's list of big values.
type stored struct {
	start, value, events int64
	key                  int32 // index in the read's keys
	big                  int32 // 1 + index in the read's big values; 0: value holds it
}

// storedPool keeps the slices of stored windows of finished reads, so
// that a read reuses the memory of an earlier one instead of growing a
// new slice (fresh pages) to the size of its range.
var storedPool = sync.Pool{New: func() any { return new([]stored) }}

// storedPooledMax is the largest capacity (in stored windows, 32 bytes
// each) of a slice kept in storedPool; a larger one is left to the
// garbage collector, so that the pool holds no more than a few megabytes
// per processor after a rare read of a huge range.
const storedPooledMax = 1 << 17

// storedUsage answers a sum, count or max query: the windows in range as
// stored (group key, start, value, events), one index range scan; then
// the group of each distinct key (groupsOfKeysSQL), and the fold here.
func (r *Reader) storedUsage(ctx context.Context, q MeterQuery) (MeterUsage, error) {
	gsql, gargs, err := groupsOfKeysSQL(q)
	if err != nil {
		return MeterUsage{}, err
	}
	sched, err := periodsOf(ctx, r.q, q.Tenant, q.Granularity)
	if err != nil {
		return MeterUsage{}, err
	}
	fail := func(err error) (MeterUsage, error) {
		return MeterUsage{}, fmt.Errorf("reading usage of meter %s: %w", q.Meter.Name, err)
	}
	// A meter without groups has the empty key only; a grouped meter's
	// keys are JSON arrays or digests.
	keyCond := ` AND group_key <> ''`
	if len(q.Meter.GroupBy) == 0 {
		keyCond = ` AND group_key = ''`
	}
	sql := `SELECT group_key, window_start, value, events FROM usage_windows
		WHERE tenant = $1 AND meter = $2 AND granularity = $3 AND window_start >= $4 AND window_start < $5` + keyCond
	args := []any{q.Tenant, q.Meter.Name, string(q.Granularity), q.From, q.To}
	packed := q.Granularity == windows.Hour && len(q.Meter.GroupBy) > 0 && q.From.Before(q.To)
	if packed {
		sql = packedHoursSQL
		args = append(args, packDays(q.From, q.To))
	}
	rows, err := r.q.Query(ctx, sql, args...)
	if err != nil {
		return fail(err)
	}
	defer rows.Close()
	buf := storedPool.Get().(*[]stored)
	defer func() {
		if cap(*buf) <= storedPooledMax {
			storedPool.Put(buf)
		}
	}()
	var (
		dec    = rowDecoder{m: rows.Conn().TypeMap(), fds: rows.FieldDescriptions()}
		keyOf  = map[string]int32{}
		keys   []string
		stores = (*buf)[:0]
		bigs   []*big.Int
	)
	defer func() { *buf = stores[:0] }()
	bound := func() error {
		if q.MaxWindows > 0 && len(stores) >= storedPerWindow*q.MaxWindows {
			return fmt.Errorf("reading usage of meter %s: %w: the range holds more than %d stored windows",
				q.Meter.Name, ErrTooManyWindows, storedPerWindow*q.MaxWindows)
		}
		return nil
	}
	var pk []packedWindow
	for rows.Next() {
		raw := rows.RawValues()
		if (len(raw) != 4 && (!packed || len(raw) != 5)) || raw[0] == nil {
			return fail(fmt.Errorf("a window row of %d columns", len(raw)))
		}
		k, ok := keyOf[string(raw[0])] // no copy of the key for the lookup
		if !ok {
			if len(keys) == math.MaxInt32 {
				return fail(errors.New("more group keys than an int32 counts"))
			}
			k = int32(len(keys))
			keys = append(keys, string(raw[0]))
			keyOf[keys[k]] = k
		}
		x := stored{key: k}
		start, err := dec.time(raw, 1)
		if err != nil {
			return fail(err)
		}
		if !start.Valid || start.InfinityModifier != pgtype.Finite {
			return fail(errors.New("a window row without a finite start"))
		}
		x.start = start.Time.UnixMicro()
		if len(raw) == 5 && raw[4] != nil { // a pack: the day's windows of one group
			p := raw[4]
			if !dec.binary(4, pgtype.ByteaOID) {
				if err := dec.scan(raw, 4, &p); err != nil {
					return fail(err)
				}
			}
			if pk, err = decodePack(pk[:0], p); err != nil {
				return fail(err)
			}
			from, to := q.From.UnixMicro(), q.To.UnixMicro()
			for _, w := range pk {
				s := x.start + int64(w.offset)*1e6
				if s < from || s >= to {
					continue
				}
				if err := bound(); err != nil {
					return MeterUsage{}, err
				}
				stores = append(stores, stored{key: k, start: s, value: w.value, events: w.events})
			}
			continue
		}
		v, err := dec.amount(raw, 2)
		if err != nil {
			return fail(err)
		}
		if x.value = v.n; v.big != nil {
			if len(bigs) == math.MaxInt32-1 {
				return fail(errors.New("more values past int64 than an int32 counts"))
			}
			bigs = append(bigs, v.big)
			x.big = int32(len(bigs))
		}
		if x.events, err = dec.int(raw, 3); err != nil {
			return fail(err)
		}
		if err := bound(); err != nil {
			return MeterUsage{}, err
		}
		stores = append(stores, x)
	}
	if err := rows.Err(); err != nil {
		return fail(err)
	}
	rows.Close()
	f := folded{agg: q.Meter.Aggregation, max: q.MaxWindows}
	gid := make([]int32, len(keys)) // 0: the key's group is not in the answer
	if len(keys) > 0 {
		grows, err := r.q.Query(ctx, gsql, append(gargs, keys)...)
		if err != nil {
			return fail(err)
		}
		defer grows.Close()
		for grows.Next() {
			var (
				sk   string
				n    int32
				vals []pgtype.Text
			)
			if err := grows.Scan(&sk, &n, &vals); err != nil {
				return fail(err)
			}
			k, ok := keyOf[sk]
			if !ok {
				return fail(fmt.Errorf("group of key %.80q, which was not read", sk))
			}
			if n < 1 {
				return fail(fmt.Errorf("a group numbered %d", n))
			}
			gid[k] = n
			if int(n) >= len(f.groups) || f.groups[n] == nil {
				if err := f.group(int64(n), vals); err != nil {
					return fail(err)
				}
			}
		}
		if err := grows.Err(); err != nil {
			return fail(err)
		}
	}
	f.useDense(len(f.groups), q.Granularity, q.From, q.To)
	for _, x := range stores {
		g := gid[x.key]
		if g == 0 {
			continue
		}
		value := amount{n: x.value}
		if x.big > 0 {
			value = amount{big: bigs[x.big-1]} // read once: this window owns it
		}
		if err := f.window(usageRow{group: g, start: time.UnixMicro(x.start).UTC(), value: value, events: x.events}); err != nil {
			if errors.Is(err, errTooMany) {
				return MeterUsage{}, tooMany(q)
			}
			return fail(err)
		}
	}
	out, err := f.answer(q, sched)
	if err != nil {
		return fail(err)
	}
	return out, nil
}

// meterUsage answers a latest or unique_count query by meterUsageSQL(q).
func (r *Reader) meterUsage(ctx context.Context, q MeterQuery) (MeterUsage, error) {
	sql, args, err := meterUsageSQL(q)
	if err != nil {
		return MeterUsage{}, err
	}
	sched, err := periodsOf(ctx, r.q, q.Tenant, q.Granularity)
	if err != nil {
		return MeterUsage{}, err
	}
	rows, err := r.q.Query(ctx, sql, args...)
	if err != nil {
		return MeterUsage{}, fmt.Errorf("reading usage of meter %s: %w", q.Meter.Name, err)
	}
	defer rows.Close()
	fail := func(err error) (MeterUsage, error) {
		return MeterUsage{}, fmt.Errorf("reading usage of meter %s: %w", q.Meter.Name, err)
	}
	var (
		agg = q.Meter.Aggregation
		dec = rowDecoder{m: rows.Conn().TypeMap(), fds: rows.FieldDescriptions()}
		f   = folded{agg: agg, max: q.MaxWindows}
	)
	for rows.Next() {
		raw := rows.RawValues()
		if len(raw) != colLatestID+1 {
			return fail(fmt.Errorf("a row of %d columns", len(raw)))
		}
		kind, err := dec.int(raw, colKind)
		if err != nil {
			return fail(err)
		}
		var x usageRow
		n, err := dec.int(raw, colGroup)
		if err != nil {
			return fail(err)
		}
		if kind == -1 { // a group and its values; numbered from 1
			var vals []pgtype.Text
			if err := rows.Scan(nil, &vals, nil, nil, nil, nil, nil, nil); err != nil {
				return fail(err)
			}
			if err := f.group(n, vals); err != nil {
				return fail(err)
			}
			continue
		}
		x.group = int32(n)
		if x.value, err = dec.amount(raw, colValue); err != nil {
			return fail(err)
		}
		if x.events, err = dec.int(raw, colEvents); err != nil {
			return fail(err)
		}
		if agg == meter.Latest {
			if x.at, err = dec.time(raw, colLatestTime); err != nil {
				return fail(err)
			}
			if x.id, err = dec.text(raw, colLatestID); err != nil {
				return fail(err)
			}
		}
		switch kind {
		case 0: // a group's folded window
			start, err := dec.time(raw, colStart)
			if err != nil {
				return fail(err)
			}
			x.start = start.Time.UTC()
			if n < 0 || n > math.MaxInt32-1 {
				return fail(fmt.Errorf("a row of group %d, which is not numbered", n))
			}
			if err := f.window(x); err != nil {
				if errors.Is(err, errTooMany) {
					return MeterUsage{}, tooMany(q)
				}
				return fail(err)
			}
		case 1: // a group's total (unique_count only)
			f.ts = append(f.ts, x)
		case 3: // the total of everything (unique_count only)
			x.group = 0
			f.all = x
		}
	}
	if err := rows.Err(); err != nil {
		return fail(err)
	}
	out, err := f.answer(q, sched)
	if err != nil {
		return fail(err)
	}
	return out, nil
}

// answer orders the folded windows and totals: groups ranked by their
// values, each group's windows by start. Totals of every aggregation but
// unique_count (which SQL folded) fold the group's windows here.
func (f *folded) answer(q MeterQuery, sched billingcycle.Schedule) (MeterUsage, error) {
	agg, ws, ts, all, groups, byGroup := f.agg, f.ws, f.ts, f.all, f.groups, f.byGroup
	for _, rs := range [][]usageRow{ws, ts} {
		for _, x := range rs {
			if x.group < 0 || int(x.group) >= len(groups) {
				return MeterUsage{}, fmt.Errorf("a row of group %d, which is not numbered", x.group)
			}
		}
	}
	byValues := make([]int32, len(groups))
	for i := range byValues {
		byValues[i] = int32(i)
	}
	slices.SortFunc(byValues, func(a, b int32) int { return cmp.Or(groups[a].compare(groups[b]), cmp.Compare(a, b)) })
	rank := make([]int32, len(groups))
	for r, g := range byValues {
		rank[g] = int32(r)
	}
	// The windows by rank of group (byValues), each group's by start.
	order := make([]int32, 0, len(ws))
	byStart := func(a, b int32) int { return ws[a].start.Compare(ws[b].start) }
	for _, g := range byValues {
		if int(g) >= len(byGroup) {
			continue
		}
		mine := byGroup[g]
		if !slices.IsSortedFunc(mine, byStart) {
			slices.SortFunc(mine, byStart)
		}
		order = append(order, mine...)
	}
	if agg == meter.UniqueCount {
		slices.SortFunc(ts, func(a, b usageRow) int { return cmp.Compare(rank[a.group], rank[b.group]) })
	} else {
		// The other aggregations fold windows as they fold events, so a
		// total is the fold of the group's windows.
		for k, i := range order {
			w := ws[i]
			if k == 0 || w.group != ws[order[k-1]].group {
				ts = append(ts, usageRow{group: w.group})
			}
			ts[len(ts)-1].fold(agg, w)
			all.fold(agg, w)
		}
	}
	gs := make([]Group, len(groups))
	for _, t := range ts {
		gs[t.group] = groups[t.group].group(q.GroupBy)
	}
	ints := newIntSlab(len(ws) + len(ts) + 1)
	out := MeterUsage{Total: ints.int(all.value), Events: all.events, Totals: make([]GroupTotal, len(ts)), Windows: make([]MeterWindow, len(ws))}
	for k, i := range order {
		w := &ws[i]
		out.Windows[k] = MeterWindow{Start: w.start, End: q.Granularity.EndIn(sched, w.start), Value: ints.int(w.value), Events: w.events, Group: gs[w.group]}
	}
	for i, t := range ts {
		out.Totals[i] = GroupTotal{Group: gs[t.group], Value: ints.int(t.value), Events: t.events}
	}
	return out, nil
}

// usageRow is a row of meterUsageSQL: a group's window, a group's total
// or the total of everything.
type usageRow struct {
	group  int32
	start  time.Time
	value  amount
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
		u.value.add(w.value)
	case meter.Max:
		if w.value.cmp(u.value) > 0 {
			u.value.set(w.value)
		}
	case meter.Latest:
		if w.later(*u) { // u starts with no time and 0, which any window passes
			u.value.set(w.value)
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
	return w.value.cmp(o.value) > 0
}

// amount is an exact integer: in n while it fits an int64, else in big.
// Folding windows adds and compares int64s, and turns to big integers
// only when a value or a sum does not fit.
type amount struct {
	n   int64
	big *big.Int // when not nil, the value; owned by this amount
}

// add sets a to a + b.
func (a *amount) add(b amount) {
	if a.big == nil && b.big == nil {
		if s := a.n + b.n; (s > a.n) == (b.n > 0) { // no overflow
			a.n = s
			return
		}
	}
	z := a.big
	if z == nil {
		z = big.NewInt(a.n)
	}
	a.big = z.Add(z, b.bigInt())
}

// cmp compares a and b as cmp.Compare does.
func (a amount) cmp(b amount) int {
	if a.big == nil && b.big == nil {
		return cmp.Compare(a.n, b.n)
	}
	return a.bigInt().Cmp(b.bigInt())
}

// set sets a to b, sharing nothing with it.
func (a *amount) set(b amount) {
	if b.big == nil {
		*a = amount{n: b.n}
		return
	}
	*a = amount{big: new(big.Int).Set(b.big)}
}

// bigInt returns a as a big integer, to read only: a.big itself when set.
func (a amount) bigInt() *big.Int {
	if a.big != nil {
		return a.big
	}
	return big.NewInt(a.n)
}

// intSlab hands out the big integers of an answer from two allocations
// instead of two per value: an int64 that fits a word shares the slab's
// word as its digits.
type intSlab struct {
	ints  []big.Int
	words []big.Word
}

func newIntSlab(n int) intSlab {
	return intSlab{ints: make([]big.Int, n), words: make([]big.Word, n)}
}

// int returns a as a *big.Int of its own.
func (s *intSlab) int(a amount) *big.Int {
	if a.big != nil {
		return a.big
	}
	if len(s.ints) == 0 || len(s.words) == 0 {
		return big.NewInt(a.n)
	}
	z := &s.ints[0]
	s.ints = s.ints[1:]
	if a.n >= 0 && uint64(a.n) <= uint64(^big.Word(0)) {
		s.words[0] = big.Word(a.n)
		z.SetBits(s.words[:1:1]) // capacity 1: growing z copies, never reaching the next word
		s.words = s.words[1:]
		return z
	}
	return z.SetInt64(a.n)
}

// rowDecoder reads the columns of a row from their wire bytes: int4,
// int8, timestamptz, text and integral numeric in the binary format pgx
// asks for, without the allocations of Scan; any other type or format
// (a connection in the simple protocol) through the connection's type
// map, as Scan would.
type rowDecoder struct {
	m   *pgtype.Map
	fds []pgconn.FieldDescription
}

// scan decodes column i of raw into dst through the type map.
func (d rowDecoder) scan(raw [][]byte, i int, dst any) error {
	fd := d.fds[i]
	if err := d.m.Scan(fd.DataTypeOID, fd.Format, raw[i], dst); err != nil {
		return fmt.Errorf("column %s: %w", fd.Name, err)
	}
	return nil
}

// binary reports whether column i is sent in the binary format as oid.
func (d rowDecoder) binary(i int, oid uint32) bool {
	return d.fds[i].Format == pgx.BinaryFormatCode && d.fds[i].DataTypeOID == oid
}

// int decodes an integer column; NULL is 0.
func (d rowDecoder) int(raw [][]byte, i int) (int64, error) {
	b := raw[i]
	switch {
	case b == nil:
		return 0, nil
	case len(b) == 4 && d.binary(i, pgtype.Int4OID):
		return int64(int32(binary.BigEndian.Uint32(b))), nil
	case len(b) == 8 && d.binary(i, pgtype.Int8OID):
		return int64(binary.BigEndian.Uint64(b)), nil
	}
	var n pgtype.Int8
	err := d.scan(raw, i, &n)
	return n.Int64, err
}

// microsFromUnixToY2K is 2000-01-01T00:00:00Z, Postgres's epoch, in
// microseconds of the Unix epoch.
const microsFromUnixToY2K = 946684800 * 1000000

// time decodes a timestamptz column.
func (d rowDecoder) time(raw [][]byte, i int) (pgtype.Timestamptz, error) {
	b := raw[i]
	if b == nil {
		return pgtype.Timestamptz{}, nil
	}
	if len(b) == 8 && d.binary(i, pgtype.TimestamptzOID) {
		// Past the infinities' sentinels, which the type map decodes.
		if us := int64(binary.BigEndian.Uint64(b)); us != math.MaxInt64 && us != math.MinInt64 {
			t := time.Unix(microsFromUnixToY2K/1000000+us/1000000, (microsFromUnixToY2K%1000000*1000)+(us%1000000*1000))
			return pgtype.Timestamptz{Time: t, Valid: true}, nil
		}
	}
	var t pgtype.Timestamptz
	err := d.scan(raw, i, &t)
	return t, err
}

// text decodes a text column.
func (d rowDecoder) text(raw [][]byte, i int) (pgtype.Text, error) {
	b := raw[i]
	if b == nil {
		return pgtype.Text{}, nil
	}
	if d.fds[i].DataTypeOID == pgtype.TextOID {
		return pgtype.Text{String: string(b), Valid: true}, nil // the same bytes in either format
	}
	var t pgtype.Text
	err := d.scan(raw, i, &t)
	return t, err
}

// amount decodes a numeric column as NumericInt reads it (NULL is 0, a
// fraction is cut toward zero).
func (d rowDecoder) amount(raw [][]byte, i int) (amount, error) {
	b := raw[i]
	if b == nil {
		return amount{}, nil
	}
	if d.binary(i, pgtype.NumericOID) {
		if n, ok := numericInt64(b); ok {
			return amount{n: n}, nil
		}
	}
	var n pgtype.Numeric
	if err := d.scan(raw, i, &n); err != nil {
		return amount{}, err
	}
	v := NumericInt(n)
	if v.IsInt64() {
		return amount{n: v.Int64()}, nil
	}
	return amount{big: v}, nil
}

// numericInt64 reads a numeric in Postgres's binary format (digit count,
// weight, sign, display scale, then base-10000 digits, most significant
// first, the first of weight 10000^weight) when it is an integer that
// fits an int64; ok is false for anything else (a fraction, NaN, an
// infinity, a larger integer), which the caller decodes the slow way.
func numericInt64(b []byte) (n int64, ok bool) {
	if len(b) < 8 {
		return 0, false
	}
	ndigits := int(binary.BigEndian.Uint16(b[0:]))
	weight := int(int16(binary.BigEndian.Uint16(b[2:])))
	sign := binary.BigEndian.Uint16(b[4:])
	if len(b) != 8+2*ndigits || sign != 0 && sign != 0x4000 {
		return 0, false
	}
	if ndigits == 0 {
		return 0, true
	}
	// An integer has no digit below 10000^0, and 10000^5 passes 2^64.
	if weight < ndigits-1 || weight > 4 {
		return 0, false
	}
	var mag uint64
	for i := 0; i <= weight; i++ {
		var digit uint64
		if i < ndigits {
			digit = uint64(binary.BigEndian.Uint16(b[8+2*i:]))
		}
		if digit > 9999 || mag > (math.MaxUint64-digit)/10000 {
			return 0, false
		}
		mag = mag*10000 + digit
	}
	switch {
	case sign == 0 && mag <= math.MaxInt64:
		return int64(mag), true
	case sign == 0x4000 && mag <= 1<<63:
		return int64(-mag), true // -(1<<63) wraps to math.MinInt64
	}
	return 0, false
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

// groupSQL checks q against its meter and returns the CTEs kg, g and km
// over the stored keys of CTE keys (column sk): kg, each key with its
// group key as jsonb (a digest resolved through meter_group_keys), kept
// when the filter matches, with the requested values (grp); g, a number
// for each requested group, from 1; km, stored key to group number. The
// arguments start with $1 tenant, $2 meter, $3 granularity, $4 from and
// $5 to, then the filter's values.
func groupSQL(q MeterQuery) (string, []any, error) {
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
	if len(d.GroupBy) == 0 {
		return `km AS (
		SELECT sk, 1 AS gid FROM keys WHERE sk = ''
	), g AS (
		SELECT '{}'::text[] AS grp, 1 AS gid
	)`, args, nil
	}
	sql := `kg AS (
		SELECT ks.sk, ` + grp + ` AS grp FROM keys ks
		LEFT JOIN meter_group_keys gk ON NOT starts_with(ks.sk, '[') AND gk.meter = $2 AND gk.digest = ks.sk
		CROSS JOIN LATERAL (SELECT CASE WHEN starts_with(ks.sk, '[') THEN ks.sk::jsonb ELSE gk.group_key::jsonb END AS k) j
		WHERE ks.sk <> ''`
	for _, c := range where {
		sql += ` AND ` + c
	}
	sql += `
	), g AS (
		SELECT grp, (row_number() OVER ())::int AS gid FROM (SELECT DISTINCT grp FROM kg) x
	), km AS (
		SELECT kg.sk, g.gid FROM kg JOIN g ON g.grp = kg.grp
	)`
	return sql, args, nil
}

// groupsOfKeysSQL checks q against its meter and returns the statement
// that gives the group of each stored key of its last argument (a text
// array, which the caller appends to the arguments): rows of (stored
// key, group number, group values), for the keys whose group the
// filter keeps.
func groupsOfKeysSQL(q MeterQuery) (string, []any, error) {
	groups, args, err := groupSQL(q)
	if err != nil {
		return "", nil, err
	}
	sql := `WITH keys AS (
		SELECT DISTINCT sk FROM unnest($` + strconv.Itoa(len(args)+1) + `::text[]) AS u(sk)
	), ` + groups + `
	SELECT km.sk, km.gid, g.grp FROM km JOIN g ON g.gid = km.gid`
	// The range's arguments are not all used: Postgres must know their
	// types all the same.
	sql += ` WHERE $1::text IS NOT NULL AND $2::text IS NOT NULL AND $3::text IS NOT NULL AND $4::timestamptz IS NOT NULL AND $5::timestamptz IS NOT NULL`
	return sql, args, nil
}

// meterUsageSQL checks q against its meter and returns the statement that
// answers it (a latest or unique_count meter) and its arguments. The
// statement's rows are (group number, group values, start, value,
// events, kind, latest time, latest id), kind being -1 for a group and
// its values, 0 for a group's window, 1 for a group's total, 3 for the
// total of everything (GROUPING(group, start)). The windows in range
// are one range of the primary key (tenant, meter, granularity,
// window_start, group_key), as are their unique values (meter_uniques'
// key is ordered the same way).
func meterUsageSQL(q MeterQuery) (string, []any, error) {
	groups, args, err := groupSQL(q)
	if err != nil {
		return "", nil, err
	}
	d := q.Meter
	// keys: the distinct group keys of the windows in range.
	sql := `WITH keys AS (
		SELECT DISTINCT group_key AS sk FROM usage_windows
		WHERE tenant = $1 AND meter = $2 AND granularity = $3 AND window_start >= $4 AND window_start < $5
	), ` + groups + `, w AS (
		SELECT km.gid, uw.window_start AS s, uw.value AS v, uw.events AS e, uw.latest_time AS lt, uw.latest_id AS li
		FROM usage_windows uw JOIN km ON km.sk = uw.group_key
		WHERE uw.tenant = $1 AND uw.meter = $2 AND uw.granularity = $3 AND uw.window_start >= $4 AND uw.window_start < $5
	)`
	// The answer: each group of g once (kind -1, with its values), and
	// a's rows, folded here: each (group number, start, value, events,
	// GROUPING(gid, s): 0 a window, 1 a group's total, 3 everything, and
	// for latest the (time, id) of the value). In no order: the caller
	// orders the answer.
	var rows string
	switch d.Aggregation {
	case meter.Latest:
		sql += `, a AS (SELECT w.gid, w.s,
			(array_agg(w.v ORDER BY w.lt DESC NULLS LAST, w.li DESC NULLS LAST, w.v DESC))[1] AS v,
			sum(w.e)::bigint AS e, 0 AS gr,
			(array_agg(w.lt ORDER BY w.lt DESC NULLS LAST, w.li DESC NULLS LAST, w.v DESC))[1] AS lt,
			(array_agg(w.li ORDER BY w.lt DESC NULLS LAST, w.li DESC NULLS LAST, w.v DESC))[1] AS li
		FROM w GROUP BY w.gid, w.s)`
		rows = `SELECT gid, NULL::text[], s, v, e, gr, lt, li FROM a`
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
		rows = `SELECT gid, NULL::text[], s, v, e, gr, lt, li FROM a`
	default:
		// Sum, count and max are read as stored (storedUsage); folded
		// here when asked all the same.
		fold := "sum"
		if d.Aggregation == meter.Max {
			fold = "max"
		}
		sql += `, a AS (SELECT w.gid, w.s, ` + fold + `(w.v) AS v, sum(w.e)::bigint AS e FROM w GROUP BY w.gid, w.s)`
		rows = `SELECT gid, NULL::text[], s, v, e, 0, NULL::timestamptz, NULL::text FROM a`
	}
	sql += `
	SELECT gid, grp, NULL::timestamptz AS s, NULL::numeric AS v, NULL::bigint AS e, -1 AS gr, NULL::timestamptz AS lt, NULL::text AS li FROM g
	UNION ALL
	` + rows
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
