// Package ingest is the HTTP API of cmd/ingest: POST /v1/events and the
// admin routes for plans, tenants, API keys and meters.
//
// Invariant: a request is all or nothing. It gets 202 only after Kafka
// acknowledged every one of its events; any invalid event, unauthorised
// tenant or exceeded limit rejects the whole request before anything is
// published.
package ingest

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/auth"
	"github.com/usagemeter/metering/internal/httpguard"
	"github.com/usagemeter/metering/internal/httpjson"
	"github.com/usagemeter/metering/internal/publish"
	"github.com/usagemeter/metering/internal/ratelimit"
	"github.com/usagemeter/metering/internal/recordsign"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/storage"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/usagedata"
)

// Options are the API's dependencies and limits.
type Options struct {
	Store     *accounts.Store
	Auth      *auth.Authenticator
	Publisher *publish.Publisher
	// Adjustments writes adjustment records to usage.events (a
	// kafkalog.Writer); nil answers 503 to POST /v1/admin/adjustments.
	Adjustments RecordWriter
	// AdjustmentKeys sign every adjustment record (the first key signs).
	// Without a key POST /v1/admin/adjustments answers 503
	// adjustments_not_configured, unless AllowUnsignedAdjustments
	// (development only) lets it write them unsigned.
	AdjustmentKeys           *recordsign.Keyring
	AllowUnsignedAdjustments bool
	// Usage reads windows and quota states.
	Usage *usagedata.Reader
	// Conflicts reads conflicting resends and alerts (GET /v1/conflicts).
	Conflicts ConflictReader
	// DB is the database the meter routes read and write through the
	// storage packages' named operations (a pool).
	DB storage.Executor
	// Decoder decodes and validates event bodies.
	Decoder events.Decoder
	// KeyLimiter is charged one token per event per API key; IPLimiter
	// one token per request per client IP.
	KeyLimiter, IPLimiter *ratelimit.Limiter
	// MaxBodyBytes bounds a body as sent and once decompressed.
	MaxBodyBytes int64
	// LargeBodies caps the bodies above LargeBytes held at once (its
	// MaxBytes is MaxBodyBytes; zero fields take ingest's defaults).
	LargeBodies httpguard.BodyLimits
	Logger      *slog.Logger
	Registry    prometheus.Registerer
	// DeadLetters is the usage dead-letter queue (/v1/admin/dlq/usage;
	// nil answers 503) and Outbox publishes a replay at once (nil: the
	// aggregator's relay publishes it).
	DeadLetters *rollup.DeadLetters
	Outbox      OutboxPublisher
	// Log reads usage.events at recorded offsets for the lineage of
	// defined meters (nil: their lineage answers 422 lineage_unavailable).
	Log LogReader
	// BillerURL is where the biller's routes are forwarded (nil: 503).
	BillerURL *url.URL
	// WebhookAllowHTTP lets webhook endpoints have http:// URLs
	// (WEBHOOK_ALLOW_HTTP; development and tests).
	WebhookAllowHTTP bool
	// Now is the service's clock: rate limiters, and the current period of
	// reads (usage, quotas, bill); nil means time.Now.
	Now func() time.Time
}

// API serves the ingest routes.
type API struct {
	opt     Options
	gate    auth.Gate
	metrics *metrics
	body    *httpguard.Body
}

// New returns the API; it registers its metrics on opt.Registry.
func New(opt Options) *API {
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Decoder.Limits.MaxBytes == 0 && opt.MaxBodyBytes > 0 {
		// The decoder's own byte limit follows MaxBodyBytes, so a body the
		// API accepted is not refused a second time.
		opt.Decoder.Limits.MaxBytes = int(opt.MaxBodyBytes)
	}
	return &API{opt: opt, gate: auth.Gate{Auth: opt.Auth, Log: opt.Logger}, metrics: newMetrics(opt.Registry), body: newBodyReader(opt)}
}

// Route is one route of the API.
type Route struct {
	Method, Path string
	Handler      http.HandlerFunc
}

