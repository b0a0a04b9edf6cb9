package outbox_test

import (
	"context"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/usagemeter/metering/internal/storage/outbox"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// stored is an outbox row as Enqueue left it.
type stored struct {
	topic   string
	key     []byte
	keyNull bool
	value   []byte
	headers map[string]string
}

func TestEnqueue(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	three := []outbox.Message{
		{Topic: "quota.breaches", Key: []byte("acme"), Value: []byte(`{"breach_id":"b1"}`), Headers: map[string]string{"breach-id": "b1"}},
		{Topic: "usage.events.dlq", Key: nil, Value: nil, Headers: map[string]string{"error-class": "undecodable", "source-offset": "7"}},
		{Topic: "billing.dlq", Key: []byte{}, Value: []byte{0, 0xff}, Headers: nil},
	}
	cases := []struct {
		name     string
		calls    [][]outbox.Message // one Enqueue each, in one transaction
		rollback bool
		want     []stored
		notified bool
	}{
		{
			name:  "several messages in one call, in order",
			calls: [][]outbox.Message{three},
			want: []stored{
				{topic: "quota.breaches", key: []byte("acme"), value: []byte(`{"breach_id":"b1"}`), headers: map[string]string{"breach-id": "b1"}},
				{topic: "usage.events.dlq", keyNull: true, value: []byte{}, headers: map[string]string{"error-class": "undecodable", "source-offset": "7"}},
				{topic: "billing.dlq", key: []byte{}, value: []byte{0, 0xff}, headers: map[string]string{}},
			},
			notified: true,
		},
		{
			name:  "two calls in one transaction wake the relay once",
			calls: [][]outbox.Message{three[:1], three[2:]},
			want: []stored{
				{topic: "quota.breaches", key: []byte("acme"), value: []byte(`{"breach_id":"b1"}`), headers: map[string]string{"breach-id": "b1"}},
				{topic: "billing.dlq", key: []byte{}, value: []byte{0, 0xff}, headers: map[string]string{}},
			},
			notified: true,
		},
		{
			name:  "no message: no row, no notification",
			calls: [][]outbox.Message{nil},
		},
		{
			name:     "rolled back: no row, no notification",
			calls:    [][]outbox.Message{three},
			rollback: true,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			db.Exec(t, `TRUNCATE outbox`)
			listener := listen(t, db.Pool)
			tx, err := db.Pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = tx.Rollback(ctx) }()
			for _, msgs := range tc.calls {
				if err := outbox.Enqueue(ctx, tx, msgs...); err != nil {
					t.Fatalf("Enqueue: %v", err)
				}
			}
			if tc.rollback {
				err = tx.Rollback(ctx)
			} else {
				err = tx.Commit(ctx)
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := rows(t, db.Pool); len(got)+len(tc.want) > 0 && !reflect.DeepEqual(got, tc.want) {
				t.Errorf("outbox rows:\n got %+v\nwant %+v", got, tc.want)
			}
			// Notifications arrive in commit order: the sentinel, sent after
			// the transaction ended, comes first unless the transaction
			// notified.
			if _, err := db.Pool.Exec(ctx, `SELECT pg_notify($1, 'sentinel')`, outbox.Channel); err != nil {
				t.Fatal(err)
			}
			var got []string
			for {
				wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				n, err := listener.WaitForNotification(wctx)
				cancel()
				if err != nil {
					t.Fatalf("waiting for notifications (got %q): %v", got, err)
				}
				got = append(got, n.Payload)
				if n.Payload == "sentinel" {
					break
				}
			}
			want := []string{"sentinel"}
			if tc.notified {
				want = []string{"", "sentinel"}
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("notifications on %s: got %q, want %q", outbox.Channel, got, want)
			}
		})
	}
}

// listen returns a connection listening on the relay's channel.
func listen(t *testing.T, pool *pgxpool.Pool) *pgx.Conn {
	t.Helper()
	conn, err := pool.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = conn.Exec(context.Background(), "UNLISTEN *")
		conn.Release()
	})
	if _, err := conn.Exec(context.Background(), "LISTEN "+outbox.Channel); err != nil {
		t.Fatal(err)
	}
	return conn.Conn()
}

func rows(t *testing.T, pool *pgxpool.Pool) []stored {
	t.Helper()
	rs, err := pool.Query(context.Background(), `SELECT topic, msg_key, msg_value, headers FROM outbox ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rs, func(r pgx.CollectableRow) (stored, error) {
		var s stored
		var h []byte
		err := r.Scan(&s.topic, &s.key, &s.value, &h)
		s.keyNull = s.key == nil
		if err == nil {
			err = json.Unmarshal(h, &s.headers)
		}
		return s, err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestOnlyEnqueueWritesTheOutbox keeps the package's first invariant: no
// product code outside this package inserts into the outbox or notifies
// its channel.
func TestOnlyEnqueueWritesTheOutbox(t *testing.T) {
	t.Parallel()
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	self, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path == self || (path != root && strings.HasPrefix(d.Name(), ".")) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, s := range []string{"INSERT INTO outbox", "pg_notify"} {
			if strings.Contains(string(src), s) {
				rel, _ := filepath.Rel(root, path)
				t.Errorf("%s: %q outside the outbox package; queue with outbox.Enqueue", rel, s)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
