package rollup_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// hostile turns arbitrary bytes into a batch of records of partition 0
// from offset from: valid events mixed with records of every nasty class
// (null, empty, huge, invalid UTF-8, NUL and control characters in keys,
// values, headers and inside JSON fields that decode). It returns the
// records and the offsets that hold valid events.
func hostile(data []byte, from int64) ([]rollup.Record, map[int64]events.Event) {
	rng := rand.New(rand.NewPCG(uint64(len(data)), binary.LittleEndian.Uint64(append(bytes.Clone(data), make([]byte, 8)...))))
	take := func() []byte {
		if len(data) == 0 {
			return nil
		}
		n := min(int(data[0])%40, len(data)-1)
		chunk := data[1 : 1+n]
		data = data[1+n:]
		return chunk
	}
	nasty := func() []byte {
		b := take()
		switch rng.IntN(6) {
		case 0:
			return append(b, 0)
		case 1:
			return append(b, 0xff, 0xfe)
		case 2:
			return append(b, '\x01', '\n', '\x7f')
		case 3:
			return nil
		case 4:
			return []byte{}
		}
		return b
	}
	var recs []rollup.Record
	valid := map[int64]events.Event{}
	n := 1 + rng.IntN(12) + min(len(data)/16, 40)
	for i := range n {
		off := from + int64(i)
		rec := rollup.Record{Partition: 0, Offset: off, Time: now}
		for range rng.IntN(3) {
			rec.Headers = append(rec.Headers, rollup.Header{Key: string(nasty()), Value: nasty()})
		}
		switch kind := rng.IntN(9); kind {
		case 0, 1, 2:
			e := ev(fmt.Sprintf("ok-%d-%d", off, rng.Uint32()), "acme", "api_calls", rng.Int64N(1000), now)
			if kind == 2 {
				e.Properties = map[string]string{"p": string(nasty())} // any text; json escapes it
				e.Source = string(nasty())
			}
			rec.Key, rec.Value = []byte(e.Tenant), e.AppendJSON(nil)
			if kind != 2 {
				valid[off] = e
			}
		case 3:
			rec.Key, rec.Value = nasty(), nil // tombstone
		case 4:
			rec.Key, rec.Value = nasty(), nasty()
		case 5: // JSON that decodes, with NUL and control characters in its fields
			field := []string{"id", "tenant", "metric", "source"}[rng.IntN(4)]
			obj := map[string]string{"id": "x", "tenant": "acme", "metric": "api_calls", "source": "s"}
			obj[field] = "a\u0000b\u0001" + strings.ToValidUTF8(string(take()), "?")
			rec.Key = nasty()
			rec.Value = fmt.Appendf(nil, `{"id":%q,"tenant":%q,"metric":%q,"source":%q,"value":1,"time":%q}`,
				obj["id"], obj["tenant"], obj["metric"], obj["source"], now.Format("2006-01-02T15:04:05Z"))
			rec.Value = bytes.ReplaceAll(rec.Value, []byte(`\x00`), []byte(`\u0000`))
			rec.Value = bytes.ReplaceAll(rec.Value, []byte(`\x01`), []byte(`\u0001`))
		case 6: // huge: 64 KiB, or 1 MiB now and then
			chunk := append([]byte{0}, take()...)
			size := 64 << 10
			if rng.IntN(8) == 0 {
				size = 1 << 20
			}
			rec.Key = nasty()
			rec.Value = bytes.Repeat(chunk, size/len(chunk))
		case 7:
			rec.Key, rec.Value = nasty(), []byte(`{"id":"x","tenant":"`+string(nasty())+`"}`)
		default:
			rec.Key, rec.Value = nasty(), take()
		}
		recs = append(recs, rec)
	}
	return recs, valid
}

