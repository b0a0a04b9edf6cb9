package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
)

// TestFaultProxy checks the storms of the control API against a stand-in
// for ingest: before drops the request, after forwards it first, storms
// queue in order, other routes pass through, and the counters add up.
func TestFaultProxy(t *testing.T) {
	t.Parallel()
	var got atomic.Int64
	ingest := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Add(1)
		b, _ := io.ReadAll(r.Body)
		if r.Method == http.MethodPost && string(b) != `[{"id":"e1"}]` {
			t.Errorf("ingest got body %q", b)
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	defer ingest.Close()
	target, _ := url.Parse(ingest.URL)
	p := newFaultProxy(target)
	proxy := httptest.NewServer(p)
	defer proxy.Close()
	control := httptest.NewServer(p.controlHandler())
	defer control.Close()

	post := func(u string) *http.Response {
		t.Helper()
		resp, err := http.Post(u, "application/json", strings.NewReader(`[{"id":"e1"}]`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	for _, q := range []string{"count=1&status=503&retry_after=2&mode=before", "count=2&status=429&mode=after"} {
		if resp := post(control.URL + "/storm?" + q); resp.StatusCode != http.StatusOK {
			t.Fatalf("storm %s: %d", q, resp.StatusCode)
		}
	}
	if resp := post(control.URL + "/storm?mode=sideways"); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("bad storm: %d", resp.StatusCode)
	}

	tests := []struct {
		status     int
		retryAfter string
		ingestSeen int64
	}{
		{503, "2", 0}, // before: dropped
		{429, "1", 1}, // after: forwarded, then the fault
		{429, "1", 2},
		{202, "", 3}, // storms over
	}
	for i, tt := range tests {
		resp := post(proxy.URL + "/v1/events")
		if resp.StatusCode != tt.status || resp.Header.Get("Retry-After") != tt.retryAfter || got.Load() != tt.ingestSeen {
			t.Fatalf("request %d: %d Retry-After %q, ingest saw %d; want %d %q %d",
				i, resp.StatusCode, resp.Header.Get("Retry-After"), got.Load(), tt.status, tt.retryAfter, tt.ingestSeen)
		}
	}
	if resp, err := http.Get(proxy.URL + "/v1/usage"); err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("GET through the proxy: %v %v", resp, err)
	}

	resp, err := http.Get(control.URL + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st stats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	want := stats{Proxied: 4, EventsRequests: 4, Faulted: 3, FaultedBefore: 1, FaultedAfter: 2, ForwardedAccepted: 2}
	if st != want {
		t.Fatalf("stats = %+v, want %+v", st, want)
	}
}
