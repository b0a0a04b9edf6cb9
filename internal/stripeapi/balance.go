package stripeapi

import (
	"context"

	"github.com/stripe/stripe-go/v79"
)

// CreditCustomer creates one customer balance transaction of amount, in
// the currency's minor unit (negative: a credit the customer's next
// invoices use), under idempotencyKey, which is also recorded in its
// metadata as metering_credit_id. It returns the transaction's id. A
// retry with the same key within Stripe's 24 hours returns the first
// transaction, not a second one.
func (c *Client) CreditCustomer(ctx context.Context, customer string, amount int64, currency, description, idempotencyKey string) (string, error) {
	hs := &headers{}
	p := &stripe.CustomerBalanceTransactionParams{
		Customer: stripe.String(customer), Amount: stripe.Int64(amount), Currency: stripe.String(currency),
		Description: stripe.String(description),
	}
	p.AddMetadata("metering_credit_id", idempotencyKey)
	p.Context = context.WithValue(ctx, headersKey{}, hs)
	p.SetIdempotencyKey(idempotencyKey)
	t, err := c.api.CustomerBalanceTransactions.New(p)
	if err != nil {
		return "", classify(err, hs)
	}
	return t.ID, nil
}

// FindCredit looks through customer's balance transactions, newest first,
// for the one CreditCustomer made under idempotencyKey (its metadata's
// metering_credit_id) and returns its id; found is false when there is
// none. It answers, past Stripe's 24-hour memory of idempotency keys,
// whether an earlier call landed.
func (c *Client) FindCredit(ctx context.Context, customer, idempotencyKey string) (id string, found bool, err error) {
	hs := &headers{}
	p := &stripe.CustomerBalanceTransactionListParams{Customer: stripe.String(customer)}
	p.Context = context.WithValue(ctx, headersKey{}, hs)
	p.Limit = stripe.Int64(100)
	it := c.api.CustomerBalanceTransactions.List(p)
	for it.Next() {
		t := it.CustomerBalanceTransaction()
		if t.Metadata["metering_credit_id"] == idempotencyKey {
			return t.ID, true, nil
		}
	}
	return "", false, classify(it.Err(), hs)
}
