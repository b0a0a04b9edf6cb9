package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"
)

// maxQuotaAnswer bounds the quota API answer a QuotaGuard reads.
const maxQuotaAnswer = 1 << 20

// GuardConfig configures a QuotaGuard.
type GuardConfig struct {
	// BaseURL of the metering API, such as http://127.0.0.1:8080.
	BaseURL string
	// APIKey reads quotas: a viewer key, or an admin key.
	APIKey string
	// Tenant extracts the tenant a request bills to; ok false lets the
	// request through unchecked.
	Tenant func(r *http.Request) (tenant string, ok bool)
	// Metrics limits enforcement to these metrics; empty means every
	// metric of the tenant's plan.
	Metrics []string
	// TTL is how long a tenant's quota states are cached; default 5s.
	TTL time.Duration
	// FailClosed answers 503 when the quota API cannot be reached; by
	// default (fail open) the request goes through and the error is
	// reported to OnError.
	FailClosed bool
	// OnError, if set, receives quota API failures.
	OnError func(tenant string, err error)
	// RatePerSecond and Burst, when set, also limit each tenant's request
	// rate with a token bucket (429 with Retry-After when empty).
	RatePerSecond float64
	Burst         int
	// HTTPClient defaults to one with a 2s timeout.
	HTTPClient *http.Client
	// Now defaults to time.Now.
	Now func() time.Time
}

// QuotaGuard is net/http middleware that refuses requests of tenants whose
// quota is blocked (a hard quota beyond its burst) until the period ends.
type QuotaGuard struct {
	cfg    GuardConfig
	flight singleflight.Group

	mu      sync.Mutex
	cache   map[string]guardEntry
	buckets map[string]*rate.Limiter
}

type guardEntry struct {
	blockedUntil time.Time // zero: not blocked
	metric       string
	expires      time.Time
}

// NewQuotaGuard returns a guard for cfg.
func NewQuotaGuard(cfg GuardConfig) (*QuotaGuard, error) {
	if cfg.BaseURL == "" || cfg.Tenant == nil {
		return nil, errors.New("events: GuardConfig needs BaseURL and Tenant")
	}
	if cfg.TTL <= 0 {
		cfg.TTL = 5 * time.Second
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 2 * time.Second}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.RatePerSecond > 0 && cfg.Burst <= 0 {
		cfg.Burst = max(1, int(cfg.RatePerSecond))
	}
	return &QuotaGuard{cfg: cfg, cache: map[string]guardEntry{}, buckets: map[string]*rate.Limiter{}}, nil
}

// Decision is the guard's verdict for one tenant.
type Decision struct {
	Allowed bool
	// Metric is the blocked metric, when blocked by quota.
	Metric string
	// RetryAfter is how long until a retry can succeed.
	RetryAfter time.Duration
	// Reason is "quota" or "rate" when not allowed.
	Reason string
}

// Check returns the decision for tenant now, using the cache.
func (g *QuotaGuard) Check(ctx context.Context, tenant string) (Decision, error) {
	now := g.cfg.Now()
	if g.cfg.RatePerSecond > 0 {
		g.mu.Lock()
		b := g.buckets[tenant]
		if b == nil {
			b = rate.NewLimiter(rate.Limit(g.cfg.RatePerSecond), g.cfg.Burst)
			g.buckets[tenant] = b
		}
		g.mu.Unlock()
		r := b.ReserveN(now, 1)
		if d := r.DelayFrom(now); d > 0 {
			r.CancelAt(now)
			return Decision{RetryAfter: d, Reason: "rate"}, nil
		}
	}
	g.mu.Lock()
	e, ok := g.cache[tenant]
	g.mu.Unlock()
	if !ok || now.After(e.expires) {
		v, err, _ := g.flight.Do(tenant, func() (any, error) { return g.fetch(ctx, tenant, now) })
		if err != nil {
			return Decision{Allowed: !g.cfg.FailClosed, RetryAfter: time.Second}, err
		}
		e = v.(guardEntry)
	}
	if !e.blockedUntil.IsZero() && now.Before(e.blockedUntil) {
		return Decision{Metric: e.metric, RetryAfter: e.blockedUntil.Sub(now), Reason: "quota"}, nil
	}
	return Decision{Allowed: true}, nil
}

func (g *QuotaGuard) fetch(ctx context.Context, tenant string, now time.Time) (guardEntry, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, g.cfg.BaseURL+"/v1/quotas/"+url.PathEscape(tenant), nil)
	if err != nil {
		return guardEntry{}, err
	}
	req.Header.Set("Authorization", "Bearer "+g.cfg.APIKey)
	resp, err := g.cfg.HTTPClient.Do(req)
	if err != nil {
		return guardEntry{}, fmt.Errorf("events: reading quotas of %s: %w", tenant, err)
	}
	defer resp.Body.Close()
	e := guardEntry{expires: now.Add(g.cfg.TTL)}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound: // an unregistered tenant has no quotas
		g.store(tenant, e)
		return e, nil
	default:
		return guardEntry{}, fmt.Errorf("events: reading quotas of %s: HTTP %d", tenant, resp.StatusCode)
	}
	var body struct {
		Quotas []struct {
			Metric    string    `json:"metric"`
			State     string    `json:"state"`
			PeriodEnd time.Time `json:"period_end"`
		} `json:"quotas"`
	}
	// The answer of a trusted API, but read within bounds all the same.
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxQuotaAnswer)).Decode(&body); err != nil {
		return guardEntry{}, fmt.Errorf("events: decoding quotas of %s: %w", tenant, err)
	}
	for _, q := range body.Quotas {
		if q.State != "blocked" || !g.enforced(q.Metric) {
			continue
		}
		if e.blockedUntil.IsZero() || q.PeriodEnd.After(e.blockedUntil) {
			e.blockedUntil, e.metric = q.PeriodEnd, q.Metric
		}
	}
	g.store(tenant, e)
	return e, nil
}

func (g *QuotaGuard) store(tenant string, e guardEntry) {
	g.mu.Lock()
	g.cache[tenant] = e
	g.mu.Unlock()
}

func (g *QuotaGuard) enforced(metric string) bool {
	if len(g.cfg.Metrics) == 0 {
		return true
	}
	for _, m := range g.cfg.Metrics {
		if m == metric {
			return true
		}
	}
	return false
}

// Middleware refuses requests of blocked or rate-limited tenants with 429
// and Retry-After, and passes the others to next.
func (g *QuotaGuard) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tenant, ok := g.cfg.Tenant(r)
		if !ok {
			next.ServeHTTP(w, r)
			return
		}
		d, err := g.Check(r.Context(), tenant)
		if err != nil && g.cfg.OnError != nil {
			g.cfg.OnError(tenant, err)
		}
		if d.Allowed {
			next.ServeHTTP(w, r)
			return
		}
		secs := int((d.RetryAfter + time.Second - 1) / time.Second)
		w.Header().Set("Retry-After", strconv.Itoa(max(1, secs)))
		w.Header().Set("Content-Type", "application/json")
		status, code, msg := http.StatusTooManyRequests, "quota_exceeded",
			fmt.Sprintf("the %s quota of this account is used up until %s", d.Metric, g.cfg.Now().Add(d.RetryAfter).UTC().Format(time.RFC3339))
		switch {
		case err != nil:
			status, code, msg = http.StatusServiceUnavailable, "quota_unavailable", "the quota service cannot be reached; retry shortly"
		case d.Reason == "rate":
			code, msg = "rate_limited", "too many requests; slow down"
		}
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": code, "message": msg}})
	})
}
