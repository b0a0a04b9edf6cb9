package usagedata

// The dedup ledger is compact (migration 0027): a row holds the event's
// 16-byte key, its primary key (a canonical lower-case UUID id's bytes;
// for any other id the first 16 bytes of the SHA-256 of its tenant, a zero
// byte and the id, with the id itself in id_text), the ref of its
// (tenant, metric) in ledger_names, and the first 8 bytes of its payload
// hash. Whether a row is a (tenant, id) is decided on the key, id_text and
// tenant together, never on the key alone: an event whose key another
// event holds (the same UUID in another tenant, or a digest collision) is
// kept, whole, in ledger_overflow, and every operation here reads and
// writes both tables.
//
// A ledger row has no recorded_at of its own (migration 0034): it is the
// now() of the transaction that counted it, kept once per transaction in
// ledger_batches (by counted_xid), which the trigger ledger_batch_row
// writes after each statement inserting rows; rows counted before 0034
// whose time no batch row gives keep it in ledger_recorded. Readers take
// coalesce(ledger_recorded, ledger_batches), as the view ledger_events
// does.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/storage"
)

// LedgerHashSize is how many bytes of an event's payload hash the ledger
// keeps: the first 8 of its SHA-256 (a differing payload escapes
// detection with probability 2^-64). ReadLedger and LockLedgerRow give
// hashes of this length back; the operations taking hashes keep the
// first LedgerHashSize bytes (a shorter one padded with zero bytes).
const LedgerHashSize = 8

// ledgerKey returns the ledger's key of tenant's event id and what its
// id_text holds: a canonical lower-case UUID's 16 bytes and "", or the
// first 16 bytes of the SHA-256 of tenant, a zero byte and id, and the id.
// It matches the schema's ledger_key and ledger_id_text functions
// (TestLedgerKeyMatchesSchema).
func ledgerKey(tenant, id string) (key [16]byte, text string) {
	if canonicalUUID(id) {
		j := 0
		for i := 0; i < len(id); i += 2 {
			if id[i] == '-' {
				i++
			}
			key[j] = unhex(id[i])<<4 | unhex(id[i+1])
			j++
		}
		return key, ""
	}
	h := sha256.New()
	h.Write([]byte(tenant))
	h.Write([]byte{0})
	h.Write([]byte(id))
	copy(key[:], h.Sum(nil))
	return key, id
}

// canonicalUUID reports whether id is a UUID in its canonical form:
// lower-case hexadecimal digits in groups of 8, 4, 4, 4 and 12.
func canonicalUUID(id string) bool {
	if len(id) != 36 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
				return false
			}
		}
	}
	return true
}

// unhex is the value of a lower-case hexadecimal digit.
func unhex(c byte) byte {
	if c >= 'a' {
		return c - 'a' + 10
	}
	return c - '0'
}

// ledgerHash returns the stored form of a payload hash: its first 8 bytes
// as a big-endian int64, a shorter hash padded with zero bytes (as the
// schema's ledger_hash does).
func ledgerHash(h []byte) int64 {
	var b [LedgerHashSize]byte
	copy(b[:], h)
	return int64(binary.BigEndian.Uint64(b[:]))
}

// hashBytes is the inverse of ledgerHash.
func hashBytes(v int64) []byte {
	return binary.BigEndian.AppendUint64(make([]byte, 0, LedgerHashSize), uint64(v))
}

// ledgerPair is a (tenant, metric) of ledger_names.
type ledgerPair struct{ tenant, metric string }

