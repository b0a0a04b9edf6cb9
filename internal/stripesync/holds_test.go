package stripesync_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/stripeapi"
	"github.com/usagemeter/metering/internal/stripesync"
	"github.com/usagemeter/metering/internal/testkit/stripefake"
)

// holdPlan turns the fixture's plan's hold on anomalies on with factor.
func (f *fixture) holdPlan(factor string) {
	f.t.Helper()
	f.db.Exec(f.t, `UPDATE plan_versions SET hold_on_anomaly = jsonb_build_object('factor', $1::numeric) WHERE plan = 'pro'`, factor)
}

// syncTo meters total and syncs, failing the test on an error.
func (f *fixture) syncTo(total int64) stripesync.SyncResult {
	f.t.Helper()
	f.meter("t1", "api_calls", total)
	res, err := f.biller.Sync(context.Background())
	if err != nil {
		f.t.Fatalf("sync at %d: %v", total, err)
	}
	return res
}

func (f *fixture) auditNotes(action string) []string {
	f.t.Helper()
	rows, err := f.db.Pool.Query(context.Background(), `SELECT actor || ' ' || note FROM audit_log WHERE action = $1 ORDER BY id`, action)
	if err != nil {
		f.t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			f.t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}

func (f *fixture) reconcileRow() stripesync.Row {
	f.t.Helper()
	rows, err := f.biller.Reconcile(context.Background(), f.now)
	if err != nil {
		f.t.Fatal(err)
	}
	for _, r := range rows {
		if r.Tenant == "t1" && r.Metric == "api_calls" {
			return r
		}
	}
	f.t.Fatalf("no reconciliation row of t1/api_calls in %+v", rows)
	return stripesync.Row{}
}

// spike brings t1/api_calls through a normal history (100, +100) to a
// spike (+1100, beyond 10 × the baseline 100) that is held, then a normal
// delta (+50) that waits behind it; it returns the held push.
func spike(t *testing.T, f *fixture) stripesync.HeldPush {
	t.Helper()
	ctx := context.Background()
	if res := f.syncTo(100); res.Sent != 1 || res.Held != 0 {
		t.Fatalf("first push (no history): %+v", res)
	}
	if res := f.syncTo(200); res.Sent != 1 || res.Held != 0 {
		t.Fatalf("a normal delta: %+v", res)
	}
	if res := f.syncTo(1300); res.Intents != 1 || res.Held != 1 || res.Sent != 0 {
		t.Fatalf("the spike: %+v", res)
	}
	if got := f.stripeTotal("t1", "api_calls"); got != 200 {
		t.Fatalf("Stripe %d after the spike, want 200", got)
	}
	// Not planned again, nothing sent.
	if res := f.syncTo(1300); res.Intents != 0 || res.Sent != 0 {
		t.Fatalf("sync after the hold: %+v", res)
	}
	// A normal delta behind it is planned but waits.
	if res := f.syncTo(1350); res.Intents != 1 || res.Held != 0 || res.Sent != 0 {
		t.Fatalf("a delta behind the hold: %+v", res)
	}
	if got := f.stripeTotal("t1", "api_calls"); got != 200 {
		t.Fatalf("Stripe %d with a push held, want 200", got)
	}
	holds, err := f.biller.Holds(ctx)
	if err != nil || len(holds) != 1 {
		t.Fatalf("holds: %+v, %v", holds, err)
	}
	h := holds[0]
	if h.Value != "1100" || h.Cumulative != "1300" || h.Status != "held" || h.Waiting != 1 || !strings.Contains(h.Reason, "baseline 100") {
		t.Fatalf("held push: %+v", h)
	}
	r := f.reconcileRow()
	if r.Status != stripesync.StatusHeld || r.Held.Int64() != 1100 || !strings.Contains(r.Note, "held for approval") {
		t.Fatalf("reconciliation of a held push: %+v", r)
	}
	return h
}

func TestHoldApproveSendsOnceUnderItsIdentifier(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, stripefake.Config{})
	ctx := context.Background()
	f.holdPlan("10")
	h := spike(t, f)

	// A biller killed and started again between the hold and the
	// approval changes nothing: the hold lives in Postgres.
	srv := httptest.NewServer(f.fake)
	defer srv.Close()
	restarted := stripesync.New(f.db.Pool, stripeapi.NewClient("sk_test_123", srv.URL, 300*time.Millisecond), stripesync.Config{
		RatePerSecond: 1000, BackoffMin: time.Millisecond, BackoffMax: 20 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if res, err := restarted.Sync(ctx); err != nil || res.Intents != 0 || res.Sent != 0 {
		t.Fatalf("sync of a restarted biller: %+v, %v", res, err)
	}
	if n := len(f.fake.Events()); n != 2 {
		t.Fatalf("%d events in Stripe, want 2", n)
	}

	if _, err := restarted.ApproveHold(ctx, h.ID, "cli:ops", "  "); err == nil {
		t.Fatal("an approval without a note was accepted")
	}
	res, err := restarted.ApproveHold(ctx, h.ID, "cli:ops", "launch day traffic (OPS-7)")
	if err != nil || res.Sent != 2 {
		t.Fatalf("approve: %+v, %v", res, err)
	}
	if got := f.stripeTotal("t1", "api_calls"); got != 1350 {
		t.Fatalf("Stripe %d after the approval, want 1350", got)
	}
	// The approved push goes out under the identifier it was held with
	// (sends run concurrently: in no set order with the one behind it).
	evs := f.fake.Events()
	found := 0
	for _, e := range evs {
		if e.Identifier == h.Identifier && e.Value == 1100 {
			found++
		}
	}
	if len(evs) != 4 || found != 1 {
		t.Fatalf("events %+v", evs)
	}
	// Twice is refused; later syncs send nothing more.
	if _, err := f.biller.ApproveHold(ctx, h.ID, "cli:ops", "again"); !errors.Is(err, stripesync.ErrNotHeld) {
		t.Fatalf("second approval: %v", err)
	}
	if _, err := f.biller.ApproveHold(ctx, h.ID+1000, "cli:ops", "again"); !errors.Is(err, stripesync.ErrNoHeldPush) {
		t.Fatalf("approval of an unknown push: %v", err)
	}
	if res, err := f.biller.Sync(ctx); err != nil || res.Intents != 0 || res.Sent != 0 || len(f.fake.Events()) != 4 {
		t.Fatalf("sync after the approval: %+v, %v", res, err)
	}
	if got := f.auditNotes("billing.hold.approve"); len(got) != 1 || got[0] != "cli:ops launch day traffic (OPS-7)" {
		t.Fatalf("audit: %q", got)
	}
	if r := f.reconcileRow(); r.Status == stripesync.StatusHeld || r.Held.Sign() != 0 {
		t.Fatalf("reconciliation after the approval: %+v", r)
	}
}

func TestHoldRejectNeverSends(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, stripefake.Config{})
	ctx := context.Background()
	f.holdPlan("10")
	h := spike(t, f)
	res, err := f.biller.RejectHold(ctx, h.ID, "key:k1", "runaway retry loop, not billable (INC-9)")
	if err != nil || res.Sent != 1 {
		t.Fatalf("reject: %+v, %v", res, err)
	}
	// Only the delta behind it went out; the rejected one never does.
	if got := f.stripeTotal("t1", "api_calls"); got != 250 {
		t.Fatalf("Stripe %d after the rejection, want 250", got)
	}
	for _, e := range f.fake.Events() {
		if e.Identifier == h.Identifier {
			t.Fatalf("the rejected push reached Stripe: %+v", e)
		}
	}
	if res, err := f.biller.Sync(ctx); err != nil || res.Intents != 0 || res.Sent != 0 {
		t.Fatalf("sync after the rejection re-planned it: %+v, %v", res, err)
	}
	if got := f.auditNotes("billing.hold.reject"); len(got) != 1 || got[0] != "key:k1 runaway retry loop, not billable (INC-9)" {
		t.Fatalf("audit: %q", got)
	}
	if r := f.reconcileRow(); r.Status != stripesync.StatusDrift || !strings.Contains(r.Note, "1100 discarded") {
		t.Fatalf("reconciliation after the rejection: %+v", r)
	}
	if one, err := f.biller.Hold(ctx, h.ID); err != nil || one.Status != "discarded" || one.Note == "" {
		t.Fatalf("the rejected push: %+v, %v", one, err)
	}
}

func TestPlansWithoutTheOptionNeverHold(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, stripefake.Config{})
	for _, total := range []int64{100, 200, 100_000} {
		if res := f.syncTo(total); res.Sent != 1 || res.Held != 0 {
			t.Fatalf("at %d: %+v", total, res)
		}
	}
	if got := f.stripeTotal("t1", "api_calls"); got != 100_000 {
		t.Fatalf("Stripe %d, want 100000", got)
	}
}

func TestHoldFactorIsADecimalBound(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, stripefake.Config{})
	f.holdPlan("2.5")
	f.syncTo(100) // history: 100
	// 250 is exactly 2.5 × 100: not beyond, sent.
	if res := f.syncTo(350); res.Sent != 1 || res.Held != 0 {
		t.Fatalf("delta at the bound: %+v", res)
	}
	// history 100, 250: median 175; 2.5 × 175 = 437.5, so 438 is held.
	if res := f.syncTo(788); res.Held != 1 || res.Sent != 0 {
		t.Fatalf("delta beyond the bound: %+v", res)
	}
}
