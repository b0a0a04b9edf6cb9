package ingest_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/usagemeter/metering/internal/auth"
	"github.com/usagemeter/metering/internal/ingest"
	"github.com/usagemeter/metering/internal/ratelimit"
	"github.com/usagemeter/metering/internal/record"
	"github.com/usagemeter/metering/internal/relay"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/deadletters"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/topics"
)

// recordSink is a relay.Writer that keeps what it is given.
type recordSink struct {
	mu   sync.Mutex
	recs []record.Record
}

func (s *recordSink) Write(_ context.Context, recs ...record.Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recs = append(s.recs, recs...)
	return nil
}

func (s *recordSink) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.recs)
}

// newConsoleEnv is an API that reads (no Kafka) with the usage DLQ, its
// replays published to sink, and the biller's routes forwarded to biller
// (nil: none configured).
func newConsoleEnv(t *testing.T, sink relay.Writer, biller *url.URL) *env {
	t.Helper()
	db := pgtest.New(t)
	st := accounts.New(db.Pool)
	log := slog.New(slog.DiscardHandler)
	opt := ingest.Options{
		Store: st, Auth: auth.New(st, adminKey), Usage: usagedata.NewReader(db.Pool), Conflicts: usagedata.NewConflictReader(db.Pool), DB: db.Pool,
		KeyLimiter: ratelimit.New(1e6, 1e6), IPLimiter: ratelimit.New(1e6, 1e6), MaxBodyBytes: 1 << 20,
		Logger: log, Registry: prometheus.NewRegistry(), DeadLetters: rollup.NewDeadLetters(db.Pool), BillerURL: biller,
	}
	if sink != nil {
		opt.Outbox = relay.New(db.Pool, sink, log, nil)
	}
	srv := httptest.NewServer(ingest.New(opt).Handler(http.NewServeMux()))
	t.Cleanup(srv.Close)
	return &env{t: t, db: db, srv: srv, store: st}
}