// ledgerRefs returns the ref of every pair of pairs in ledger_names,
// adding those it lacks. Missing pairs are inserted in sorted order (two
// batches adding pairs cannot deadlock on them) and read back in a
// statement of their own when the insert did not return them all: an
// insert that met a pair another transaction committed meanwhile inserts
// nothing and its snapshot does not see it, the next statement's does. No pair is left without a ref: a missing one
// is an error, never a dropped event.
func ledgerRefs(ctx context.Context, q storage.Executor, pairs []ledgerPair) (map[ledgerPair]int32, error) {
	distinct := slices.Clone(pairs)
	slices.SortFunc(distinct, func(a, b ledgerPair) int {
		if c := strings.Compare(a.tenant, b.tenant); c != 0 {
			return c
		}
		return strings.Compare(a.metric, b.metric)
	})
	distinct = slices.Compact(distinct)
	tenants, metrics := make([]string, len(distinct)), make([]string, len(distinct))
	for i, p := range distinct {
		tenants[i], metrics[i] = p.tenant, p.metric
	}
	refs := make(map[ledgerPair]int32, len(distinct))
	read := func() error {
		rows, err := q.Query(ctx, `SELECT n.tenant, n.metric, n.ref FROM unnest($1::text[], $2::text[]) AS b(t, m)
			JOIN ledger_names n ON n.tenant = b.t AND n.metric = b.m`, tenants, metrics)
		if err != nil {
			return err
		}
		var p ledgerPair
		var ref int32
		_, err = pgx.ForEachRow(rows, []any{&p.tenant, &p.metric, &ref}, func() error { refs[p] = ref; return nil })
		return err
	}
	if err := read(); err != nil {
		return nil, fmt.Errorf("reading ledger names: %w", err)
	}
	if len(refs) == len(distinct) {
		return refs, nil
	}
	var mt, mm []string
	for _, p := range distinct {
		if _, ok := refs[p]; !ok {
			mt, mm = append(mt, p.tenant), append(mm, p.metric)
		}
	}
	// The pairs inserted come back with their refs; only a pair another
	// transaction committed meanwhile needs the second read.
	rows, err := q.Query(ctx, `INSERT INTO ledger_names (tenant, metric)
		SELECT t, m FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS b(t, m, n) ORDER BY n
		ON CONFLICT (tenant, metric) DO NOTHING
		RETURNING tenant, metric, ref`, mt, mm)
	if err != nil {
		return nil, fmt.Errorf("adding ledger names: %w", err)
	}
	var p ledgerPair
	var ref int32
	if _, err := pgx.ForEachRow(rows, []any{&p.tenant, &p.metric, &ref}, func() error { refs[p] = ref; return nil }); err != nil {
		return nil, fmt.Errorf("adding ledger names: %w", err)
	}
	if len(refs) < len(distinct) {
		if err := read(); err != nil {
			return nil, fmt.Errorf("reading ledger names: %w", err)
		}
	}
	for i := range mt {
		if _, ok := refs[ledgerPair{mt[i], mm[i]}]; !ok {
			return nil, fmt.Errorf("ledger names: tenant %q metric %q has no ref after it was added", mt[i], mm[i])
		}
	}
	return refs, nil
}

// LedgerInsert is a batch of events to insert into the dedup ledger, as
// parallel columns (row i is element i of each). Of each payload hash the
// ledger keeps the first LedgerHashSize bytes.
type LedgerInsert struct {
	Tenants, IDs, Metrics []string
	Hashes                [][]byte
	Values                []int64
	Times                 []time.Time
	Partitions            []int32
	Offsets               []int64
}

// ledgerInsertRow is what identifies a row the insert returns.
type ledgerInsertRow struct {
	key  [16]byte
	ref  int32
	text string
}

