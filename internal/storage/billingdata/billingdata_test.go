package billingdata_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/storage/billingdata"
	"github.com/usagemeter/metering/internal/storage/deadletters"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

var (
	month = time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)
	now   = time.Date(2026, 10, 20, 12, 0, 0, 0, time.UTC)
)

func intent(identifier, delta string) billingdata.Intent {
	return billingdata.Intent{Tenant: "t1", Metric: "api_calls", Period: month, Billed: month, Customer: "cus_1", EventName: "api_calls",
		Cumulative: delta, Delta: delta, Identifier: identifier, EventTime: now, CreatedAt: now}
}

// record inserts p on its own and returns its id.
func record(t *testing.T, db *pgtest.DB, p billingdata.Intent) int64 {
	t.Helper()
	ctx := context.Background()
	inserted, err := billingdata.InsertIntent(ctx, db.Pool, p)
	if err != nil || !inserted {
		t.Fatalf("InsertIntent(%s): %v, %v", p.Identifier, inserted, err)
	}
	pushes, err := billingdata.Intents(ctx, db.Pool)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range pushes {
		if x.Identifier == p.Identifier {
			return x.ID
		}
	}
	t.Fatalf("intent %s not read back", p.Identifier)
	return 0
}

func status(t *testing.T, db *pgtest.DB, id int64) string {
	t.Helper()
	d, err := billingdata.DeadPushByID(context.Background(), db.Pool, id)
	if err != nil {
		t.Fatal(err)
	}
	return d.Status
}

// The push state machine: intent → sent, intent → dead → intent (replay)
// → sent, dead → discarded, sent → cancelled; a move from a status the
// push no longer has changes nothing.
func TestPushStateMachine(t *testing.T) {
	db := pgtest.New(t)
	ctx := context.Background()
	a, b, c := record(t, db, intent("mu_a", "10")), record(t, db, intent("mu_b", "20")), record(t, db, intent("mu_c", "30"))
	if inserted, err := billingdata.InsertIntent(ctx, db.Pool, intent("mu_a", "10")); err != nil || inserted {
		t.Fatalf("second intent under one identifier: inserted %v, %v", inserted, err)
	}
	if n, d, err := billingdata.CountOpen(ctx, db.Pool); err != nil || n != 3 || d != 0 {
		t.Fatalf("CountOpen: %d intents, %d dead, %v", n, d, err)
	}

	// a is sent: stamped before the call, marked after.
	if ok, err := billingdata.StampSending(ctx, db.Pool, a, billingdata.StatusIntent, now); err != nil || !ok {
		t.Fatalf("StampSending: %v, %v", ok, err)
	}
	if err := billingdata.MarkSent(ctx, db.Pool, a, billingdata.StatusIntent, now, 1); err != nil {
		t.Fatal(err)
	}
	// A slower biller that read a as an intent can neither stamp it nor
	// dead-letter it.
	if ok, err := billingdata.StampSending(ctx, db.Pool, a, billingdata.StatusIntent, now); err != nil || ok {
		t.Fatalf("StampSending a sent push: %v, %v", ok, err)
	}
	if moved, err := billingdata.MarkDead(ctx, db.Pool, a, billingdata.StatusIntent, 1, "late"); err != nil || moved {
		t.Fatalf("MarkDead a sent push: %v, %v", moved, err)
	}
	if s := status(t, db, a); s != billingdata.StatusSent {
		t.Fatalf("a is %s, want sent", s)
	}

	// b and c are dead-lettered.
	for _, id := range []int64{b, c} {
		if moved, err := billingdata.MarkDead(ctx, db.Pool, id, billingdata.StatusIntent, 8, "stripe said no"); err != nil || !moved {
			t.Fatalf("MarkDead %d: %v, %v", id, moved, err)
		}
	}
	dead, err := billingdata.DeadPushes(ctx, db.Pool)
	if err != nil || len(dead) != 2 || dead[0].ID != b || dead[0].Attempts != 8 || dead[0].LastError != "stripe said no" || dead[0].Period != "2026-10" {
		t.Fatalf("DeadPushes: %+v, %v", dead, err)
	}
	if open, err := billingdata.OpenPushes(ctx, db.Pool, false); err != nil || len(open) != 0 {
		t.Fatalf("OpenPushes without dead: %+v, %v", open, err)
	}
	if open, err := billingdata.OpenPushes(ctx, db.Pool, true); err != nil || len(open) != 2 || open[1].ID != c || open[1].Delta != "30" {
		t.Fatalf("OpenPushes with dead: %+v, %v", open, err)
	}

	// b is replayed (dead → intent) then sent; c is discarded.
	move := func(ids []int64, to string) []int64 {
		t.Helper()
		moved, err := billingdata.MoveDead(ctx, db.Pool, deadletters.Change{To: to, IDs: ids})
		if err != nil {
			t.Fatal(err)
		}
		return moved
	}
	if got := fmt.Sprint(move([]int64{a, b}, billingdata.StatusIntent)); got != fmt.Sprint([]int64{b}) {
		t.Fatalf("MoveDead to intent moved %s, want only b", got)
	}
	if ps, err := billingdata.IntentsByID(ctx, db.Pool, []int64{a, b, c}); err != nil || len(ps) != 1 || ps[0].ID != b || ps[0].Attempts != 8 {
		t.Fatalf("IntentsByID: %+v, %v", ps, err)
	}
	if err := billingdata.MarkSent(ctx, db.Pool, b, billingdata.StatusIntent, now, 1); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(move([]int64{c}, billingdata.StatusDiscarded)); got != fmt.Sprint([]int64{c}) {
		t.Fatalf("MoveDead to discarded moved %s", got)
	}
	if got := move([]int64{c}, billingdata.StatusIntent); len(got) != 0 {
		t.Fatalf("a discarded push was replayed: %v", got)
	}

	// a is cancelled in Stripe, under its row lock.
	err = pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		s, err := billingdata.LockStatus(ctx, tx, a)
		if err != nil || s != billingdata.StatusSent {
			return fmt.Errorf("LockStatus: %q, %w", s, err)
		}
		return billingdata.MarkCancelled(ctx, tx, a)
	})
	if err != nil {
		t.Fatal(err)
	}
	for id, want := range map[int64]string{a: billingdata.StatusCancelled, b: billingdata.StatusSent, c: billingdata.StatusDiscarded} {
		if s := status(t, db, id); s != want {
			t.Errorf("push %d is %s, want %s", id, s, want)
		}
	}
	if n, d, err := billingdata.CountOpen(ctx, db.Pool); err != nil || n != 0 || d != 0 {
		t.Fatalf("CountOpen at the end: %d intents, %d dead, %v", n, d, err)
	}
	if _, err := billingdata.DeadPushByID(ctx, db.Pool, 999); !errors.Is(err, billingdata.ErrNoPush) {
		t.Fatalf("DeadPushByID(999): %v, want ErrNoPush", err)
	}
}