// Routes lists every route the API serves (besides /healthz, /readyz,
// /metrics and /openapi.yaml, which service.Mount adds).
func (a *API) Routes() []Route {
	return append([]Route{
		{"POST", "/v1/events", a.postEvents},
		{"GET", "/v1/usage", a.reader(func(r *http.Request) string { return r.URL.Query().Get("tenant") }, a.getUsage)},
		{"GET", "/v1/meters", a.reader(func(r *http.Request) string { return r.URL.Query().Get("tenant") }, a.getMeters)},
		{"GET", "/v1/quotas/{tenant}", a.reader(func(r *http.Request) string { return r.PathValue("tenant") }, a.getQuotas)},
		{"GET", "/v1/breaches", a.reader(func(r *http.Request) string { return r.URL.Query().Get("tenant") }, a.getBreaches)},
		{"GET", "/v1/anomalies", a.getAnomalies},
		{"GET", "/v1/conflicts", a.reader(func(r *http.Request) string { return r.URL.Query().Get("tenant") }, a.getConflicts)},
		{"GET", "/v1/bill/{tenant}", a.reader(func(r *http.Request) string { return r.PathValue("tenant") }, a.getBill)},
		{"GET", "/ui", usagePage().Serve},
		{"GET", "/ui/{asset}", usagePage().ServeAsset},
		{"GET", "/v1/admin/plans", a.gate.Operator(a.listPlans)},
		{"GET", "/v1/admin/plans/{plan}", a.gate.Operator(a.getPlan)},
		{"PUT", "/v1/admin/plans/{plan}", a.gate.Admin(a.putPlan)},
		{"GET", "/v1/admin/plans/{plan}/versions", a.gate.Operator(a.getPlanVersions)},
		{"GET", "/v1/admin/tenants", a.gate.Operator(a.listTenants)},
		{"GET", "/v1/admin/tenants/{tenant}", a.gate.Operator(a.getTenant)},
		{"PUT", "/v1/admin/tenants/{tenant}", a.gate.Admin(a.putTenant)},
		{"GET", "/v1/admin/tenants/{tenant}/plans", a.gate.Operator(a.getTenantPlans)},
		{"GET", "/v1/admin/keys", a.gate.Admin(a.listKeys)},
		{"POST", "/v1/admin/keys", a.gate.Admin(a.createKey)},
		{"DELETE", "/v1/admin/keys/{id}", a.gate.Admin(a.revokeKey)},
		{"POST", "/v1/admin/keys/{id}/rotate", a.gate.Admin(a.rotateKey)},
		{"GET", "/v1/admin/meters", a.gate.Admin(a.listMeters)},
		{"GET", "/v1/admin/meters/{meter}", a.gate.Admin(a.getMeter)},
		{"PUT", "/v1/admin/meters/{meter}", a.gate.Admin(a.putMeter)},
	}, slices.Concat(a.grantRoutes(), a.adjustmentRoutes(), a.cycleRoutes(), a.exportRoutes(), a.lineageRoutes(), a.consoleRoutes(), a.webhookRoutes())...)
}

// Handler returns the API's routes, instrumented and with the security
// headers, on mux (which may already hold /healthz and the like).
func (a *API) Handler(mux *http.ServeMux) http.Handler {
	// A known path asked with another method gets 405 and Allow; the mux
	// would say so itself but for the /v1/ fallback below.
	allowed := map[string][]string{}
	for _, r := range a.Routes() {
		mux.HandleFunc(r.Method+" "+r.Path, r.Handler)
		allowed[r.Path] = append(allowed[r.Path], r.Method)
		if r.Method == http.MethodGet {
			allowed[r.Path] = append(allowed[r.Path], http.MethodHead)
		}
	}
	paths := http.NewServeMux()
	for path, methods := range allowed {
		allow := strings.Join(methods, ", ")
		paths.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", allow)
			httpjson.Errorf(w, http.StatusMethodNotAllowed, "method_not_allowed", "%s %s is not served; this path takes %s", r.Method, r.URL.Path, allow)
		})
	}
	mux.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		if h, pattern := paths.Handler(r); pattern != "" {
			h.ServeHTTP(w, r)
			return
		}
		httpjson.Errorf(w, http.StatusNotFound, "not_found", "no route %s %s", r.Method, r.URL.Path)
	})
	return httpguard.SecurityHeaders(a.instrument(a.limitIP(mux)))
}

