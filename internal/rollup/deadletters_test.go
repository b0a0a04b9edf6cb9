package rollup_test

import (
	"bytes"
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// TestHostileRecordsListAndReplay: dead letters of records with any bytes
// (a key that is not UTF-8, a NUL key, a null key, a tombstone) are listed
// readably and replayed with their original key and value bytes.
func TestHostileRecordsListAndReplay(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	now := time.Now().UTC()
	agg := rollup.New(db.Pool, rollup.Config{Group: "g", Topic: "usage.events", Logger: slog.New(slog.DiscardHandler)})
	recs := []rollup.Record{
		{Offset: 0, Key: []byte("\xff\xfebad"), Value: []byte("\xc3\x28 not utf-8"), Time: now},
		{Offset: 1, Key: []byte("a\x00b"), Value: nil, Time: now},
		{Offset: 2, Key: nil, Value: []byte(`{"id":"x","tenant":"a\u0000b"}`), Time: now,
			Headers: []rollup.Header{{Key: "h\x00", Value: []byte{0xff}}}},
	}
	if res, err := agg.Apply(ctx, 0, -1, recs); err != nil || res.DeadLettered != 3 {
		t.Fatalf("Apply = %+v, %v", res, err)
	}
	q := rollup.NewDeadLetters(db.Pool)
	list, err := q.List(ctx, "pending", 10)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		key, payload         string
		keyNull, payloadNull bool
	}{
		{key: "hex:fffe626164", payload: "hex:c328206e6f74207574662d38"},
		{key: "hex:610062", payload: "", payloadNull: true},
		{key: "", keyNull: true, payload: `{"id":"x","tenant":"a\u0000b"}`},
	}
	if len(list) != len(want) {
		t.Fatalf("listed %d dead letters, want %d", len(list), len(want))
	}
	for i, w := range want {
		r := list[i]
		if r.Key != w.key || r.KeyNull != w.keyNull || r.Payload != w.payload || r.PayloadNull != w.payloadNull {
			t.Errorf("dead letter %d: key %q (null %v) payload %q (null %v), want %+v", i, r.Key, r.KeyNull, r.Payload, r.PayloadNull, w)
		}
		if rollup.Sanitize(r.Tenant) != r.Tenant || rollup.Sanitize(r.Error) != r.Error {
			t.Errorf("dead letter %d: unsanitised tenant %q or error %q", i, r.Tenant, r.Error)
		}
	}
	done, err := q.Replay(ctx, nil, true, "tester", "hostile")
	if err != nil || len(done) != 3 {
		t.Fatalf("Replay = %v, %v", done, err)
	}
	rows, err := db.Pool.Query(ctx, `SELECT msg_key, msg_value FROM outbox WHERE topic = 'usage.events' ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	i := 0
	for rows.Next() {
		var key, value []byte
		if err := rows.Scan(&key, &value); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(key, recs[i].Key) || (key == nil) != (recs[i].Key == nil) || !bytes.Equal(value, recs[i].Value) {
			t.Errorf("replay %d: key %q value %q, want %q %q", i, key, value, recs[i].Key, recs[i].Value)
		}
		i++
	}
	if i != len(recs) {
		t.Fatalf("%d replays in the outbox, want %d", i, len(recs))
	}
}
