package stripeapi

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/stripe/stripe-go/v79"
	"github.com/stripe/stripe-go/v79/client"
)

// Client makes the billing-meter calls the biller needs.
type Client struct {
	api *client.API
}

// NewClient returns a Client for key at base ("" for api.stripe.com) whose
// requests time out after timeout.
func NewClient(key, base string, timeout time.Duration) *Client {
	hc := &http.Client{Timeout: timeout, Transport: headerCapture{next: http.DefaultTransport}}
	return &Client{api: New(key, base, hc)}
}

// headers is filled by headerCapture with the retry hints of a response,
// which stripe-go does not expose on errors.
type headers struct {
	retryAfter  string
	shouldRetry string
}

type headersKey struct{}

type headerCapture struct{ next http.RoundTripper }

func (h headerCapture) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := h.next.RoundTrip(r)
	if err == nil {
		if hs, ok := r.Context().Value(headersKey{}).(*headers); ok {
			hs.retryAfter = resp.Header.Get("Retry-After")
			hs.shouldRetry = resp.Header.Get("Stripe-Should-Retry")
		}
	}
	return resp, err
}

// Error is a failed call, classified.
type Error struct {
	// Retriable: rate limits, lock timeouts, 5xx (unless Stripe says
	// not to), network errors and timeouts.
	Retriable bool
	// Class is rate_limit, lock_timeout, server_error, network,
	// invalid_request, authentication or duplicate.
	Class string
	// RetryAfter is Stripe's Retry-After hint, if any.
	RetryAfter time.Duration
	Err        error
}

func (e *Error) Error() string { return fmt.Sprintf("stripe %s: %v", e.Class, e.Err) }
func (e *Error) Unwrap() error { return e.Err }

// Error classes.
const (
	ClassRateLimit      = "rate_limit"
	ClassLockTimeout    = "lock_timeout"
	ClassServerError    = "server_error"
	ClassNetwork        = "network"
	ClassInvalid        = "invalid_request"
	ClassAuthentication = "authentication"
	// ClassDuplicate: Stripe already has an event with this identifier.
	ClassDuplicate = "duplicate"
)

func classify(err error, hs *headers) error {
	if err == nil {
		return nil
	}
	e := &Error{Err: err}
	if s, perr := strconv.Atoi(hs.retryAfter); perr == nil && s >= 0 {
		e.RetryAfter = time.Duration(s) * time.Second
	}
	var se *stripe.Error
	switch {
	case errors.As(err, &se):
		switch {
		case se.Code == "resource_already_exists":
			e.Class = ClassDuplicate
		case se.Code == "lock_timeout":
			e.Class, e.Retriable = ClassLockTimeout, true
		case se.HTTPStatusCode == http.StatusTooManyRequests:
			e.Class, e.Retriable = ClassRateLimit, true
		case se.HTTPStatusCode >= 500:
			e.Class, e.Retriable = ClassServerError, hs.shouldRetry != "false"
		case se.HTTPStatusCode == http.StatusUnauthorized || se.HTTPStatusCode == http.StatusForbidden:
			e.Class = ClassAuthentication
		default:
			e.Class = ClassInvalid
			e.Retriable = hs.shouldRetry == "true"
		}
	default:
		var ne net.Error
		if errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) {
			e.Class, e.Retriable = ClassNetwork, true
		} else {
			e.Class, e.Retriable = ClassNetwork, !errors.Is(err, context.Canceled)
		}
	}
	return e
}

// SendMeterEvent sends one meter event. The identifier is also the
// Idempotency-Key, so a resend is a no-op at Stripe.
func (c *Client) SendMeterEvent(ctx context.Context, eventName, identifier, customer, value string, ts time.Time) error {
	hs := &headers{}
	p := &stripe.BillingMeterEventParams{
		EventName: stripe.String(eventName), Identifier: stripe.String(identifier), Timestamp: stripe.Int64(ts.Unix()),
		Payload: map[string]string{"stripe_customer_id": customer, "value": value},
	}
	p.Context = context.WithValue(ctx, headersKey{}, hs)
	p.SetIdempotencyKey(identifier)
	_, err := c.api.BillingMeterEvents.New(p)
	return classify(err, hs)
}

// CancelMeterEvent cancels an event sent within the last 24 hours.
func (c *Client) CancelMeterEvent(ctx context.Context, eventName, identifier string) error {
	hs := &headers{}
	p := &stripe.BillingMeterEventAdjustmentParams{
		EventName: stripe.String(eventName), Type: stripe.String("cancel"),
		Cancel: &stripe.BillingMeterEventAdjustmentCancelParams{Identifier: stripe.String(identifier)},
	}
	p.Context = context.WithValue(ctx, headersKey{}, hs)
	p.SetIdempotencyKey("cancel-" + identifier)
	_, err := c.api.BillingMeterEventAdjustments.New(p)
	return classify(err, hs)
}

// Meters returns the active meters' ids by event name.
func (c *Client) Meters(ctx context.Context) (map[string]string, error) {
	hs := &headers{}
	p := &stripe.BillingMeterListParams{Status: stripe.String("active")}
	p.Context = context.WithValue(ctx, headersKey{}, hs)
	out := map[string]string{}
	it := c.api.BillingMeters.List(p)
	for it.Next() {
		m := it.BillingMeter()
		out[m.EventName] = m.ID
	}
	return out, classify(it.Err(), hs)
}

// Summary returns Stripe's aggregated value of meterID for customer in
// [start, end), which must be minute-aligned.
func (c *Client) Summary(ctx context.Context, meterID, customer string, start, end time.Time) (int64, error) {
	hs := &headers{}
	p := &stripe.BillingMeterEventSummaryListParams{
		ID: stripe.String(meterID), Customer: stripe.String(customer),
		StartTime: stripe.Int64(start.Unix()), EndTime: stripe.Int64(end.Unix()),
	}
	p.Context = context.WithValue(ctx, headersKey{}, hs)
	var total float64
	it := c.api.BillingMeterEventSummaries.List(p)
	for it.Next() {
		total += it.BillingMeterEventSummary().AggregatedValue
	}
	if err := it.Err(); err != nil {
		return 0, classify(err, hs)
	}
	return int64(math.Round(total)), nil
}