// InsertLedger inserts the rows of b in one statement (in key order, so
// the primary key's pages fill as ids grow), skipping every (tenant,
// event id) already in the ledger, and calls inserted with the key of
// each row it inserted: the events counted for the first time. Rows whose
// key another event holds are inserted, whole, into ledger_overflow in a
// second statement (run only when some row was not inserted), and count
// as inserted when they were new there.
func InsertLedger(ctx context.Context, q storage.Executor, b *LedgerInsert, inserted func(tenant, id string)) error {
	n := len(b.Tenants)
	if n == 0 {
		return nil
	}
	pairs := make([]ledgerPair, n)
	for i := range n {
		pairs[i] = ledgerPair{b.Tenants[i], b.Metrics[i]}
	}
	refs, err := ledgerRefs(ctx, q, pairs)
	if err != nil {
		return fmt.Errorf("inserting into the ledger: %w", err)
	}
	keys, texts := make([][16]byte, n), make([]string, n)
	for i := range n {
		if b.Partitions[i] < 0 || b.Partitions[i] > math.MaxInt16 {
			return fmt.Errorf("inserting into the ledger: partition %d out of the ledger's range [0, %d]", b.Partitions[i], math.MaxInt16)
		}
		keys[i], texts[i] = ledgerKey(b.Tenants[i], b.IDs[i])
	}
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(x, y int) int { return bytes.Compare(keys[x][:], keys[y][:]) })
	sk, st := make([][16]byte, n), make([]string, n)
	sr, sp := make([]int32, n), make([]int16, n)
	sh, sv, so := make([]int64, n), make([]int64, n), make([]int64, n)
	stimes := make([]time.Time, n)
	index := make(map[ledgerInsertRow]int, n)
	for j, i := range order {
		sk[j], st[j], sr[j], sp[j] = keys[i], texts[i], refs[pairs[i]], int16(b.Partitions[i])
		sh[j], sv[j], so[j], stimes[j] = ledgerHash(b.Hashes[i]), b.Values[i], b.Offsets[i], b.Times[i]
		index[ledgerInsertRow{keys[i], sr[j], texts[i]}] = i
	}
	// The transaction's batch row (its xid and now(), the recorded_at of
	// every row it counts) is written by the trigger ledger_batch_row
	// after the statement (migration 0034).
	rows, err := q.Query(ctx, `INSERT INTO ledger (id, id_text, ref, payload_hash, value, event_time, src_partition, src_offset)
		SELECT k, it, r, h, v, ts, p, o
		FROM unnest($1::uuid[], $2::text[], $3::int[], $4::bigint[], $5::bigint[], $6::timestamptz[], $7::smallint[], $8::bigint[])
			AS b(k, it, r, h, v, ts, p, o)
		ON CONFLICT (id) DO NOTHING
		RETURNING id, ref, id_text`, sk, st, sr, sh, sv, stimes, sp, so)
	if err != nil {
		return fmt.Errorf("inserting into the ledger: %w", err)
	}
	done := make([]bool, n)
	count := 0
	var r ledgerInsertRow
	if _, err := pgx.ForEachRow(rows, []any{&r.key, &r.ref, &r.text}, func() error {
		i, ok := index[r]
		if !ok || done[i] {
			return fmt.Errorf("inserted a row the batch does not hold")
		}
		done[i] = true
		count++
		inserted(b.Tenants[i], b.IDs[i])
		return nil
	}); err != nil {
		return fmt.Errorf("inserting into the ledger: %w", err)
	}
	if count == n {
		return nil
	}
	return insertOverflow(ctx, q, b, done, keys, texts, inserted)
}

