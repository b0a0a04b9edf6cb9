package usagedata

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/storage"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/windows"
)

// Hour packs (migration 0035) are copies of a grouped meter's hour
// windows of one tenant and UTC day, one row per group, that a grouped
// read of hour windows fetches instead of the day's windows: 100 rows
// instead of 2,400 for a day of 100 groups. usage_windows stays the only
// source of truth: a pack is read only while its day is in
// usage_packed_days and not marked in usage_pack_stale, and the triggers
// of usage_windows mark the day of every grouped hour window changed,
// inserted or deleted before the start of yesterday (UTC, the writer's
// now()). The packer packs and repacks only days three or more days old
// (PackHours), so every write to a packed day marks it, unless the
// writing transaction has been open for more than a day, which PackHours
// checks for (ErrOldTransaction).

// packLockKey is the transaction advisory lock every packing transaction
// takes first: packs are written by one transaction at a time, each of
// which reads the windows in statements that start after the previous
// one committed, so a pack never replaces a newer one.
const packLockKey = 7_302_035

// foldsStoredWindows reports whether a read of aggregation agg folds the
// stored windows themselves (sum, count and max: storedUsage), which is
// also what may be packed; a latest or unique_count read is answered by
// SQL from usage_windows (meterUsage).
func foldsStoredWindows(agg meter.Aggregation) bool {
	switch agg {
	case meter.Sum, meter.Count, meter.Max:
		return true
	}
	return false
}

// PackStats is what one PackHours call did.
type PackStats struct {
	// Repacked is how many days marked stale were packed again; Cleared
	// how many were left unpacked (their meter is not packable, or a
	// window cannot be packed: a value past int64, a negative event
	// count, a start not on a whole second).
	Repacked, Cleared int
	// Days is how many new days were packed, Units how many (tenant,
	// meter) of them.
	Days, Units int
	// NextDay is the next new day to pack.
	NextDay time.Time
}

// ErrOldTransaction is returned by PackHours when a transaction of this
// database opened (or prepared) more than a day ago is still open: it may
// write windows of a day old enough to pack without marking it (its now()
// is a day old), so no day is packed until it ends. Sessions of other
// roles show no transaction start to a role without pg_read_all_stats,
// so the check covers them only when the aggregator's role may see them.
var ErrOldTransaction = errors.New("a transaction open for more than a day")

// txExecutor runs statements and starts transactions: a pool or a
// connection.
type txExecutor interface {
	storage.Executor
	Begin(ctx context.Context) (pgx.Tx, error)
}

// PackHours packs grouped hour windows of days three or more days old
// (before the day before yesterday, UTC, the database's clock): first the
// days marked stale since they were packed (at most limit of them; a
// younger marked day waits until it is old enough), then every new day,
// in order, from the day after the last one packed (the first call starts
// at the oldest grouped hour window). Each (tenant, meter,
// day) is packed in a transaction of its own, so a call may stop at any
// point (ctx) and the next one resumes. Only one packer should run at a
// time (the aggregator's leader of the loop "hour-packs"), though two
// cannot corrupt packs: every packing transaction holds packLockKey.
func PackHours(ctx context.Context, db txExecutor, limit int) (PackStats, error) {
	var st PackStats
	packable := map[string]bool{}
	// pack packs u when its meter is packable and clears it otherwise,
	// and reports whether it packed it.
	pack := func(u packKey) (bool, error) {
		ok, seen := packable[u.meter]
		if !seen {
			m, err := accounts.GetMeter(ctx, db, u.meter)
			switch {
			case errors.Is(err, accounts.ErrNotFound):
			case err != nil:
				return false, fmt.Errorf("packing hour windows: reading meter %s: %w", u.meter, err)
			default:
				ok = foldsStoredWindows(meter.Aggregation(m.Aggregation)) && len(m.GroupBy) > 0
			}
			packable[u.meter] = ok
		}
		return packUnit(ctx, db, u, ok)
	}
	if err := checkOldTransactions(ctx, db); err != nil {
		return st, err
	}
	stale, err := staleUnits(ctx, db, limit)
	if err != nil {
		return st, err
	}
	for _, u := range stale {
		packed, err := pack(u)
		if err != nil {
			return st, err
		}
		if packed {
			st.Repacked++
		} else {
			st.Cleared++
		}
	}
	for {
		if err := checkOldTransactions(ctx, db); err != nil {
			return st, err
		}
		day, more, err := nextPackDay(ctx, db)
		if err != nil {
			return st, err
		}
		st.NextDay = day
		if !more {
			return st, nil
		}
		units, err := dayUnits(ctx, db, day)
		if err != nil {
			return st, err
		}
		for _, u := range units {
			packed, err := pack(u)
			if err != nil {
				return st, err
			}
			if packed {
				st.Units++
			}
		}
		if _, err := db.Exec(ctx, `INSERT INTO usage_pack_progress (next_day) VALUES ($1)
			ON CONFLICT (one) DO UPDATE SET next_day = EXCLUDED.next_day`, day.Add(24*time.Hour)); err != nil {
			return st, fmt.Errorf("packing hour windows: recording progress past %s: %w", day.Format(time.DateOnly), err)
		}
		st.Days++
	}
}

