// Package stripeapi builds the stripe-go client the biller uses, pointed at
// api.stripe.com or at STRIPE_API_BASE (stripe-mock, the project's Stripe
// test server).
//
// Invariant: the client never retries on its own; retries, backoff and
// idempotency keys belong to the caller, which records every attempt.
package stripeapi

import (
	"net/http"
	"time"

	"github.com/stripe/stripe-go/v79"
	"github.com/stripe/stripe-go/v79/client"
)

// New returns a client authenticating with key. A non-empty base replaces
// https://api.stripe.com for every backend; a nil httpClient gets one with
// a 30s timeout.
func New(key, base string, httpClient *http.Client) *client.API {
	if httpClient == nil {
		httpClient = &http.Client{Timeout: 30 * time.Second}
	}
	cfg := func() *stripe.BackendConfig {
		c := &stripe.BackendConfig{
			HTTPClient:        httpClient,
			MaxNetworkRetries: stripe.Int64(0),
			LeveledLogger:     &stripe.LeveledLogger{Level: stripe.LevelNull},
		}
		if base != "" {
			c.URL = stripe.String(base)
		}
		return c
	}
	backends := &stripe.Backends{
		API:     stripe.GetBackendWithConfig(stripe.APIBackend, cfg()),
		Connect: stripe.GetBackendWithConfig(stripe.ConnectBackend, cfg()),
		Uploads: stripe.GetBackendWithConfig(stripe.UploadsBackend, cfg()),
	}
	api := &client.API{}
	api.Init(key, backends)
	return api
}