// insertOverflow inserts into ledger_overflow the rows of b not done whose
// key the ledger holds for another event (another tenant's, or another
// id's), and calls inserted with those new there. It runs as a statement
// of its own, so it sees the ledger rows that concurrent batches
// committed while the insert waited for them.
func insertOverflow(ctx context.Context, q storage.Executor, b *LedgerInsert, done []bool, keys [][16]byte, texts []string,
	inserted func(tenant, id string)) error {
	var (
		ks         [][16]byte
		ts, is, ms []string
		its        []string
		hs, vs, os []int64
		times      []time.Time
		ps         []int32
	)
	for i := range done {
		if done[i] {
			continue
		}
		ks, its = append(ks, keys[i]), append(its, texts[i])
		ts, is, ms = append(ts, b.Tenants[i]), append(is, b.IDs[i]), append(ms, b.Metrics[i])
		hs, vs, os = append(hs, ledgerHash(b.Hashes[i])), append(vs, b.Values[i]), append(os, b.Offsets[i])
		times, ps = append(times, b.Times[i]), append(ps, b.Partitions[i])
	}
	rows, err := q.Query(ctx, `INSERT INTO ledger_overflow (tenant, event_id, payload_hash, metric, value, event_time, src_partition, src_offset)
		SELECT t, i, h, m, v, ts, p, o
		FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::bigint[], $8::timestamptz[], $9::int[], $10::bigint[])
			AS b(k, it, t, i, h, m, v, ts, p, o)
		WHERE NOT EXISTS (SELECT 1 FROM ledger l JOIN ledger_names n ON n.ref = l.ref
			WHERE l.id = b.k AND l.id_text = b.it AND n.tenant = b.t)
		ON CONFLICT (tenant, event_id) DO NOTHING
		RETURNING tenant, event_id`, ks, its, ts, is, hs, ms, vs, times, ps, os)
	if err != nil {
		return fmt.Errorf("inserting into the ledger's overflow: %w", err)
	}
	var tenant, id string
	if _, err := pgx.ForEachRow(rows, []any{&tenant, &id}, func() error { inserted(tenant, id); return nil }); err != nil {
		return fmt.Errorf("inserting into the ledger's overflow: %w", err)
	}
	return nil
}

// LedgerRow is the counted event of one (tenant, event id).
type LedgerRow struct {
	// Hash is the payload hash the ledger keeps: LedgerHashSize bytes.
	Hash   []byte
	Metric string
	Value  int64
	At     time.Time
	// Recorded is when the event was counted (recorded_at).
	Recorded time.Time
}

// ledgerKeys returns the keys and id_texts of (tenants[i], ids[i]).
func ledgerKeys(tenants, ids []string) ([][16]byte, []string) {
	keys, texts := make([][16]byte, len(ids)), make([]string, len(ids))
	for i, id := range ids {
		keys[i], texts[i] = ledgerKey(tenants[i], id)
	}
	return keys, texts
}

// ReadLedger reads the ledger rows of the keys (tenants[i], ids[i]) in
// one round trip and calls row with each found; keys not in the ledger
// are skipped. With lock it locks the rows FOR UPDATE in key order (the
// ledger's, then the overflow's), so concurrent transactions locking
// overlapping keys take turns instead of deadlocking.
func ReadLedger(ctx context.Context, q storage.Executor, tenants, ids []string, lock bool, row func(tenant, id string, r LedgerRow)) error {
	if len(tenants) == 0 {
		return nil
	}
	keys, texts := ledgerKeys(tenants, ids)
	main := `SELECT b.n, l.payload_hash, n.metric, l.value, l.event_time, coalesce(s.recorded_at, lb.recorded_at)
		FROM unnest($1::text[], $2::uuid[], $3::text[]) WITH ORDINALITY AS b(t, k, it, n)
		JOIN ledger l ON l.id = b.k AND l.id_text = b.it
		JOIN ledger_names n ON n.ref = l.ref AND n.tenant = b.t
		LEFT JOIN ledger_recorded s ON s.id = l.id
		LEFT JOIN ledger_batches lb ON lb.counted_xid = l.counted_xid`
	over := `SELECT b.n, o.payload_hash, o.metric, o.value, o.event_time, o.recorded_at
		FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS b(t, i, n)
		JOIN ledger_overflow o ON o.tenant = b.t AND o.event_id = b.i`
	if lock {
		main += ` ORDER BY l.id FOR UPDATE OF l`
		over += ` ORDER BY o.tenant, o.event_id FOR UPDATE OF o`
	}
	batch := &pgx.Batch{}
	batch.Queue(main, tenants, keys, texts)
	batch.Queue(over, tenants, ids)
	res := q.SendBatch(ctx, batch)
	defer res.Close()
	var n, hash int64
	var r LedgerRow
	found := func() error {
		r.Hash = hashBytes(hash)
		i := int(n - 1)
		row(tenants[i], ids[i], r)
		return nil
	}
	for range 2 {
		rows, err := res.Query()
		if err != nil {
			return fmt.Errorf("reading the ledger: %w", err)
		}
		if _, err := pgx.ForEachRow(rows, []any{&n, &hash, &r.Metric, &r.Value, &r.At, &r.Recorded}, found); err != nil {
			return fmt.Errorf("reading the ledger: %w", err)
		}
	}
	if err := res.Close(); err != nil {
		return fmt.Errorf("reading the ledger: %w", err)
	}
	return nil
}

