package stripesync_test

import (
	"context"
	"errors"
	"log/slog"
	"math/big"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/price"
	"github.com/usagemeter/metering/internal/storage/billingdata"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/stripeapi"
	"github.com/usagemeter/metering/internal/stripesync"
	"github.com/usagemeter/metering/internal/testkit/stripefake"
	"github.com/usagemeter/metering/internal/windows"
)

// adjust applies an adjustment to t1's api_calls month, as the aggregator does.
func (f *fixture) adjust(id string, amount int64) {
	f.t.Helper()
	if _, err := usagedata.RecordAdjustment(context.Background(), f.db.Pool, usagedata.Adjustment{Tenant: "t1", ID: id, Meter: "api_calls",
		PeriodStart: windows.Month.Start(f.now), Amount: amount, Reason: "test"}); err != nil {
		f.t.Fatal(err)
	}
}

// price moves t1 to a plan whose api_calls quota has price p.
func (f *fixture) price(p string) {
	f.t.Helper()
	f.db.Exec(f.t, `INSERT INTO plans (name) VALUES ('priced')`)
	f.db.Exec(f.t, `INSERT INTO plan_quotas (plan, metric, quota_limit, period, stripe_event_name, price)
		VALUES ('priced', 'api_calls', NULL, 'month', 'api_calls', $1)`, p)
	f.db.Exec(f.t, `UPDATE tenants SET plan = 'priced' WHERE tenant = 't1'`)
}

// agePushes makes every push look sent more than Stripe's 24 hours ago.
func (f *fixture) agePushes() {
	f.t.Helper()
	f.db.Exec(f.t, `UPDATE billing_pushes SET sent_at = sent_at - interval '25 hours', created_at = created_at - interval '25 hours'`)
}

func (f *fixture) credits() []billingdata.Credit {
	f.t.Helper()
	cs, err := billingdata.CreditsOf(context.Background(), f.db.Pool, "t1", windows.Month.Start(f.now))
	if err != nil {
		f.t.Fatal(err)
	}
	return cs
}

func TestAnIncreaseIsPushedAsADelta(t *testing.T) {
	f := newFixture(t, 1, stripefake.Config{})
	ctx := context.Background()
	f.meter("t1", "api_calls", 100)
	if _, err := f.biller.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	f.adjust("a1", 25)
	res, err := f.biller.Sync(ctx)
	if err != nil || res.Intents != 1 || res.Sent != 1 {
		t.Fatalf("sync: %+v, %v", res, err)
	}
	if evs := f.fake.Events(); len(evs) != 2 || evs[1].Value != 25 {
		t.Fatalf("events %+v", evs)
	}
}

func TestADecreaseWithin24HoursCancelsPushes(t *testing.T) {
	f := newFixture(t, 1, stripefake.Config{})
	ctx := context.Background()
	f.meter("t1", "api_calls", 100)
	if _, err := f.biller.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	f.adjust("a1", -30)
	res, err := f.biller.Sync(ctx)
	if err != nil || res.Cancelled != 1 || res.Credited != 0 || res.Sent != 1 {
		t.Fatalf("sync: %+v, %v", res, err)
	}
	if got := f.stripeTotal("t1", "api_calls"); got != 70 {
		t.Fatalf("Stripe total %d, want 70", got)
	}
	if len(f.credits()) != 0 || len(f.fake.BalanceTransactions()) != 0 {
		t.Fatal("a cancellable decrease was credited")
	}
	r := f.reconciled()
	if r.Drift.Sign() != 0 || r.Status != stripesync.StatusOK || len(r.Adjustments) != 1 ||
		r.Adjustments[0].Counterpart != stripesync.CounterpartCancellation || r.Adjustments[0].Identifier != f.fake.Events()[0].Identifier {
		t.Fatalf("reconciliation %+v", r)
	}
}

// reconciled is the reconciliation row of t1's api_calls this month.
func (f *fixture) reconciled() stripesync.Row {
	f.t.Helper()
	rows, err := f.biller.Reconcile(context.Background(), f.now)
	if err != nil {
		f.t.Fatal(err)
	}
	for _, r := range rows {
		if r.Tenant == "t1" && r.Meter == "api_calls" {
			return r
		}
	}
	f.t.Fatalf("no row of t1/api_calls in %+v", rows)
	return stripesync.Row{}
}

