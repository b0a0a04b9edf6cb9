package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/storage/billingdata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/testkit/stripefake"
)

// TestCreditsCommands: `biller credits list` shows the dead credits (by
// default) or those of another status, as a table or JSON; `biller
// credits resend` sends dead credits again under their idempotency keys,
// audited in audit_log (credits.resend, one row per credit): one Stripe now accepts is sent,
// one it refuses again stays dead with the new error, and a credit that
// is not dead is refused by id (exit 1).
func TestCreditsCommands(t *testing.T) {
	db := pgtest.New(t)
	ctx := context.Background()
	fake := stripefake.New(stripefake.Config{})
	fake.RejectCustomer = func(c string) bool { return c == "cus_gone" }
	t.Cleanup(fake.Close)
	stripe := httptest.NewServer(fake)
	t.Cleanup(stripe.Close)
	getenv := func(k string) string {
		return map[string]string{"LOG_LEVEL": "error", "KAFKA_BROKERS": "127.0.0.1:1", "STRIPE_API_BASE": stripe.URL, "STRIPE_API_KEY": "sk_test_cli"}[k]
	}
	period := time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)
	ids := map[string]int64{}
	for i, c := range []struct{ name, customer, status string }{
		{"moved", "cus_moved", "dead"}, // the customer was fixed: Stripe takes it now
		{"gone", "cus_gone", "dead"},   // still refused
		{"open", "cus_open", "intent"},
	} {
		credit := billingdata.Credit{Tenant: c.name, Metric: "api_calls", Period: period, Customer: c.customer, Claimed: "1000", Metered: "900",
			Quantity: "100", Amount: -250, Currency: "usd", IdempotencyKey: fmt.Sprintf("mc_test_%d", i)}
		if _, err := billingdata.InsertCredit(ctx, db.Pool, credit); err != nil {
			t.Fatal(err)
		}
		if err := db.Pool.QueryRow(ctx, `SELECT id FROM billing_credits WHERE idempotency_key = $1`, credit.IdempotencyKey).Scan(&credit.ID); err != nil {
			t.Fatal(err)
		}
		ids[c.name] = credit.ID
		if c.status == "dead" {
			if err := billingdata.MarkCreditDead(ctx, db.Pool, credit.ID, "intent", 1, "No such customer: '"+c.customer+"'"); err != nil {
				t.Fatal(err)
			}
		}
	}
	biller := func(args ...string) (code int, stdout, stderr string) {
		t.Helper()
		var o, e bytes.Buffer
		if len(args) > 1 {
			args = append(args, "-database-url", db.URL)
		}
		code = run(args, getenv, &o, &e)
		return code, o.String(), e.String()
	}
	listJSON := func(status string) map[string]billingdata.Credit {
		t.Helper()
		code, out, errOut := biller("credits", "list", "--status", status, "--format", "json")
		if code != 0 {
			t.Fatalf("credits list --status %s: exit %d: %s", status, code, errOut)
		}
		var cs []billingdata.Credit
		if err := json.Unmarshal([]byte(out), &cs); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		byTenant := map[string]billingdata.Credit{}
		for _, c := range cs {
			byTenant[c.Tenant] = c
		}
		return byTenant
	}

	code, out, errOut := biller("credits", "list")
	if code != 0 || !strings.Contains(out, "2 credits") || !strings.Contains(out, "cus_gone") || strings.Contains(out, "cus_open") ||
		!strings.Contains(out, "-250 usd") || !strings.Contains(out, "2026-10") {
		t.Fatalf("credits list: exit %d\n%s%s", code, out, errOut)
	}
	if open := listJSON("open"); len(open) != 1 || open["open"].Status != "intent" {
		t.Errorf("open credits: %+v", open)
	}
	if all := listJSON("all"); len(all) != 3 {
		t.Errorf("all credits: %+v", all)
	}

	for _, tc := range []struct {
		name    string
		args    []string
		code    int
		wantOut string // in stdout, or stderr when code != 0
	}{
		{"an intent is not dead", []string{"credits", "resend", fmt.Sprint(ids["open"]), "--actor", "finance"}, 1, "none of the named records"},
		{"not a number", []string{"credits", "resend", "x"}, 1, "credit ids are numbers"},
		{"neither ids nor --all", []string{"credits", "resend", "--actor", "finance"}, 1, "name the records by id, or use --all"},
		{"bad status", []string{"credits", "list", "--status", "lost"}, 1, "want one of open, dead, sent, none, all"},
		{"credits without a command", []string{"credits"}, 2, "want list or resend"},
		{"resend all", []string{"credits", "resend", "--all", "--actor", "finance", "--note", "customer re-created"}, 0,
			"resent 2 dead credits [" + fmt.Sprint(ids["moved"]) + " " + fmt.Sprint(ids["gone"]) + "]: 1 sent, 1 refused again"},
		{"the sent one is no longer dead", []string{"credits", "resend", fmt.Sprint(ids["moved"]), "--actor", "finance"}, 1, "none of the named records"},
		{"resend one by id", []string{"credits", "resend", fmt.Sprint(ids["gone"]), "--actor", "finance"}, 0, "0 sent, 1 refused again"},
	} {
		code, out, errOut := biller(tc.args...)
		got := out
		if tc.code != 0 {
			got = errOut
		}
		if code != tc.code || !strings.Contains(got, tc.wantOut) {
			t.Errorf("%s: biller %s: exit %d, want %d with %q\nstdout: %s\nstderr: %s", tc.name, strings.Join(tc.args, " "), code, tc.code, tc.wantOut, out, errOut)
		}
	}

	sent := listJSON("sent")
	if c, ok := sent["moved"]; !ok || c.TxnID == "" || c.Sent == nil || len(sent) != 1 {
		t.Errorf("sent credits after the resend: %+v", sent)
	}
	dead := listJSON("dead")
	if c := dead["gone"]; len(dead) != 1 || c.Attempts != 3 || !strings.Contains(c.LastError, "No such customer") {
		t.Errorf("dead credits after the resends: %+v", dead)
	}
	txns := fake.BalanceTransactions()
	if len(txns) != 1 || txns[0].Customer != "cus_moved" || txns[0].Amount != -250 {
		t.Errorf("Stripe's balance transactions: %+v", txns)
	}
	var audited []string
	rows, err := db.Pool.Query(ctx, `SELECT action || ' ' || actor || ' ' || target || ' ' || before::text || ' ' || after::text || ' ' || note FROM audit_log WHERE action LIKE 'credits.%' ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		audited = append(audited, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	row := func(id int64, note string) string {
		return fmt.Sprintf(`credits.resend cli:finance billing_credit:%d {"status": "dead"} {"resend": true, "status": "dead"} %s`, id, note)
	}
	want := []string{row(ids["moved"], "customer re-created"), row(ids["gone"], "customer re-created"), row(ids["gone"], "")}
	if fmt.Sprint(audited) != fmt.Sprint(want) {
		t.Errorf("audit trail %q, want %q", audited, want)
	}
}