// packKey is one (tenant, meter, UTC day) of hour windows.
type packKey struct {
	tenant, meter string
	day           time.Time
}

// checkOldTransactions returns ErrOldTransaction when a transaction of
// this database started or was prepared more than a day ago.
func checkOldTransactions(ctx context.Context, q storage.Executor) error {
	var old bool
	if err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_stat_activity
			WHERE datname = current_database() AND backend_type = 'client backend' AND xact_start < now() - interval '24 hours')
		OR EXISTS (SELECT 1 FROM pg_prepared_xacts WHERE database = current_database() AND prepared < now() - interval '24 hours')`).Scan(&old); err != nil {
		return fmt.Errorf("packing hour windows: looking for old transactions: %w", err)
	}
	if old {
		return fmt.Errorf("packing hour windows: %w", ErrOldTransaction)
	}
	return nil
}

// packHorizonSQL is the start of the day before yesterday (UTC): the
// days before it are three or more days old, the ones PackHours packs.
const packHorizonSQL = `(date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') - interval '48 hours'`

// staleUnits lists at most limit days marked stale and three or more days
// old, oldest mark first.
func staleUnits(ctx context.Context, q storage.Executor, limit int) ([]packKey, error) {
	rows, err := q.Query(ctx, `SELECT tenant, meter, day FROM usage_pack_stale WHERE day < `+packHorizonSQL+`
		ORDER BY marked_at LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("packing hour windows: listing stale days: %w", err)
	}
	us, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (packKey, error) {
		var u packKey
		err := r.Scan(&u.tenant, &u.meter, &u.day)
		return u, err
	})
	if err != nil {
		return nil, fmt.Errorf("packing hour windows: listing stale days: %w", err)
	}
	return us, nil
}

// nextPackDay returns the next new day to pack and whether it is three
// or more days old.
func nextPackDay(ctx context.Context, q storage.Executor) (time.Time, bool, error) {
	var (
		day  *time.Time
		more bool
	)
	err := q.QueryRow(ctx, `WITH n AS (
			SELECT coalesce((SELECT next_day FROM usage_pack_progress),
				(SELECT date_trunc('day', min(window_start) AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
				 FROM usage_windows WHERE granularity = 'hour' AND group_key <> '')) AS day)
		SELECT day, coalesce(day < `+packHorizonSQL+`, false) FROM n`).Scan(&day, &more)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("packing hour windows: finding the next day: %w", err)
	}
	if day == nil {
		return time.Time{}, false, nil
	}
	return day.UTC(), more, nil
}

// dayUnits lists the (tenant, meter) with grouped hour windows on day.
func dayUnits(ctx context.Context, q storage.Executor, day time.Time) ([]packKey, error) {
	rows, err := q.Query(ctx, `SELECT DISTINCT tenant, meter FROM usage_windows
		WHERE granularity = 'hour' AND window_start >= $1 AND window_start < $1 + interval '24 hours' AND group_key <> ''
		ORDER BY tenant, meter`, day)
	if err != nil {
		return nil, fmt.Errorf("packing hour windows: listing %s: %w", day.Format(time.DateOnly), err)
	}
	us, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (packKey, error) {
		u := packKey{day: day}
		err := r.Scan(&u.tenant, &u.meter)
		return u, err
	})
	if err != nil {
		return nil, fmt.Errorf("packing hour windows: listing %s: %w", day.Format(time.DateOnly), err)
	}
	return us, nil
}

// packUnit replaces, in one transaction, u's packs by copies of its
// grouped hour windows as they are now, clears its stale mark, and
// reports whether it packed u: with pack false (the meter is not
// packable), or when a window cannot be packed (readPacks), it leaves u
// unpacked. A writer that marks u while this runs either committed
// before the windows are read (the copy holds its windows) or keeps its
// mark (its mark is new, or it holds the lock on
// the old one, which the mark's deletion waits for and deletes only
// after its commit, before the windows are read).
func packUnit(ctx context.Context, db txExecutor, u packKey, pack bool) (bool, error) {
	packed := false
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		b.Queue(`SELECT pg_advisory_xact_lock($1)`, int64(packLockKey))
		b.Queue(`DELETE FROM usage_pack_stale WHERE tenant = $1 AND meter = $2 AND day = $3`, u.tenant, u.meter, u.day)
		b.Queue(`DELETE FROM usage_packed_days WHERE tenant = $1 AND meter = $2 AND day = $3`, u.tenant, u.meter, u.day)
		b.Queue(`DELETE FROM usage_hour_packs WHERE tenant = $1 AND meter = $2 AND day = $3`, u.tenant, u.meter, u.day)
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return err
		}
		if !pack {
			return nil
		}
		keys, packs, ok, err := readPacks(ctx, tx, u)
		if err != nil || !ok || len(keys) == 0 {
			return err
		}
		packed = true
		_, err = tx.Exec(ctx, `WITH p AS (
				INSERT INTO usage_hour_packs (tenant, meter, day, group_key, windows)
				SELECT $1, $2, $3, k, w FROM unnest($4::text[], $5::bytea[]) AS x(k, w)
				RETURNING 1)
			INSERT INTO usage_packed_days (tenant, meter, day, groups) SELECT $1, $2, $3, count(*) FROM p`,
			u.tenant, u.meter, u.day, keys, packs)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("packing hour windows of %s, meter %s, on %s: %w", u.tenant, u.meter, u.day.Format(time.DateOnly), err)
	}
	return packed, nil
}

// readPacks reads u's grouped hour windows and encodes each group's
// (appendPackedWindow); ok is false when one cannot be packed: a value
// past int64, a negative event count, or a start that is not a whole
// second of the day (none is written so; such a day is read from its
// windows).
func readPacks(ctx context.Context, q storage.Executor, u packKey) (keys []string, packs [][]byte, ok bool, err error) {
	rows, err := q.Query(ctx, `SELECT group_key, window_start, value, events FROM usage_windows
		WHERE tenant = $1 AND meter = $2 AND granularity = 'hour'
		  AND window_start >= $3 AND window_start < $3 + interval '24 hours' AND group_key <> ''
		ORDER BY group_key, window_start`, u.tenant, u.meter, u.day)
	if err != nil {
		return nil, nil, false, err
	}
	defer rows.Close()
	dec := rowDecoder{m: rows.Conn().TypeMap(), fds: rows.FieldDescriptions()}
	day := u.day.UnixMicro()
	for rows.Next() {
		raw := rows.RawValues()
		if len(raw) != 4 || raw[0] == nil {
			return nil, nil, false, fmt.Errorf("a window row of %d columns", len(raw))
		}
		start, err := dec.time(raw, 1)
		if err != nil {
			return nil, nil, false, err
		}
		v, err := dec.amount(raw, 2)
		if err != nil {
			return nil, nil, false, err
		}
		events, err := dec.int(raw, 3)
		if err != nil {
			return nil, nil, false, err
		}
		off := start.Time.UnixMicro() - day
		if v.big != nil || events < 0 || off < 0 || off >= 24*3600*1e6 || off%1e6 != 0 {
			return nil, nil, false, nil
		}
		if n := len(keys); n == 0 || keys[n-1] != string(raw[0]) {
			keys = append(keys, string(raw[0]))
			packs = append(packs, []byte{hourPackVersion})
		}
		packs[len(packs)-1] = appendPackedWindow(packs[len(packs)-1], uint32(off/1e6), v.n, events)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, false, err
	}
	return keys, packs, true, nil
}

// hourPackVersion is the first byte of every pack: the format below.
const hourPackVersion = 1

// appendPackedWindow appends one window to a pack: its start's offset in
// seconds after the day's start, an unsigned varint; its value and its
// events, signed varints (encoding/binary). A pack's windows are in
// order of start.
func appendPackedWindow(dst []byte, offset uint32, value, events int64) []byte {
	dst = binary.AppendUvarint(dst, uint64(offset))
	dst = binary.AppendVarint(dst, value)
	return binary.AppendVarint(dst, events)
}

// packedWindow is one window of a pack: its start's offset in seconds
// after the day's start, its value and its events.
type packedWindow struct {
	offset        uint32
	value, events int64
}

// errBadPack is returned for a pack that is not in the format
// appendPackedWindow writes.
var errBadPack = errors.New("a malformed hour pack")

// decodePack appends the windows of pack p to dst. It accepts exactly
// what hourPackVersion and appendPackedWindow write: starts in
// increasing order within the day, no event count below zero, every
// varint in its shortest form, and no byte left over.
func decodePack(dst []packedWindow, p []byte) ([]packedWindow, error) {
	if len(p) == 0 || p[0] != hourPackVersion {
		return dst, fmt.Errorf("%w: version %v", errBadPack, p[:min(len(p), 1)])
	}
	p = p[1:]
	// read takes n bytes of a varint just decoded, when it was read
	// whole and in its shortest form (an overlong one ends with a zero
	// byte).
	read := func(n int) bool {
		if n <= 0 || n > 1 && p[n-1] == 0 {
			return false
		}
		p = p[n:]
		return true
	}
	last := int64(-1)
	for len(p) > 0 {
		off, n := binary.Uvarint(p)
		ok := read(n)
		var value, events int64
		if ok {
			value, n = binary.Varint(p)
			ok = read(n)
		}
		if ok {
			events, n = binary.Varint(p)
			ok = read(n)
		}
		if !ok {
			return dst, fmt.Errorf("%w: a varint cut short, too long or not in its shortest form", errBadPack)
		}
		if off >= 24*3600 || int64(off) <= last || events < 0 {
			return dst, fmt.Errorf("%w: an offset out of order or range, or a negative event count", errBadPack)
		}
		last = int64(off)
		dst = append(dst, packedWindow{offset: uint32(off), value: value, events: events})
	}
	return dst, nil
}

// packedHoursSQL is storedUsage's statement for hour windows of a grouped
// meter: $1 tenant, $2 meter, $3 'hour', [$4, $5) the starts, $6 the UTC
// days they fall in (packDays). A day packed and not marked stale is read
// from its packs (a row per group: group_key, day, NULL, NULL, the
// pack), every other day of the range from its windows by one range of
// the key each (group_key, window_start, value, events, NULL). One
// statement: one snapshot, in which a pack and its day's mark are seen
// together. The days are an array rather than a
// series so that the planner knows how many there are: a month's read
// is then estimated below the cost at which Postgres compiles it (JIT),
// which took longer than the read itself.
const packedHoursSQL = `WITH clean AS (
		SELECT p.day FROM usage_packed_days p
		WHERE p.tenant = $1 AND p.meter = $2 AND p.day = ANY($6::timestamptz[])
		  AND NOT EXISTS (SELECT 1 FROM usage_pack_stale s WHERE s.tenant = $1 AND s.meter = $2 AND s.day = p.day)
	)
	SELECT w.group_key, w.window_start, w.value, w.events, NULL::bytea AS windows
	FROM unnest($6::timestamptz[]) AS d(day) CROSS JOIN LATERAL (
		SELECT group_key, window_start, value, events FROM usage_windows
		WHERE tenant = $1 AND meter = $2 AND granularity = $3
		  AND window_start >= greatest(d.day, $4) AND window_start < least(d.day + interval '24 hours', $5) AND group_key <> ''
	) w
	WHERE d.day NOT IN (SELECT day FROM clean)
	UNION ALL
	SELECT h.group_key, h.day, NULL, NULL, h.windows
	FROM usage_hour_packs h
	WHERE h.tenant = $1 AND h.meter = $2 AND h.day IN (SELECT day FROM clean)`

// packDays lists the UTC days of the starts in [from, to), from < to.
func packDays(from, to time.Time) []time.Time {
	var days []time.Time
	for d := windows.Day.Start(from); d.Before(to); d = d.Add(24 * time.Hour) {
		days = append(days, d)
	}
	return days
}
