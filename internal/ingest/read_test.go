package ingest_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestUsageAndQuotas(t *testing.T) {
	e := newEnv(t, envOpts{})
	_, acme := e.createKey(`{"tenant":"acme"}`)
	_, viewer := e.createKey(`{"role":"viewer"}`)
	e.do("PUT", "/v1/admin/plans/free", adminKey, "application/json",
		`{"quotas":[{"metric":"api_calls","limit":1000,"burst_percent":20,"hard":true},{"metric":"tokens","limit":null},{"metric":"bytes","limit":10,"period":"day"}]}`)
	e.do("PUT", "/v1/admin/tenants/acme", adminKey, "application/json", `{"plan":"free"}`)
	e.do("PUT", "/v1/admin/tenants/noplan", adminKey, "application/json", `{}`)
	now := time.Now().UTC()
	month := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	hour := now.Truncate(time.Hour)
	// Windows as the aggregator writes them.
	e.db.Exec(t, `INSERT INTO usage_windows (tenant, meter, granularity, window_start, value, events) VALUES
		('acme', 'api_calls', 'month', $1, 1250, 1250),
		('acme', 'api_calls', 'hour', $2, 50, 50),
		('acme', 'api_calls', 'hour', $3, 70, 70),
		('acme', 'tokens', 'month', $1, 18014398509481984, 2),
		('acme', 'bytes', 'day', $4, 8, 1),
		('globex', 'api_calls', 'hour', $2, 1, 1)`,
		month, hour.Add(-2*time.Hour), hour, now.Truncate(24*time.Hour))

	r := e.do("GET", fmt.Sprintf("/v1/usage?tenant=acme&metric=api_calls&window=hour&from=%s&to=%s",
		hour.Add(-3*time.Hour).Format(time.RFC3339), hour.Add(time.Hour).Format(time.RFC3339)), acme, "", "")
	if r.status != 200 {
		t.Fatalf("usage: %d %s", r.status, r.raw)
	}
	ws := r.body["windows"].([]any)
	if len(ws) != 2 || r.body["total"] != float64(120) || r.body["window"] != "hour" || r.body["tenant"] != "acme" {
		t.Fatalf("usage = %s", r.raw)
	}
	w0 := ws[0].(map[string]any)
	if w0["start"] != hour.Add(-2*time.Hour).Format(time.RFC3339) || w0["end"] != hour.Add(-time.Hour).Format(time.RFC3339) || w0["value"] != float64(50) || w0["events"] != float64(50) {
		t.Fatalf("first window = %v", w0)
	}
	// to is exclusive: the current hour drops out.
	r = e.do("GET", fmt.Sprintf("/v1/usage?tenant=acme&metric=api_calls&window=hour&from=%s&to=%s",
		hour.Add(-3*time.Hour).Format(time.RFC3339), hour.Format(time.RFC3339)), acme, "", "")
	if r.body["total"] != float64(50) {
		t.Fatalf("exclusive to: %s", r.raw)
	}
	// Totals beyond 2^53 are exact in the JSON.
	r = e.do("GET", "/v1/usage?tenant=acme&metric=tokens&window=month", viewer, "", "")
	if !strings.Contains(r.raw, `"total":18014398509481984`) {
		t.Fatalf("big total: %s", r.raw)
	}
	// A tenant key may omit its own tenant.
	if r := e.do("GET", "/v1/usage?metric=api_calls", acme, "", ""); r.status != 200 || r.body["tenant"] != "acme" {
		t.Fatalf("own tenant by default: %d %s", r.status, r.raw)
	}

	r = e.do("GET", "/v1/quotas/acme", acme, "", "")
	if r.status != 200 || r.body["plan"] != "free" {
		t.Fatalf("quotas: %d %s", r.status, r.raw)
	}
	got := map[string]map[string]any{}
	for _, q := range r.body["quotas"].([]any) {
		m := q.(map[string]any)
		got[m["metric"].(string)] = m
	}
	if q := got["api_calls"]; q["state"] != "blocked" || q["used"] != float64(1250) || q["remaining"] != float64(0) || q["limit"] != float64(1000) ||
		q["period_start"] != month.Format(time.RFC3339) {
		t.Errorf("api_calls quota = %v", q)
	}
	if q := got["tokens"]; q["state"] != "ok" || q["limit"] != nil || q["remaining"] != nil {
		t.Errorf("unlimited quota = %v", q)
	}
	if q := got["bytes"]; q["state"] != "warning" || q["remaining"] != float64(2) || q["period_end"] != now.Truncate(24*time.Hour).Add(24*time.Hour).Format(time.RFC3339) {
		t.Errorf("daily quota = %v", q)
	}
	if r := e.do("GET", "/v1/quotas/noplan", viewer, "", ""); r.status != 200 || r.body["plan"] != nil || len(r.body["quotas"].([]any)) != 0 {
		t.Errorf("tenant without plan: %s", r.raw)
	}

	tests := []struct {
		name, path, key string
		status          int
	}{
		{"other tenant's usage", "/v1/usage?tenant=globex&metric=api_calls", acme, http.StatusForbidden},
		{"other tenant's quotas", "/v1/quotas/globex", acme, http.StatusForbidden},
		{"no key", "/v1/quotas/acme", "", http.StatusUnauthorized},
		{"unknown tenant", "/v1/quotas/nobody", viewer, http.StatusNotFound},
		{"bill of an unknown tenant", "/v1/bill/nobody", viewer, http.StatusNotFound},
		{"other tenant's bill", "/v1/bill/globex", acme, http.StatusForbidden},
		{"other tenant's breaches", "/v1/breaches?tenant=globex", acme, http.StatusForbidden},
		{"breaches without a tenant for a viewer", "/v1/breaches", viewer, http.StatusBadRequest},
		{"missing metric", "/v1/usage?tenant=acme", viewer, http.StatusBadRequest},
		{"missing tenant for a viewer", "/v1/usage?metric=api_calls", viewer, http.StatusBadRequest},
		{"bad window", "/v1/usage?tenant=acme&metric=a&window=week", viewer, http.StatusBadRequest},
		{"bad from", "/v1/usage?tenant=acme&metric=a&from=yesterday", viewer, http.StatusBadRequest},
		{"from after to", "/v1/usage?tenant=acme&metric=a&from=2026-11-02T00:00:00Z&to=2026-11-01T00:00:00Z", viewer, http.StatusBadRequest},
		{"too many windows", "/v1/usage?tenant=acme&metric=a&window=minute&from=2026-01-01T00:00:00Z&to=2026-11-01T00:00:00Z", viewer, http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.do("GET", tt.path, tt.key, "", "")
			if r.status != tt.status || errorCode(r) == "" {
				t.Fatalf("got %d %s, want %d with an error body", r.status, r.raw, tt.status)
			}
		})
	}
}
