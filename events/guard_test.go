package events_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
)

// quotaAPI fakes GET /v1/quotas/{tenant} with mutable states.
type quotaAPI struct {
	mu     sync.Mutex
	states map[string]string // tenant/metric → state
	calls  atomic.Int32
	down   atomic.Bool
}

func (q *quotaAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q.calls.Add(1)
	if q.down.Load() {
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	if r.Header.Get("Authorization") != "Bearer viewer-key" {
		http.Error(w, "no", http.StatusUnauthorized)
		return
	}
	tenant := r.PathValue("tenant")
	q.mu.Lock()
	defer q.mu.Unlock()
	var quotas []map[string]any
	for _, m := range []string{"api_calls", "tokens"} {
		st, ok := q.states[tenant+"/"+m]
		if !ok {
			continue
		}
		quotas = append(quotas, map[string]any{"metric": m, "state": st, "period_end": now.Add(90 * time.Minute)})
	}
	if quotas == nil {
		http.Error(w, `{"error":{}}`, http.StatusNotFound)
		return
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"tenant": tenant, "quotas": quotas})
}

func TestQuotaGuard(t *testing.T) {
	api := &quotaAPI{states: map[string]string{"acme/api_calls": "blocked", "acme/tokens": "exceeded", "globex/api_calls": "warning"}}
	mux := http.NewServeMux()
	mux.Handle("GET /v1/quotas/{tenant}", api)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	clock := now
	var mu sync.Mutex
	var errs []error
	g, err := events.NewQuotaGuard(events.GuardConfig{
		BaseURL: srv.URL, APIKey: "viewer-key", TTL: 5 * time.Second,
		Tenant:  func(r *http.Request) (string, bool) { t := r.Header.Get("X-Tenant"); return t, t != "" },
		Now:     func() time.Time { return clock },
		OnError: func(_ string, err error) { mu.Lock(); errs = append(errs, err); mu.Unlock() },
	})
	if err != nil {
		t.Fatal(err)
	}
	h := g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	call := func(tenant string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		r := httptest.NewRequest("GET", "/work", nil)
		if tenant != "" {
			r.Header.Set("X-Tenant", tenant)
		}
		h.ServeHTTP(rec, r)
		return rec
	}
	tests := []struct {
		tenant     string
		status     int
		retryAfter string
	}{
		{"acme", 429, "5400"}, // blocked until the period ends, 90 minutes away
		{"globex", 204, ""},   // warning is not blocked
		{"initech", 204, ""},  // unknown tenants have no quotas
		{"", 204, ""},         // requests without a tenant pass unchecked
	}
	for _, tt := range tests {
		rec := call(tt.tenant)
		if rec.Code != tt.status || rec.Header().Get("Retry-After") != tt.retryAfter {
			t.Errorf("%q: %d Retry-After %q, want %d %q (%s)", tt.tenant, rec.Code, rec.Header().Get("Retry-After"), tt.status, tt.retryAfter, rec.Body)
		}
	}
	// Cached for the TTL: no new API calls, even for a state change.
	calls := api.calls.Load()
	api.mu.Lock()
	api.states["acme/api_calls"] = "exceeded"
	api.mu.Unlock()
	if rec := call("acme"); rec.Code != 429 || api.calls.Load() != calls {
		t.Fatalf("within TTL: %d, %d calls", rec.Code, api.calls.Load()-calls)
	}
	clock = clock.Add(6 * time.Second)
	if rec := call("acme"); rec.Code != 204 {
		t.Fatalf("after TTL with the block lifted: %d", rec.Code)
	}
	// The quota API down: fail open by default, and report it.
	api.down.Store(true)
	clock = clock.Add(6 * time.Second)
	if rec := call("acme"); rec.Code != 204 {
		t.Fatalf("fail open: %d", rec.Code)
	}
	mu.Lock()
	if len(errs) != 1 {
		t.Fatalf("errors reported: %v", errs)
	}
	mu.Unlock()
}

func TestQuotaGuardFailClosedAndRate(t *testing.T) {
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) }))
	defer down.Close()
	clock := now
	g, _ := events.NewQuotaGuard(events.GuardConfig{BaseURL: down.URL, FailClosed: true,
		Tenant: func(*http.Request) (string, bool) { return "acme", true }, Now: func() time.Time { return clock }})
	d, err := g.Check(t.Context(), "acme")
	if err == nil || d.Allowed {
		t.Fatalf("fail closed: %+v, %v", d, err)
	}

	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte(`{"quotas":[]}`)) }))
	defer ok.Close()
	g, _ = events.NewQuotaGuard(events.GuardConfig{BaseURL: ok.URL, RatePerSecond: 2, Burst: 2,
		Tenant: func(*http.Request) (string, bool) { return "acme", true }, Now: func() time.Time { return clock }})
	var got []bool
	for range 3 {
		d, err := g.Check(t.Context(), "acme")
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, d.Allowed)
		if !d.Allowed && (d.Reason != "rate" || d.RetryAfter != 500*time.Millisecond) {
			t.Fatalf("rate decision %+v", d)
		}
	}
	if got[0] != true || got[1] != true || got[2] != false {
		t.Fatalf("burst of 2: %v", got)
	}
	clock = clock.Add(500 * time.Millisecond)
	if d, _ := g.Check(t.Context(), "acme"); !d.Allowed {
		t.Fatal("refill after 0.5s at 2/s")
	}
	if _, err := events.NewQuotaGuard(events.GuardConfig{}); err == nil || errors.Is(err, nil) {
		t.Fatal("empty config accepted")
	}
}

// GuardConfig.Metrics limits enforcement to the metrics a service spends:
// a tenant blocked on api_calls only is not refused by a guard of tokens.
func TestQuotaGuardMetrics(t *testing.T) {
	api := &quotaAPI{states: map[string]string{"acme/api_calls": "blocked", "acme/tokens": "ok"}}
	mux := http.NewServeMux()
	mux.Handle("GET /v1/quotas/{tenant}", api)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	tests := []struct {
		metrics []string
		status  int
	}{
		{nil, 429},
		{[]string{"api_calls"}, 429},
		{[]string{"tokens"}, 204},
		{[]string{"tokens", "api_calls"}, 429},
	}
	for _, tt := range tests {
		g, err := events.NewQuotaGuard(events.GuardConfig{
			BaseURL: srv.URL, APIKey: "viewer-key", Metrics: tt.metrics,
			Tenant: func(*http.Request) (string, bool) { return "acme", true },
			Now:    func() time.Time { return now },
		})
		if err != nil {
			t.Fatal(err)
		}
		rec := httptest.NewRecorder()
		g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })).
			ServeHTTP(rec, httptest.NewRequest("GET", "/work", nil))
		if rec.Code != tt.status {
			t.Errorf("metrics %v: %d, want %d", tt.metrics, rec.Code, tt.status)
		}
	}
}