// Planning marks a month's open corrections as reconciled only when its
// intent is recorded: InsertIntent says whether it was.
func TestInsertIntentMarksCorrectionsOnlyWhenRecorded(t *testing.T) {
	db := pgtest.New(t)
	ctx := context.Background()
	earlier := time.Date(2026, 9, 30, 0, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		metric     string
		period     time.Time
		reconciled *time.Time
	}{
		{"api_calls", month, nil}, {"api_calls", month, nil}, {"api_calls", month, &earlier},
		{"tokens", month, nil}, {"api_calls", month.AddDate(0, -1, 0), nil},
	} {
		db.Exec(t, `INSERT INTO usage_corrections (tenant, metric, period_start, value, events, reason, reconciled_at)
			VALUES ('t1', $1, $2, 5, 1, 'period_closed', $3)`, c.metric, c.period, c.reconciled)
	}
	db.Exec(t, `INSERT INTO usage_corrections (tenant, metric, period_start, value, events, reason) VALUES ('t2', 'api_calls', $1, 5, 1, 'period_closed')`, month)
	// marked shows each correction as id:open, id:now (marked by this
	// test) or id:before (marked earlier).
	marked := func() string {
		t.Helper()
		var s string
		if err := db.Pool.QueryRow(ctx, `SELECT string_agg(id || ':' || CASE WHEN reconciled_at IS NULL THEN 'open'
				WHEN reconciled_at > now() - interval '1 hour' THEN 'now' ELSE 'before' END, ' ' ORDER BY id) FROM usage_corrections`).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	insert := func(p billingdata.Intent) bool {
		t.Helper()
		var inserted bool
		err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			var err error
			if inserted, err = billingdata.InsertIntent(ctx, tx, p); err != nil || !inserted {
				return err
			}
			return usagedata.MarkReconciled(ctx, tx, p.Tenant, p.Metric, p.Period)
		})
		if err != nil {
			t.Fatal(err)
		}
		return inserted
	}

	// An intent that conflicts with a push recorded earlier, by another
	// transaction, records nothing and marks nothing.
	record(t, db, intent("mu_old", "5"))
	before := marked()
	if insert(intent("mu_old", "5")) {
		t.Fatal("a conflicting intent was recorded")
	}
	if got := marked(); got != before {
		t.Fatalf("a conflicting intent marked corrections: %s, was %s", got, before)
	}

	// A recorded intent marks the open corrections of its tenant, metric
	// and month, and only those.
	if !insert(intent("mu_new", "10")) {
		t.Fatal("the intent was not recorded")
	}
	if got, want := marked(), "1:now 2:now 3:before 4:open 5:open 6:open"; got != want {
		t.Fatalf("marked %s, want %s", got, want)
	}
}

