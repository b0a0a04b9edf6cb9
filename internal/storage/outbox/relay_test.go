package outbox_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/storage/outbox"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// queue enqueues msgs in a transaction of their own.
func queue(t *testing.T, db *pgtest.DB, msgs ...outbox.Message) {
	t.Helper()
	if err := pgx.BeginFunc(context.Background(), db.Pool, func(tx pgx.Tx) error {
		return outbox.Enqueue(context.Background(), tx, msgs...)
	}); err != nil {
		t.Fatal(err)
	}
}

// eligible returns the ids and values Eligible picks now.
func eligible(t *testing.T, db *pgtest.DB, limit int) ([]outbox.Pending, string) {
	t.Helper()
	var rows []outbox.Pending
	if err := pgx.BeginFunc(context.Background(), db.Pool, func(tx pgx.Tx) error {
		var err error
		rows, err = outbox.Eligible(context.Background(), tx, limit)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var vals []string
	for _, r := range rows {
		vals = append(vals, string(r.Record.Value))
	}
	return rows, strings.Join(vals, " ")
}

func counts(t *testing.T, db *pgtest.DB) string {
	t.Helper()
	pending, parked, err := outbox.Counts(context.Background(), db.Pool)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("pending %d, parked %d", pending, parked)
}

// TestRoundOperations walks rows through the relay's operations: what is
// eligible, how failures hold back a key and park, what Unpark and Prune
// touch.
func TestRoundOperations(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	queue(t, db,
		outbox.Message{Topic: "quota.breaches", Key: []byte("acme"), Value: []byte("a1"), Headers: map[string]string{"z": "1", "a": "2"}},
		outbox.Message{Topic: "quota.breaches", Key: []byte("globex"), Value: []byte("g1")},
		outbox.Message{Topic: "quota.breaches", Key: []byte("acme"), Value: []byte("a2")},
		outbox.Message{Topic: "usage.events.dlq", Key: nil, Value: []byte("d1")},
	)
	rows, vals := eligible(t, db, 10)
	if vals != "a1 g1 a2 d1" {
		t.Fatalf("eligible %q, want every row in id order", vals)
	}
	if h := rows[0].Record.Headers; len(h) != 2 || h[0].Key != "a" || string(h[0].Value) != "2" || h[1].Key != "z" {
		t.Errorf("headers %+v, want sorted by name", h)
	}
	if _, vals := eligible(t, db, 2); vals != "a1 g1" {
		t.Errorf("eligible with limit 2: %q", vals)
	}
	a1, g1, a2, d1 := rows[0].ID, rows[1].ID, rows[2].ID, rows[3].ID

	// a1 fails in an outage (not counted), g1 is published: acme waits.
	if err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		if parked, err := outbox.RecordFailures(ctx, tx, []int64{a1}, []string{"leader away"}, time.Hour, 1, false); err != nil || len(parked) != 0 {
			return fmt.Errorf("RecordFailures uncounted = %+v, %w", parked, err)
		}
		return outbox.MarkPublished(ctx, tx, []int64{g1})
	}); err != nil {
		t.Fatal(err)
	}
	if _, vals := eligible(t, db, 10); vals != "d1" {
		t.Fatalf("eligible %q, want acme's rows held back behind a1", vals)
	}
	if got := counts(t, db); got != "pending 3, parked 0" {
		t.Errorf("counts: %s", got)
	}
	// Counted, at maxAttempts 1: parked with its reason; a2 is free.
	var parked []outbox.Failed
	if err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		var err error
		parked, err = outbox.RecordFailures(ctx, tx, []int64{a1}, []string{"leader away"}, 0, 1, true)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if len(parked) != 1 || parked[0].ID != a1 || parked[0].Attempts != 1 || parked[0].Bytes != 2 || string(parked[0].Key) != "acme" ||
		parked[0].Reason != "failed 1 attempts, the last: leader away" {
		t.Fatalf("parked %+v", parked)
	}
	if err := outbox.Park(ctx, db.Pool, d1, "too large"); err != nil {
		t.Fatal(err)
	}
	if _, vals := eligible(t, db, 10); vals != "a2" {
		t.Fatalf("eligible %q, want a2 only", vals)
	}
	list, err := outbox.ListParked(ctx, db.Pool)
	if err != nil || len(list) != 2 || list[0].ID != a1 || list[1].ID != d1 || list[1].LastError != "too large" || list[1].Attempts != 1 {
		t.Fatalf("ListParked = %+v, %v", list, err)
	}
	if got := counts(t, db); got != "pending 1, parked 2" {
		t.Errorf("counts: %s", got)
	}
	// Unpark one: back in line, ahead of a2, with no attempt counted.
	if n, err := outbox.Unpark(ctx, db.Pool, a1); err != nil || n != 1 {
		t.Fatalf("Unpark(a1) = %d, %v", n, err)
	}
	rows, vals = eligible(t, db, 10)
	if vals != "a1 a2" || rows[0].Attempts != 0 {
		t.Fatalf("after Unpark(a1): %q, %+v", vals, rows)
	}
	if n, err := outbox.Unpark(ctx, db.Pool); err != nil || n != 1 {
		t.Fatalf("Unpark() = %d, %v; want the other parked row", n, err)
	}

	// Prune deletes published rows older than keep, nothing else.
	if err := outbox.MarkPublished(ctx, db.Pool, []int64{a1, a2}); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `UPDATE outbox SET published_at = now() - interval '2 hours' WHERE id = ANY($1)`, []int64{g1, a1})
	if n, err := outbox.Prune(ctx, db.Pool, time.Hour); err != nil || n != 2 {
		t.Fatalf("Prune = %d, %v; want g1 and a1", n, err)
	}
	var left []int64
	if err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		rs, err := tx.Query(ctx, `SELECT id FROM outbox ORDER BY id`)
		if err != nil {
			return err
		}
		left, err = pgx.CollectRows(rs, pgx.RowTo[int64])
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(left) != fmt.Sprint([]int64{a2, d1}) {
		t.Fatalf("rows left %v, want a2 (published recently) and d1 (pending)", left)
	}
}

func TestLockRoundIsExclusive(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if mine, err := outbox.LockRound(ctx, tx); err != nil || !mine {
		t.Fatalf("first LockRound = %v, %v", mine, err)
	}
	other := func() bool {
		var mine bool
		if err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			var err error
			mine, err = outbox.LockRound(ctx, tx)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return mine
	}
	if other() {
		t.Fatal("a second transaction took the round lock")
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if !other() {
		t.Fatal("the round lock outlived its transaction")
	}
}