// limitIP charges every /v1 request to its client IP before any work.
func (a *API) limitIP(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.URL.Path) < 4 || r.URL.Path[:4] != "/v1/" {
			next.ServeHTTP(w, r)
			return
		}
		d := a.opt.IPLimiter.Allow(clientIP(r), 1, a.opt.Now())
		if !d.Allowed {
			d.SetHeaders(w.Header())
			a.metrics.rateLimited.WithLabelValues("ip").Inc()
			httpjson.Errorf(w, http.StatusTooManyRequests, "rate_limited",
				"too many requests from this address; retry after %s seconds", w.Header().Get("Retry-After"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// postEvents accepts a batch of events: a key that may send, a body that
// decodes, every event of a tenant the key may write, within the key's
// rate; then the whole batch is published or none of it is accepted.
func (a *API) postEvents(w http.ResponseWriter, r *http.Request) {
	p, ok := a.gate.Principal(w, r)
	if !ok || !a.maySend(w, p) {
		return
	}
	body, release, ok := a.readBody(w, r)
	defer release()
	if !ok {
		return
	}
	evs, err := a.opt.Decoder.DecodeHTTP(r.Header, body)
	if err != nil {
		a.writeDecodeError(w, err)
		return
	}
	if !a.admitBatch(w, p, evs) {
		return
	}
	a.publishBatch(w, r, evs)
}

// maySend answers 403 and returns false unless p's key may send events.
func (a *API) maySend(w http.ResponseWriter, p auth.Principal) bool {
	if p.Role == accounts.RoleViewer {
		httpjson.Error(w, http.StatusForbidden, "forbidden", "viewer keys are read-only; send events with a tenant or admin key")
		return false
	}
	if p.ReadOnly() {
		a.metrics.rejected.WithLabelValues("read_only_key").Inc()
		httpjson.Errorf(w, http.StatusForbidden, "read_only_key",
			"this key of tenant %q has scope read: it reads usage and quotas but cannot send events; send events with a write key (POST /v1/admin/keys {\"tenant\":%q})", p.Tenant, p.Tenant)
		return false
	}
	return true
}

// admitBatch answers 403 or 429 and returns false unless p may write every
// event of evs and the key's rate allows the batch.
func (a *API) admitBatch(w http.ResponseWriter, p auth.Principal, evs []events.Event) bool {
	for i, e := range evs {
		if !p.CanWrite(e.Tenant) {
			a.metrics.rejected.WithLabelValues("forbidden").Inc()
			httpjson.Errorf(w, http.StatusForbidden, "forbidden",
				"this key belongs to tenant %q and cannot send events for tenant %q (event %d); nothing was published", p.Tenant, e.Tenant, i)
			return false
		}
	}
	d := a.opt.KeyLimiter.Allow(p.KeyID, len(evs), a.opt.Now())
	d.SetHeaders(w.Header())
	if d.Allowed {
		return true
	}
	a.metrics.rateLimited.WithLabelValues("key").Inc()
	a.metrics.rejected.WithLabelValues("rate_limited").Inc()
	if d.Never {
		httpjson.Errorf(w, http.StatusTooManyRequests, "rate_limited",
			"a batch of %d events exceeds this key's burst of %d; send smaller batches", len(evs), d.Limit)
		return false
	}
	httpjson.Errorf(w, http.StatusTooManyRequests, "rate_limited",
		"this key's event rate limit is exhausted; retry after %s seconds", w.Header().Get("Retry-After"))
	return false
}

// publishBatch publishes evs and answers 202, or 503 with Retry-After when
// the event log did not take them.
func (a *API) publishBatch(w http.ResponseWriter, r *http.Request, evs []events.Event) {
	start := time.Now()
	// The client leaving does not abort a publish half way: it runs to
	// its own deadline so the outcome is the same for every event.
	err := a.opt.Publisher.Publish(context.WithoutCancel(r.Context()), evs)
	a.metrics.publishSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		a.metrics.rejected.WithLabelValues("unavailable").Inc()
		// The client learns what to do; the broker's address and the
		// driver's error go to the log only.
		retry := 5
		code, msg := "unavailable", "the event log is unavailable"
		if errors.Is(err, publish.ErrBusy) {
			retry, code, msg = 1, "overloaded", "too many events are waiting for the event log"
		}
		a.opt.Logger.WarnContext(r.Context(), "publish failed", "events", len(evs), "err", err)
		w.Header().Set("Retry-After", strconv.Itoa(retry))
		httpjson.Errorf(w, http.StatusServiceUnavailable, code,
			"%s; retry it unchanged after %d s (the request was not accepted; the same ids count once)", msg, retry)
		return
	}
	a.metrics.accepted.Add(float64(len(evs)))
	httpjson.Write(w, http.StatusAccepted, map[string]int{"accepted": len(evs)})
}

func (a *API) writeDecodeError(w http.ResponseWriter, err error) {
	var be *events.BodyError
	switch {
	case errors.Is(err, events.ErrUnsupportedMediaType):
		a.metrics.rejected.WithLabelValues("media_type").Inc()
		httpjson.Error(w, http.StatusUnsupportedMediaType, "unsupported_media_type", err.Error())
	case errors.As(err, &be):
		a.metrics.rejected.WithLabelValues(be.Code).Inc()
		status := http.StatusBadRequest
		if be.Code == events.CodeTooMany || be.Code == events.CodeTooLarge {
			status = http.StatusRequestEntityTooLarge
		}
		httpjson.Error(w, status, be.Code, be.Message+"; nothing was published")
	default:
		ve, ok := events.AsValidationError(err)
		if !ok {
			httpjson.Error(w, http.StatusBadRequest, "invalid_request", err.Error())
			return
		}
		a.metrics.rejected.WithLabelValues("invalid").Inc()
		httpjson.Write(w, http.StatusBadRequest, map[string]any{"errors": ve.Errors})
	}
}