// LockLedgerRow reads and locks (FOR UPDATE) the ledger row of tenant's
// event id; ok is false when the ledger holds none (never counted, or
// forgotten by retention).
func LockLedgerRow(ctx context.Context, q storage.Executor, tenant, id string) (r LedgerRow, ok bool, err error) {
	key, text := ledgerKey(tenant, id)
	var hash int64
	err = q.QueryRow(ctx, `SELECT l.payload_hash, n.metric, l.value, l.event_time
		FROM ledger l JOIN ledger_names n ON n.ref = l.ref
		WHERE l.id = $2 AND l.id_text = $3 AND n.tenant = $1 FOR UPDATE OF l`, tenant, key, text).Scan(&hash, &r.Metric, &r.Value, &r.At)
	if errors.Is(err, pgx.ErrNoRows) {
		err = q.QueryRow(ctx, `SELECT payload_hash, metric, value, event_time FROM ledger_overflow WHERE tenant = $1 AND event_id = $2 FOR UPDATE`,
			tenant, id).Scan(&hash, &r.Metric, &r.Value, &r.At)
	}
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return LedgerRow{}, false, nil
	case err != nil:
		return LedgerRow{}, false, fmt.Errorf("locking the ledger row of tenant %q id %q: %w", tenant, id, err)
	}
	r.Hash = hashBytes(hash)
	return r, true, nil
}

// RaiseLedger sets, in one statement, the value and payload hash of the
// ledger rows (tenants[i], ids[i]) to values[i] and hashes[i]: the
// counted event of each key becomes the resend that raised it. Callers
// raise only rows they locked (ReadLedger with lock) and only to a larger
// value.
func RaiseLedger(ctx context.Context, q storage.Executor, tenants, ids []string, values []int64, hashes [][]byte) error {
	if len(tenants) == 0 {
		return nil
	}
	keys, texts := ledgerKeys(tenants, ids)
	hs := make([]int64, len(hashes))
	for i, h := range hashes {
		hs[i] = ledgerHash(h)
	}
	if _, err := q.Exec(ctx, `WITH b AS (SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::text[], $5::bigint[], $6::bigint[]) AS b(t, i, k, it, v, h)),
		compact AS (UPDATE ledger l SET value = b.v, payload_hash = b.h FROM b
			WHERE l.id = b.k AND l.id_text = b.it AND EXISTS (SELECT 1 FROM ledger_names n WHERE n.ref = l.ref AND n.tenant = b.t))
		UPDATE ledger_overflow o SET value = b.v, payload_hash = b.h FROM b WHERE o.tenant = b.t AND o.event_id = b.i`,
		tenants, ids, keys, texts, values, hs); err != nil {
		return fmt.Errorf("raising counted events in the ledger: %w", err)
	}
	return nil
}

// RaiseLedgerRow sets the value and payload hash of tenant's event id in
// the ledger, as RaiseLedger does for one row.
func RaiseLedgerRow(ctx context.Context, q storage.Executor, tenant, id string, value int64, hash []byte) error {
	if err := RaiseLedger(ctx, q, []string{tenant}, []string{id}, []int64{value}, [][]byte{hash}); err != nil {
		return fmt.Errorf("raising the counted event of tenant %q id %q: %w", tenant, id, err)
	}
	return nil
}