// TestUsageDLQRoutes: operators list and show the usage dead letters; an
// admin replays (published at once) or discards a pending one with a
// note, audited with the key; everything else is refused with a reason.
func TestUsageDLQRoutes(t *testing.T) {
	sink := &recordSink{}
	e := newConsoleEnv(t, sink, nil)
	_, viewer := e.createKey(`{"role":"viewer"}`)
	_, tenant := e.createKey(`{"tenant":"acme"}`)
	if err := deadletters.RecordUsage(context.Background(), e.db.Pool, topics.UsageEvents, &deadletters.UsageLetters{
		Tenants: []string{"acme", ""}, Errors: []string{"e1", "e2"}, Classes: []string{"invalid_event", "undecodable"},
		Partitions: []int32{0, 0}, Offsets: []int64{7, 8}, Keys: [][]byte{[]byte("acme"), {0xff}},
		Payloads: [][]byte{[]byte(`{"id":"x"}`), nil}, Headers: [][]record.Header{nil, nil},
	}, time.Now()); err != nil {
		t.Fatal(err)
	}
	j := "application/json"
	long := `{"note":"` + strings.Repeat("é", 1001) + `"}`
	steps := []struct {
		name, method, path, key, body string
		status                        int
		code                          string
	}{
		{"no key", "GET", "/v1/admin/dlq/usage", "", "", 401, "unauthorized"},
		{"tenant key", "GET", "/v1/admin/dlq/usage", tenant, "", 403, "forbidden"},
		{"bad status", "GET", "/v1/admin/dlq/usage?status=dead", adminKey, "", 400, "invalid_request"},
		{"bad limit", "GET", "/v1/admin/dlq/usage?limit=0", adminKey, "", 400, "invalid_request"},
		{"viewer lists", "GET", "/v1/admin/dlq/usage", viewer, "", 200, ""},
		{"viewer shows", "GET", "/v1/admin/dlq/usage/1", viewer, "", 200, ""},
		{"unknown id", "GET", "/v1/admin/dlq/usage/99", adminKey, "", 404, "not_found"},
		{"not an id", "GET", "/v1/admin/dlq/usage/x", adminKey, "", 400, "invalid_request"},
		{"viewer replays", "POST", "/v1/admin/dlq/usage/1/replay", viewer, `{"note":"n"}`, 403, "forbidden"},
		{"tenant discards", "POST", "/v1/admin/dlq/usage/1/discard", tenant, `{"note":"n"}`, 403, "forbidden"},
		{"no body", "POST", "/v1/admin/dlq/usage/1/replay", adminKey, "", 400, "invalid_request"},
		{"no note", "POST", "/v1/admin/dlq/usage/1/replay", adminKey, `{}`, 400, "invalid_request"},
		{"blank note", "POST", "/v1/admin/dlq/usage/1/replay", adminKey, `{"note":" \t\n"}`, 400, "invalid_request"},
		{"note with NUL", "POST", "/v1/admin/dlq/usage/1/replay", adminKey, `{"note":"a\u0000b"}`, 400, "invalid_request"},
		{"note too long", "POST", "/v1/admin/dlq/usage/1/discard", adminKey, long, 400, "invalid_request"},
		{"unknown field", "POST", "/v1/admin/dlq/usage/1/discard", adminKey, `{"note":"n","all":true}`, 400, "invalid_request"},
		{"replay unknown", "POST", "/v1/admin/dlq/usage/99/replay", adminKey, `{"note":"n"}`, 404, "not_found"},
		{"replay", "POST", "/v1/admin/dlq/usage/1/replay", adminKey, `{"note":"fixed upstream"}`, 200, ""},
		{"replay again", "POST", "/v1/admin/dlq/usage/1/replay", adminKey, `{"note":"again"}`, 409, "not_pending"},
		{"discard replayed", "POST", "/v1/admin/dlq/usage/1/discard", adminKey, `{"note":"n"}`, 409, "not_pending"},
		{"discard", "POST", "/v1/admin/dlq/usage/2/discard", adminKey, `{"note":"junk"}`, 200, ""},
		{"discard again", "POST", "/v1/admin/dlq/usage/2/discard", adminKey, `{"note":"junk"}`, 409, "not_pending"},
	}
	for _, s := range steps {
		ct := ""
		if s.body != "" {
			ct = j
		}
		r := e.do(s.method, s.path, s.key, ct, s.body)
		if r.status != s.status || s.code != "" && errorCode(r) != s.code {
			t.Errorf("%s: %d %s, want %d %s", s.name, r.status, r.raw, s.status, s.code)
		}
	}
	r := e.do("GET", "/v1/admin/dlq/usage?status=all", viewer, "", "")
	if !strings.Contains(r.raw, `"status":"replayed"`) || !strings.Contains(r.raw, `"status":"discarded"`) || !strings.Contains(r.raw, `"key":"hex:ff"`) ||
		!strings.Contains(r.raw, `"payload_null":true`) {
		t.Errorf("listing every status: %s", r.raw)
	}
	if r := e.do("GET", "/v1/admin/dlq/usage", adminKey, "", ""); r.raw != `{"dead_letters":[]}` && strings.TrimSpace(r.raw) != `{"dead_letters":[]}` {
		t.Errorf("pending after both were resolved: %s", r.raw)
	}
	if sink.len() != 1 {
		t.Errorf("the replay published %d records, want 1", sink.len())
	}
	var actor, note string
	if err := e.db.Pool.QueryRow(context.Background(), `SELECT actor, note FROM audit_log WHERE action = 'dlq.usage.replay'`).Scan(&actor, &note); err != nil ||
		actor != "key:bootstrap" || note != "fixed upstream" {
		t.Errorf("the replay's audit: %q %q %v", actor, note, err)
	}
}

// TestBillerProxy: ingest forwards the biller's routes as asked (method,
// path, query, Authorization, body) and passes the answer through with
// one set of security headers; without BILLER_URL they answer 503, and a
// biller that does not answer is 502 without its address.
func TestBillerProxy(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var seen []string
	biller := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		seen = append(seen, fmt.Sprintf("%s %s %s %s", r.Method, r.URL.RequestURI(), r.Header.Get("Authorization"), body))
		mu.Unlock()
		w.Header().Set("Content-Security-Policy", "default-src 'none'")
		w.Header().Set("Content-Type", "text/csv")
		w.WriteHeader(http.StatusTeapot)
		_, _ = io.WriteString(w, "tenant\nacme\n")
	}))
	t.Cleanup(biller.Close)
	u, _ := url.Parse(biller.URL)
	e := newConsoleEnv(t, nil, u)
	r := e.doRaw("GET", "/v1/reconciliation?period=2026-11&format=csv", "k1", "")
	if r.status != http.StatusTeapot || r.raw != "tenant\nacme\n" || len(r.header.Values("Content-Security-Policy")) != 1 || r.header.Get("Content-Type") != "text/csv" {
		t.Errorf("forwarded reconciliation: %d %q %v", r.status, r.raw, r.header)
	}
	e.doRaw("POST", "/v1/admin/dlq/billing/5/discard", "k2", `{"note":"n"}`)
	e.doRaw("GET", "/v1/admin/dlq/billing", "k3", "")
	mu.Lock()
	got := strings.Join(seen, "|")
	mu.Unlock()
	want := `GET /v1/reconciliation?period=2026-11&format=csv Bearer k1 |POST /v1/admin/dlq/billing/5/discard Bearer k2 {"note":"n"}|GET /v1/admin/dlq/billing Bearer k3 `
	if got != want {
		t.Errorf("the biller saw\n%s\nwant\n%s", got, want)
	}

	none := newConsoleEnv(t, nil, nil)
	if r := none.do("GET", "/v1/admin/dlq/billing", adminKey, "", ""); r.status != 503 || errorCode(r) != "biller_not_configured" {
		t.Errorf("without BILLER_URL: %d %s", r.status, r.raw)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	down := newConsoleEnv(t, nil, &url.URL{Scheme: "http", Host: addr})
	if r := down.do("GET", "/v1/reconciliation", adminKey, "", ""); r.status != 502 || errorCode(r) != "biller_unavailable" || strings.Contains(r.raw, addr) {
		t.Errorf("biller down: %d %s", r.status, r.raw)
	}
}