// applyHostile applies a hostile batch at the partition's stored offset
// and checks the invariant: the offset ends past the last record, every
// valid event is counted, every record is accounted for, and each dead
// letter holds the record's key, value and headers byte for byte.
func applyHostile(t *testing.T, a *rollup.Aggregator, db *pgtest.DB, data []byte) {
	t.Helper()
	ctx := context.Background()
	from, err := a.NextOffset(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	recs, valid := hostile(data, max(from, 0))
	res, err := a.Apply(ctx, 0, from, recs)
	if err != nil {
		t.Fatalf("Apply of a hostile batch failed (the partition would stall): %v", err)
	}
	last := recs[len(recs)-1].Offset
	if next, _ := a.NextOffset(ctx, 0); next != last+1 || res.NextOffset != last+1 {
		t.Fatalf("offset %d (result %d), want %d past the last record", next, res.NextOffset, last+1)
	}
	if got := res.Counted + res.Duplicates + res.Conflicts + res.DeadLettered; got != len(recs) {
		t.Fatalf("%d of %d records accounted for: %+v", got, len(recs), res)
	}
	for off, e := range valid {
		if n := count(t, db, `SELECT count(*) FROM ledger_events WHERE tenant = $1 AND event_id = $2 AND src_offset = $3`, e.Tenant, e.ID, off); n != 1 {
			t.Fatalf("valid event at offset %d not counted", off)
		}
	}
	byOffset := map[int64]rollup.Record{}
	for _, r := range recs {
		byOffset[r.Offset] = r
	}
	rows, err := db.Pool.Query(ctx, `SELECT source_offset, msg_key, payload, header_keys, header_values, tenant, error
		FROM usage_dlq WHERE source_offset BETWEEN $1 AND $2`, recs[0].Offset, last)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	dead := 0
	for rows.Next() {
		var off int64
		var key, payload []byte
		var hk, hv [][]byte
		var tenant, reason string
		if err := rows.Scan(&off, &key, &payload, &hk, &hv, &tenant, &reason); err != nil {
			t.Fatal(err)
		}
		dead++
		r := byOffset[off]
		if _, ok := valid[off]; ok {
			t.Errorf("valid event at offset %d dead-lettered: %s", off, reason)
		}
		if !bytes.Equal(key, r.Key) || (key == nil) != (r.Key == nil) {
			t.Errorf("offset %d: key %q, want %q", off, key, r.Key)
		}
		if !bytes.Equal(payload, r.Value) || (payload == nil) != (r.Value == nil) {
			t.Errorf("offset %d: payload of %d bytes differs from the record's %d", off, len(payload), len(r.Value))
		}
		if len(hk) != len(r.Headers) || len(hv) != len(r.Headers) {
			t.Fatalf("offset %d: %d/%d headers, want %d", off, len(hk), len(hv), len(r.Headers))
		}
		for i, h := range r.Headers {
			if string(hk[i]) != h.Key || !bytes.Equal(hv[i], h.Value) {
				t.Errorf("offset %d: header %d = %q:%q, want %q:%q", off, i, hk[i], hv[i], h.Key, h.Value)
			}
		}
		if reason == "" || rollup.Sanitize(reason) != reason || rollup.Sanitize(tenant) != tenant {
			t.Errorf("offset %d: unsanitised text tenant %q reason %q", off, tenant, reason)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if dead != res.DeadLettered {
		t.Fatalf("%d dead letters stored, result says %d", dead, res.DeadLettered)
	}
}

// FuzzApplyHostileRecords: whatever bytes records hold, Apply commits the
// batch and the offset moves past its last record. Run the fuzzer with
// go test -fuzz FuzzApplyHostileRecords ./internal/rollup/; the corpus
// it finds is kept in testdata/fuzz.
func FuzzApplyHostileRecords(f *testing.F) {
	for _, seed := range [][]byte{
		nil, {0}, []byte("\x05\xff\xfe\x00\x01\x02"), []byte(`{"id":"a","tenant":"acme"}`),
		bytes.Repeat([]byte{0x03, 0x00, 0xc3, 0x28}, 40), []byte("\x10acme\x00\x00\x00\x00\xed\xa0\x80tenant\x1b[31m"),
	} {
		f.Add(seed)
	}
	a, db := newAgg(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		applyHostile(t, a, db, data)
	})
}

// TestApplyHostileRecordsProperty runs 150 random hostile batches, one
// after another on one partition, through Apply on real Postgres.
func TestApplyHostileRecordsProperty(t *testing.T) {
	t.Parallel()
	a, db := newAgg(t)
	rng := rand.New(rand.NewPCG(1, 2))
	for range 150 {
		data := make([]byte, rng.IntN(256))
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		applyHostile(t, a, db, data)
	}
}

func TestSanitize(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ in, want string }{
		{"acme", "acme"},
		{"a\x00b", `a\x00b`},
		{"\xff\xfe", `\xff\xfe`},
		{"tab\there", `tab\there`},
		{"é ok", "é ok"},
		{`quote " and \ kept`, `quote " and \ kept`},
		{"quote \" and \\ escaped\x00", `quote \" and \\ escaped\x00`},
		{strings.Repeat("x", 2000), strings.Repeat("x", rollup.MaxReasonBytes-3) + "..."},
		{strings.Repeat("\x00", 2000), strings.Repeat(`\x00`, (rollup.MaxReasonBytes-3)/4) + "..."},
	} {
		if got := rollup.Sanitize(tt.in); got != tt.want {
			t.Errorf("Sanitize(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