// An intent whose identifier a concurrent transaction records first waits
// for it, records nothing once it commits, and marks nothing: the
// corrections are marked only by the transaction that recorded the push.
func TestInsertIntentConflictingWithAConcurrentInsert(t *testing.T) {
	db := pgtest.New(t)
	ctx := context.Background()
	db.Exec(t, `INSERT INTO usage_corrections (tenant, metric, period_start, value, events, reason) VALUES ('t1', 'api_calls', $1, 5, 1, 'period_closed')`, month)
	first, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = first.Rollback(ctx) }()
	if inserted, err := billingdata.InsertIntent(ctx, first, intent("mu_race", "5")); err != nil || !inserted {
		t.Fatalf("first insert: %v, %v", inserted, err)
	}
	type result struct {
		inserted bool
		err      error
	}
	done := make(chan result, 1)
	go func() {
		var inserted bool
		err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			var err error
			if inserted, err = billingdata.InsertIntent(ctx, tx, intent("mu_race", "5")); err != nil || !inserted {
				return err
			}
			return usagedata.MarkReconciled(ctx, tx, "t1", "api_calls", month)
		})
		done <- result{inserted, err}
	}()
	select {
	case r := <-done:
		t.Fatalf("the second insert did not wait for the first: %+v", r)
	case <-time.After(300 * time.Millisecond):
	}
	if err := first.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || r.inserted {
		t.Fatalf("second insert: %+v", r)
	}
	var open int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM usage_corrections WHERE reconciled_at IS NULL`).Scan(&open); err != nil || open != 1 {
		t.Fatalf("%d open corrections (%v), want 1: the transaction that recorded nothing marked them", open, err)
	}
}

// Planning's locks: the pair lock and the group lock are held until the
// transaction ends; LockGroup waits for a group locked by planning.
func TestLockAndReadPair(t *testing.T) {
	db := pgtest.New(t)
	ctx := context.Background()
	db.Exec(t, `INSERT INTO usage_windows (tenant, meter, granularity, window_start, value, events) VALUES ('t1', 'api_calls', 'month', $1, 42, 1)`, month)
	record(t, db, intent("mu_a", "10"))
	pair := billingdata.Pair{Tenant: "t1", Metric: "api_calls", Period: month, Customer: "cus_1", EventName: "api_calls", Billed: month}
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	totals, err := billingdata.LockAndReadPair(ctx, tx, pair, true)
	metered, _ := totals.Metered.Int64Value()
	claimed, _ := totals.Claimed.Int64Value()
	if err != nil || metered.Int64 != 42 || claimed.Int64 != 10 || totals.Cancelled != 0 {
		t.Fatalf("LockAndReadPair: %+v, %v", totals, err)
	}
	waitCtx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	err = pgx.BeginFunc(waitCtx, db.Pool, func(other pgx.Tx) error {
		return billingdata.LockGroup(waitCtx, other, "cus_1", "api_calls", month)
	})
	if err == nil {
		t.Fatal("the group lock was taken while planning held it")
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	err = pgx.BeginFunc(ctx, db.Pool, func(other pgx.Tx) error {
		return billingdata.LockGroup(ctx, other, "cus_1", "api_calls", month)
	})
	if err != nil {
		t.Fatalf("the group lock after planning ended: %v", err)
	}
}
