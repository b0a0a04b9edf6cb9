package stripeapi_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/stripeapi"
	"github.com/usagemeter/metering/internal/testkit/stripefake"
	"github.com/usagemeter/metering/internal/testkit/stripemock"
)

// TestCreditCustomerContractWithStripeMock: stripe-mock accepts the
// balance transaction the biller creates, and answers with an id.
func TestCreditCustomerContractWithStripeMock(t *testing.T) {
	base := stripemock.Start(t)
	c := stripeapi.NewClient("sk_test_123", base, 10*time.Second)
	id, err := c.CreditCustomer(context.Background(), "cus_123", -1500, "usd", "usage adjustment", "mc_0123456789abcdef")
	if err != nil {
		t.Fatalf("stripe-mock rejected the request: %v", err)
	}
	if id == "" {
		t.Fatal("no balance transaction id")
	}
	if _, _, err := c.FindCredit(context.Background(), "cus_123", "mc_0123456789abcdef"); err != nil {
		t.Fatalf("stripe-mock rejected the list: %v", err)
	}
}

// TestCreditCustomerIsIdempotent: the same key twice is one transaction;
// a refused customer is a permanent invalid_request error.
func TestCreditCustomerIsIdempotent(t *testing.T) {
	t.Parallel()
	fake := stripefake.New(stripefake.Config{})
	fake.RejectCustomer = func(c string) bool { return c == "cus_gone" }
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	c := stripeapi.NewClient("sk_test_123", srv.URL, 10*time.Second)
	ctx := context.Background()
	first, err := c.CreditCustomer(ctx, "cus_1", -250, "usd", "refund", "mc_key_1")
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.CreditCustomer(ctx, "cus_1", -250, "usd", "refund", "mc_key_1")
	if err != nil || again != first {
		t.Fatalf("retry = %q, %v; want %q", again, err, first)
	}
	if txns := fake.BalanceTransactions(); len(txns) != 1 || txns[0].Amount != -250 || txns[0].Metadata["metering_credit_id"] != "mc_key_1" {
		t.Fatalf("transactions %+v", txns)
	}
	if b := fake.Balance("cus_1"); b != -250 {
		t.Errorf("balance = %d", b)
	}
	if id, found, err := c.FindCredit(ctx, "cus_1", "mc_key_1"); err != nil || !found || id != first {
		t.Errorf("FindCredit = %q, %v, %v; want %q", id, found, err, first)
	}
	if _, found, err := c.FindCredit(ctx, "cus_1", "mc_key_9"); err != nil || found {
		t.Errorf("FindCredit of an unknown key = %v, %v", found, err)
	}
	_, err = c.CreditCustomer(ctx, "cus_gone", -1, "usd", "refund", "mc_key_2")
	var se *stripeapi.Error
	if !errors.As(err, &se) || se.Retriable || se.Class != stripeapi.ClassInvalid || !strings.Contains(err.Error(), "No such customer") {
		t.Fatalf("refused customer: %v", err)
	}
}
