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
