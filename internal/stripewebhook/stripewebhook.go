// Package stripewebhook receives Stripe webhooks: subscription changes
// move tenants between plans, a finalized invoice closes the tenant's
// billing month, and meter error reports are recorded for people.
//
// Invariants, each a test in stripewebhook_test.go:
//   - nothing changes unless the Stripe-Signature verifies with
//     STRIPE_WEBHOOK_SECRET and its timestamp is within Tolerance of our
//     clock, in the past or in the future (TestSignatureAndTolerance);
//   - each event id takes effect at most once (Stripe delivers at least
//     once), in the same transaction as its effect (TestWebhooks);
//   - an event about an object (a subscription) never overwrites the effect
//     of a later event about it: events are ordered by (created, event id)
//     per object, whatever the delivery order (TestOlderUpdateNeverOverwritesNewer);
//   - a signed event that cannot take effect because of its content is
//     acknowledged with 200 and recorded in stripe_webhook_undecodable, so
//     Stripe does not retry it for days; only a failure of ours (Postgres
//     unreachable) answers 5xx, so Stripe retries (TestUndecodableEventsAreRecorded,
//     TestPostgresDownAnswers5xx).
package stripewebhook

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/usagemeter/metering/internal/httpjson"
)

// PlanMetadataKey is the subscription metadata key naming the tenant's plan.
const PlanMetadataKey = "plan"

// MaxPayload is the largest body read; larger ones are refused with 413.
const MaxPayload = 1 << 20

// Outcomes of a delivery, the values of the "status" field of a 200 answer
// and of the label outcome of metering_stripe_webhooks_total.
const (
	Processed           = "processed"            // the event took effect
	Ignored             = "ignored"              // a type we do not act on
	Duplicate           = "duplicate"            // this event id was handled before
	Stale               = "stale"                // older than the last event applied to its object
	RecordedUndecodable = "recorded_undecodable" // signed, but its content cannot take effect: see stripe_webhook_undecodable
	RefusedSignature    = "refused_signature"    // 400 invalid_signature
	RefusedFuture       = "refused_future"       // 400 timestamp_in_future
	RefusedTooOld       = "refused_too_old"      // 400 timestamp_too_old
	RefusedBody         = "refused_body"         // 413 payload_too_large, 400 malformed_body
	NotConfigured       = "not_configured"       // 503: STRIPE_WEBHOOK_SECRET is not set
	Failed              = "failed"               // 500: Postgres failed; Stripe retries
)

var allOutcomes = []string{Processed, Ignored, Duplicate, Stale, RecordedUndecodable,
	RefusedSignature, RefusedFuture, RefusedTooOld, RefusedBody, NotConfigured, Failed}

// Handler serves POST /webhooks/stripe.
type Handler struct {
	pool     *pgxpool.Pool
	secret   string
	log      *slog.Logger
	outcomes *prometheus.CounterVec
	now      func() time.Time
	// defaultPlan names, in plan.changed, the plan a tenant whose
	// subscription ended falls back to.
	defaultPlan string
}

// Option configures a Handler.
type Option func(*Handler)

// WithRegisterer registers metering_stripe_webhooks_total{outcome} with reg.
func WithRegisterer(reg prometheus.Registerer) Option {
	return func(h *Handler) { reg.MustRegister(h.outcomes) }
}

// WithDefaultPlan sets the default plan (DEFAULT_PLAN) that plan.changed
// names when a deleted subscription leaves a tenant without a plan.
func WithDefaultPlan(plan string) Option {
	return func(h *Handler) { h.defaultPlan = plan }
}

// WithClock sets the clock plan changes are bounded by (a change never
// takes effect after now); time.Now by default.
func WithClock(now func() time.Time) Option {
	return func(h *Handler) { h.now = now }
}

// New returns a handler verifying signatures with secret.
func New(pool *pgxpool.Pool, secret string, log *slog.Logger, opts ...Option) *Handler {
	h := &Handler{pool: pool, secret: secret, log: log, now: time.Now,
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "metering_stripe_webhooks_total",
			Help: "Stripe webhook deliveries by outcome: processed, ignored, duplicate, stale, recorded_undecodable, refused_signature, refused_future, refused_too_old, refused_body, not_configured, failed.",
		}, []string{"outcome"})}
	for _, o := range allOutcomes {
		h.outcomes.WithLabelValues(o)
	}
	for _, opt := range opts {
		opt(h)
	}
	return h
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	if h.secret == "" {
		h.refuse(w, NotConfigured, http.StatusServiceUnavailable, "not_configured", "STRIPE_WEBHOOK_SECRET is not set; webhooks are refused")
		return
	}
	payload, err := io.ReadAll(io.LimitReader(r.Body, MaxPayload+1))
	if err != nil {
		h.refuse(w, RefusedBody, http.StatusBadRequest, "malformed_body", "the body could not be read")
		return
	}
	if len(payload) > MaxPayload {
		h.refuse(w, RefusedBody, http.StatusRequestEntityTooLarge, "payload_too_large", "the body is larger than 1 MiB")
		return
	}
	switch err := h.verify(payload, r.Header.Get("Stripe-Signature")); {
	case errors.Is(err, errFuture):
		h.log.WarnContext(ctx, "webhook refused: signed in the future; check this host's clock", "err", err)
		h.refuse(w, RefusedFuture, http.StatusBadRequest, "timestamp_in_future",
			"the Stripe-Signature timestamp is more than 5 minutes ahead of this server's clock")
		return
	case errors.Is(err, errTooOld):
		h.log.WarnContext(ctx, "webhook refused: signature too old (a replay, or this host's clock is ahead)", "err", err)
		h.refuse(w, RefusedTooOld, http.StatusBadRequest, "timestamp_too_old",
			"the Stripe-Signature timestamp is more than 5 minutes behind this server's clock")
		return
	case err != nil:
		h.log.WarnContext(ctx, "webhook refused: signature does not verify", "err", err)
		h.refuse(w, RefusedSignature, http.StatusBadRequest, "invalid_signature",
			"the Stripe-Signature header does not verify with this endpoint's signing secret")
		return
	}
	outcome, err := h.handle(ctx, payload)
	if err != nil {
		// 5xx makes Stripe deliver it again later.
		h.log.ErrorContext(ctx, "webhook failed; Stripe will retry it", "err", err)
		h.refuse(w, Failed, http.StatusInternalServerError, "internal", "the event could not be handled now; Stripe will retry it")
		return
	}
	h.outcomes.WithLabelValues(outcome).Inc()
	httpjson.Write(w, http.StatusOK, map[string]string{"status": outcome})
}

func (h *Handler) refuse(w http.ResponseWriter, outcome string, status int, code, message string) {
	h.outcomes.WithLabelValues(outcome).Inc()
	httpjson.Error(w, status, code, message)
}

// handle decodes and applies a verified payload; an error means a failure
// of ours, worth a retry.
func (h *Handler) handle(ctx context.Context, payload []byte) (string, error) {
	ev, err := decodeEvent(payload)
	if err != nil {
		return h.recordUndecodable(ctx, ev, payload, err)
	}
	outcome, err := h.apply(ctx, &ev)
	var content *contentError
	if errors.As(err, &content) {
		return h.recordUndecodable(ctx, ev, payload, err)
	}
	if err != nil {
		return "", err
	}
	h.log.InfoContext(ctx, "webhook", "event", ev.ID, "type", ev.Type, "object", ev.ObjectID, "outcome", outcome)
	return outcome, nil
}