func TestADecreaseAfter24HoursIsCreditedOnce(t *testing.T) {
	f := newFixture(t, 1, stripefake.Config{})
	ctx := context.Background()
	f.price(`{"model":"per_unit","unit_amount":"0.5"}`)
	f.meter("t1", "api_calls", 100)
	if _, err := f.biller.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	f.agePushes()
	f.adjust("a1", -30)
	for range 3 {
		if _, err := f.biller.Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	txns := f.fake.BalanceTransactions()
	if len(txns) != 1 || txns[0].Amount != -1500 || txns[0].Currency != "usd" || txns[0].Customer != "cus_t1" {
		t.Fatalf("balance transactions %+v", txns)
	}
	cs := f.credits()
	if len(cs) != 1 || cs[0].Status != "sent" || cs[0].TxnID != txns[0].ID || cs[0].Quantity != "30" {
		t.Fatalf("credits %+v", cs)
	}
	if got := f.stripeTotal("t1", "api_calls"); got != 100 {
		t.Fatalf("Stripe total %d: a credited decrease cancels nothing", got)
	}
	// Later usage is pushed from the credited level: 70 → 90 is 20 more.
	f.adjust("a2", 20)
	res, err := f.biller.Sync(ctx)
	if err != nil || res.Sent != 1 {
		t.Fatalf("sync: %+v, %v", res, err)
	}
	if got := f.stripeTotal("t1", "api_calls"); got != 120 {
		t.Fatalf("Stripe total %d, want 120 (90 metered + 30 credited)", got)
	}
	if n := len(f.fake.BalanceTransactions()); n != 1 {
		t.Fatalf("%d balance transactions", n)
	}
	// Reconciliation: each adjustment beside its counterpart, and the
	// credited decrease keeps drift at 0.
	r := f.reconciled()
	if r.Drift.Sign() != 0 || r.Status != stripesync.StatusOK || r.Credited.Int64() != 30 || r.Stripe.Int64() != 120 || r.Metered.Int64() != 90 {
		t.Fatalf("reconciliation %+v", r)
	}
	if len(r.Adjustments) != 2 {
		t.Fatalf("adjustments %+v", r.Adjustments)
	}
	dec, inc := r.Adjustments[0], r.Adjustments[1]
	if dec.Counterpart != stripesync.CounterpartCredit || dec.BalanceTransaction != txns[0].ID || dec.CreditAmount != -1500 || dec.Value != "30" {
		t.Errorf("the decrease: %+v", dec)
	}
	if inc.Counterpart != stripesync.CounterpartPush || inc.Value != "20" || inc.Identifier != f.fake.Events()[1].Identifier {
		t.Errorf("the increase: %+v", inc)
	}
}

// crashing calls Stripe, then loses the answer, as a biller killed after
// the call and before recording its outcome.
type crashing struct{ *stripeapi.Client }

func (c crashing) CreditCustomer(ctx context.Context, customer string, amount int64, currency, description, key string) (string, error) {
	if _, err := c.Client.CreditCustomer(ctx, customer, amount, currency, description, key); err != nil {
		return "", err
	}
	return "", errors.New("killed after the call")
}

func TestACreditSurvivesACrashBetweenCallAndOutcome(t *testing.T) {
	f := newFixture(t, 1, stripefake.Config{})
	ctx := context.Background()
	f.price(`{"model":"per_unit","unit_amount":"0.01"}`)
	f.meter("t1", "api_calls", 500)
	if _, err := f.biller.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	f.agePushes()
	f.adjust("a1", -200)
	hs := httptest.NewServer(f.fake)
	t.Cleanup(hs.Close)
	client := stripeapi.NewClient("sk_test_123", hs.URL, 5*time.Second)
	cfg := stripesync.Config{RatePerSecond: 1000, BackoffMin: time.Millisecond, BackoffMax: 5 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)}
	if _, err := stripesync.New(f.db.Pool, crashing{client}, cfg).Sync(ctx); err == nil {
		t.Fatal("the crashed round reported no error")
	}
	if cs := f.credits(); len(cs) != 1 || cs[0].Status != "intent" {
		t.Fatalf("after the crash: %+v", cs)
	}
	// A restarted biller sends the intent again, under the same key.
	if _, err := stripesync.New(f.db.Pool, client, cfg).Sync(ctx); err != nil {
		t.Fatal(err)
	}
	txns := f.fake.BalanceTransactions()
	cs := f.credits()
	if len(txns) != 1 || txns[0].Amount != -200 || len(cs) != 1 || cs[0].Status != "sent" || cs[0].TxnID != txns[0].ID {
		t.Fatalf("after the retry: transactions %+v, credits %+v", txns, cs)
	}
}

