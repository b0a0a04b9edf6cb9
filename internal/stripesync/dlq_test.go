package stripesync_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/usagemeter/metering/internal/stripesync"
	"github.com/usagemeter/metering/internal/testkit/stripefake"
)

func TestPermanentErrorLandsInTheDLQAndReplayDrainsIt(t *testing.T) {
	f := newFixture(t, 2, stripefake.Config{})
	ctx := context.Background()
	f.meter("t1", "api_calls", 10)
	f.meter("t2", "api_calls", 20)
	f.fake.SetReject(func(_, customer string) bool { return customer == "cus_t1" })
	res, err := f.biller.Sync(ctx)
	if err != nil || res.Dead != 1 || res.Sent != 1 {
		t.Fatalf("sync: %+v, %v", res, err)
	}
	dead, err := f.biller.DeadLetters(ctx)
	if err != nil || len(dead) != 1 || dead[0].Tenant != "t1" || dead[0].Attempts != 1 || dead[0].LastError == "" {
		t.Fatalf("DLQ: %+v, %v", dead, err)
	}
	// `biller dlq show ID` reads the same record; an unknown id is ErrNotDead.
	if one, err := f.biller.DeadLetter(ctx, dead[0].ID); err != nil || one.Identifier != dead[0].Identifier || one.Status != "dead" {
		t.Fatalf("DeadLetter(%d): %+v, %v", dead[0].ID, one, err)
	}
	if _, err := f.biller.DeadLetter(ctx, dead[0].ID+1000); !errors.Is(err, stripesync.ErrNotDead) {
		t.Fatalf("DeadLetter of an unknown id: %v", err)
	}
	// The billing.dlq message waits in the outbox with what on-call needs.
	var msg []byte
	if err := f.db.Pool.QueryRow(ctx, `SELECT msg_value FROM outbox WHERE topic = 'billing.dlq'`).Scan(&msg); err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	_ = json.Unmarshal(msg, &m)
	for _, k := range []string{"tenant", "metric", "period", "value", "identifier", "attempts", "last_error"} {
		if _, ok := m[k]; !ok {
			t.Errorf("billing.dlq message lacks %s: %s", k, msg)
		}
	}
	// A sync does not re-send it under another identifier.
	if res, _ := f.biller.Sync(ctx); res.Intents != 0 {
		t.Fatalf("sync re-planned dead-lettered usage: %+v", res)
	}
	// Replay before the fix: back to the DLQ.
	if r, err := f.biller.Replay(ctx, []int64{dead[0].ID}, false, "oncall"); err != nil || r.Sent != 0 || r.Dead != 1 {
		t.Fatalf("replay before fix: %+v %v", r, err)
	}
	f.fake.SetReject(nil)
	if r, err := f.biller.Replay(ctx, nil, true, "oncall"); err != nil || r.Sent != 1 || r.Dead != 0 {
		t.Fatalf("replay after fix: %+v %v", r, err)
	}
	if got := f.stripeTotal("t1", "api_calls"); got != 10 {
		t.Fatalf("Stripe %d, want 10", got)
	}
	if r, err := f.biller.Replay(ctx, nil, true, "oncall"); err != nil || r != (stripesync.SendResult{}) {
		t.Fatalf("replay --all of an empty DLQ: %+v %v, want nothing done", r, err)
	}
	if _, err := f.biller.Replay(ctx, []int64{dead[0].ID}, false, "oncall"); !errors.Is(err, stripesync.ErrNotDead) {
		t.Fatalf("replay of a push no longer dead: %v", err)
	}
	var audits int
	_ = f.db.Pool.QueryRow(ctx, `SELECT count(*) FROM audit_log WHERE action = 'dlq.billing.replay' AND actor = 'oncall' AND target LIKE 'billing_push:%'`).Scan(&audits)
	if audits != 2 {
		t.Fatalf("%d replays audited, want 2", audits)
	}
}

func TestReplayingAPushThatDidSucceedChangesNothing(t *testing.T) {
	// Every call reaches Stripe, which records the event, then never answers.
	f := newFixture(t, 1, stripefake.Config{FaultRate: 1, Faults: []string{stripefake.FaultTimeout}})
	ctx := context.Background()
	f.meter("t1", "tokens", 77)
	res, err := f.biller.Sync(ctx)
	if err != nil || res.Dead != 1 {
		t.Fatalf("sync: %+v, %v", res, err)
	}
	if got := f.stripeTotal("t1", "tokens"); got != 77 {
		t.Fatalf("Stripe %d before replay, want 77 (the timeouts came after processing)", got)
	}
	f.fake.SetFaultRate(0)
	if r, err := f.biller.Replay(ctx, nil, true, "oncall"); err != nil || r.Sent != 1 {
		t.Fatalf("replay: %+v %v", r, err)
	}
	if got := f.stripeTotal("t1", "tokens"); got != 77 {
		t.Fatalf("Stripe %d after replay, want 77: no double count", got)
	}
}

func TestDiscardKeepsUsageClaimed(t *testing.T) {
	f := newFixture(t, 1, stripefake.Config{Reject: func(string, string) bool { return true }})
	ctx := context.Background()
	f.meter("t1", "bytes", 5)
	if _, err := f.biller.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	dead, _ := f.biller.DeadLetters(ctx)
	if n, err := f.biller.Discard(ctx, []int64{dead[0].ID}, "oncall", "customer closed"); err != nil || n != 1 {
		t.Fatalf("discard: %d %v", n, err)
	}
	f.fake.SetReject(nil)
	if res, _ := f.biller.Sync(ctx); res.Intents != 0 {
		t.Fatalf("discarded usage re-planned: %+v", res)
	}
	rows, _ := f.biller.Reconcile(ctx, f.now)
	if r := rowsByKey(t, rows)["t1/bytes"]; r.Status != stripesync.StatusDrift || r.Drift.Int64() != 5 {
		t.Fatalf("row %+v %q", r, r.Note)
	}
}