// doRaw is do for answers that need not be JSON.
func (e *env) doRaw(method, path, key, body string) response {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.srv.URL+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, raw: string(raw)}
}

// TestConsoleReadRoutes: a viewer key reads tenants, plans, plan history
// and the audit log (the console's read-only view) but not keys or
// meters, and changes none; whoami names every key; a month's pushes
// are read as usage is.
func TestConsoleReadRoutes(t *testing.T) {
	t.Parallel()
	e := newConsoleEnv(t, nil, nil)
	e.do("PUT", "/v1/admin/plans/pro", adminKey, "application/json", `{"currency":"usd","quotas":[{"metric":"api_calls","limit":5}]}`)
	e.do("PUT", "/v1/admin/tenants/acme", adminKey, "application/json", `{"plan":"pro"}`)
	_, viewer := e.createKey(`{"role":"viewer"}`)
	_, tenant := e.createKey(`{"tenant":"acme","scope":"read"}`)
	for _, tt := range []struct {
		method, path, key string
		status            int
	}{
		{"GET", "/v1/admin/tenants", viewer, 200},
		{"GET", "/v1/admin/tenants/acme", viewer, 200},
		{"GET", "/v1/admin/tenants/acme/plans", viewer, 200},
		{"GET", "/v1/admin/plans", viewer, 200},
		{"GET", "/v1/admin/plans/pro", viewer, 200},
		{"GET", "/v1/admin/plans/pro/versions", viewer, 200},
		{"GET", "/v1/admin/audit", viewer, 200},
		{"GET", "/v1/admin/keys", viewer, 403},
		{"GET", "/v1/admin/meters", viewer, 403},
		{"PUT", "/v1/admin/tenants/acme", viewer, 403},
		{"PUT", "/v1/admin/plans/pro", viewer, 403},
		{"GET", "/v1/admin/tenants", tenant, 403},
		{"GET", "/v1/admin/audit", tenant, 403},
		{"GET", "/v1/lineage/pushes?tenant=acme&period=2026-11", viewer, 200},
		{"GET", "/v1/lineage/pushes", tenant, 200},
		{"GET", "/v1/lineage/pushes", viewer, 400},
		{"GET", "/v1/lineage/pushes?tenant=acme&period=2026-13", viewer, 400},
		{"GET", "/v1/lineage/pushes?tenant=globex", tenant, 403},
		{"GET", "/console", "", 200},
		{"GET", "/console/app.js", "", 200},
		{"GET", "/console/nope.js", "", 404},
	} {
		body, ct := "", ""
		if tt.method == "PUT" {
			body, ct = `{}`, "application/json"
		}
		var r response
		if strings.HasPrefix(tt.path, "/console") {
			r = e.doRaw(tt.method, tt.path, tt.key, body)
		} else {
			r = e.do(tt.method, tt.path, tt.key, ct, body)
		}
		if r.status != tt.status {
			t.Errorf("%s %s: %d %s, want %d", tt.method, tt.path, r.status, r.raw, tt.status)
		}
		if tt.path == "/console" && !strings.Contains(r.header.Get("Content-Security-Policy"), "script-src 'self'") {
			t.Errorf("/console's policy: %q", r.header.Get("Content-Security-Policy"))
		}
	}
	for key, want := range map[string]string{
		adminKey: `{"role":"admin","scope":"","tenant":""}`,
		viewer:   `{"role":"viewer","scope":"","tenant":""}`,
		tenant:   `{"role":"tenant","scope":"read","tenant":"acme"}`,
	} {
		if r := e.do("GET", "/v1/whoami", key, "", ""); r.status != 200 || !strings.Contains(r.raw, want) {
			t.Errorf("whoami: %d %s, want %s", r.status, r.raw, want)
		}
	}
}