// TestAnOldCreditIntentIsLookedForBeforeItIsSentAgain: past Stripe's 24
// hours an idempotency key is forgotten, so a crashed credit's intent is
// found by its metadata instead of being sent a second time.
func TestAnOldCreditIntentIsLookedForBeforeItIsSentAgain(t *testing.T) {
	f := newFixture(t, 1, stripefake.Config{})
	ctx := context.Background()
	f.price(`{"model":"per_unit","unit_amount":"0.01"}`)
	f.meter("t1", "api_calls", 500)
	if _, err := f.biller.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	f.agePushes()
	f.adjust("a1", -200)
	hs := httptest.NewServer(f.fake)
	t.Cleanup(hs.Close)
	client := stripeapi.NewClient("sk_test_123", hs.URL, 5*time.Second)
	cfg := stripesync.Config{RatePerSecond: 1000, BackoffMin: time.Millisecond, BackoffMax: 5 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)}
	if _, err := stripesync.New(f.db.Pool, crashing{client}, cfg).Sync(ctx); err == nil {
		t.Fatal("the crashed round reported no error")
	}
	f.db.Exec(t, `UPDATE billing_credits SET created_at = created_at - interval '25 hours'`)
	if _, err := stripesync.New(f.db.Pool, client, cfg).Sync(ctx); err != nil {
		t.Fatal(err)
	}
	calls := f.fake.Calls()
	txns := f.fake.BalanceTransactions()
	cs := f.credits()
	if calls["POST /v1/customers/cus_t1/balance_transactions"] != 1 || calls["GET /v1/customers/cus_t1/balance_transactions"] != 1 ||
		len(txns) != 1 || len(cs) != 1 || cs[0].Status != "sent" || cs[0].TxnID != txns[0].ID {
		t.Fatalf("calls %v, transactions %+v, credits %+v", calls, txns, cs)
	}
}

func TestCreditAmount(t *testing.T) {
	t.Parallel()
	perUnit := price.PerUnitPrice("0.002")
	pkg := price.Price{Model: price.Package, PackageSize: 1000, PackageAmount: "1.5", Round: price.Up}
	for _, c := range []struct {
		name             string
		p                *price.Price
		claimed, metered int64
		want             int64
	}{
		{"per unit", &perUnit, 10000, 7500, -500},
		{"rounded once", &perUnit, 3, 0, -1},
		{"package", &pkg, 2500, 1999, -150},
		{"no price", nil, 10, 5, 0},
	} {
		got, err := stripesync.CreditAmount(c.p, big.NewInt(c.claimed), big.NewInt(c.metered))
		if err != nil || got != c.want {
			t.Errorf("%s: %d, %v; want %d", c.name, got, err, c.want)
		}
	}
}

// TestADecreaseOfAFinalInvoiceIsCredited: once the month's invoice is
// final, cancelling its pushes would change no invoice: even within 24
// hours the decrease is credited.
func TestADecreaseOfAFinalInvoiceIsCredited(t *testing.T) {
	f := newFixture(t, 1, stripefake.Config{})
	ctx := context.Background()
	f.price(`{"model":"per_unit","unit_amount":"1"}`)
	f.meter("t1", "api_calls", 100)
	if _, err := f.biller.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	f.db.Exec(t, `INSERT INTO billing_periods (tenant, period_start, invoice_id) VALUES ('t1', $1, 'in_1')`, windows.Month.Start(f.now))
	f.adjust("a1", -10)
	res, err := f.biller.Sync(ctx)
	if err != nil || res.Cancelled != 0 || res.Credited != 1 {
		t.Fatalf("sync: %+v, %v", res, err)
	}
	if txns := f.fake.BalanceTransactions(); len(txns) != 1 || txns[0].Amount != -1000 {
		t.Fatalf("balance transactions %+v", txns)
	}
	if got := f.stripeTotal("t1", "api_calls"); got != 100 {
		t.Fatalf("Stripe total %d: nothing is cancelled on a final invoice", got)
	}
}

// TestACreditUnderFaultsCreditsOnce: rate limits, lock timeouts, server
// errors and answers lost after processing on the balance transaction
// route still make exactly one credit.
func TestACreditUnderFaultsCreditsOnce(t *testing.T) {
	f := newFixture(t, 1, stripefake.Config{Seed: 7})
	ctx := context.Background()
	f.price(`{"model":"per_unit","unit_amount":"0.1"}`)
	f.meter("t1", "api_calls", 1000)
	if _, err := f.biller.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	f.agePushes()
	f.adjust("a1", -400)
	f.fake.SetFaultRate(0.5)
	for range 6 {
		_, _ = f.biller.Sync(ctx)
		if cs := f.credits(); len(cs) == 1 && cs[0].Status == "sent" {
			break
		}
	}
	f.fake.SetFaultRate(0)
	if _, err := f.biller.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	txns := f.fake.BalanceTransactions()
	if cs := f.credits(); len(txns) != 1 || txns[0].Amount != -4000 || len(cs) != 1 || cs[0].Status != "sent" || cs[0].TxnID != txns[0].ID {
		t.Fatalf("transactions %+v, credits %+v, faults %v", txns, cs, f.fake.Faults())
	}
	if r := f.reconciled(); r.Drift.Sign() != 0 {
		t.Fatalf("drift %s", r.Drift)
	}
}
