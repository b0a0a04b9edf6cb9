package ingest_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/auth"
	"github.com/usagemeter/metering/internal/ingest"
	"github.com/usagemeter/metering/internal/ratelimit"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/topics"
)

// newReadEnv is an API that only reads (no Kafka), with conflicts.
func newReadEnv(t *testing.T) *env {
	t.Helper()
	db := pgtest.New(t)
	st := accounts.New(db.Pool)
	api := ingest.New(ingest.Options{
		Store: st, Auth: auth.New(st, adminKey), Usage: usagedata.NewReader(db.Pool), Conflicts: usagedata.NewConflictReader(db.Pool),
		KeyLimiter: ratelimit.New(1e6, 1e6), IPLimiter: ratelimit.New(1e6, 1e6), MaxBodyBytes: 1 << 20,
		Logger: slog.New(slog.DiscardHandler), Registry: prometheus.NewRegistry(),
	})
	srv := httptest.NewServer(api.Handler(http.NewServeMux()))
	t.Cleanup(srv.Close)
	return &env{t: t, db: db, srv: srv, store: st}
}

// TestConflictsAreVisibleToWhoMayReadTheTenant: GET /v1/conflicts shows
// a tenant's conflicts with their resolutions to admin and viewer keys
// and to the tenant's own keys (read scope included), never to another
// tenant's, and says when the tenant is alerting.
func TestConflictsAreVisibleToWhoMayReadTheTenant(t *testing.T) {
	t.Parallel()
	e := newReadEnv(t)
	_, acme := e.createKey(`{"tenant":"acme"}`)
	_, acmeRead := e.createKey(`{"tenant":"acme","scope":"read"}`)
	_, globex := e.createKey(`{"tenant":"globex"}`)
	_, viewer := e.createKey(`{"role":"viewer"}`)
	ctx := context.Background()
	agg := rollup.New(e.db.Pool, rollup.Config{Group: "g", Topic: topics.UsageEvents, Logger: slog.New(slog.DiscardHandler)})
	now := time.Now().UTC()
	orig := events.Event{ID: "order-77", Tenant: "acme", Metric: "api_calls", Value: 0, Time: now.Add(-time.Minute)}
	real := orig
	real.Value = 1200
	moved := orig
	moved.Metric = "tokens"
	var recs []rollup.Record
	for i, ev := range []events.Event{orig, real, moved} {
		recs = append(recs, rollup.Record{Offset: int64(i), Key: []byte("acme"), Value: ev.AppendJSON(nil), Time: now})
	}
	if _, err := agg.Apply(ctx, 0, -1, recs); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name, key, query string
		status, count    int
	}{
		{"own key, own tenant implied", acme, "", 200, 2},
		{"read-only tenant key", acmeRead, "?tenant=acme", 200, 2},
		{"viewer, held only", viewer, "?tenant=acme&status=held", 200, 1},
		{"admin, resolved", adminKey, "?tenant=acme&status=resolved", 200, 1},
		{"admin, raised", adminKey, "?tenant=acme&status=raised", 200, 1},
		{"another tenant's key", globex, "?tenant=acme", 403, 0},
		{"another tenant's own list is empty", globex, "", 200, 0},
		{"admin must name the tenant", adminKey, "", 400, 0},
		{"unknown status", acme, "?status=open", 400, 0},
		{"no key", "", "?tenant=acme", 401, 0},
	} {
		r := e.do("GET", "/v1/conflicts"+tc.query, tc.key, "", "")
		if r.status != tc.status {
			t.Errorf("%s: %d %s, want %d", tc.name, r.status, r.raw, tc.status)
			continue
		}
		if r.status != 200 {
			continue
		}
		cs, _ := r.body["conflicts"].([]any)
		if len(cs) != tc.count || r.body["alerting"] != false {
			t.Errorf("%s: %s, want %d conflicts, not alerting", tc.name, r.raw, tc.count)
		}
	}
	r := e.do("GET", "/v1/conflicts?tenant=acme&status=raised", viewer, "", "")
	c := r.body["conflicts"].([]any)[0].(map[string]any)
	if c["event_id"] != "order-77" || c["resolution"] != "raised" || c["value"] != float64(1200) || c["counted_value"] != float64(0) || c["metric"] != "api_calls" {
		t.Errorf("raised conflict = %v", c)
	}
	e.db.Exec(t, `INSERT INTO conflict_alerts (tenant, day, conflicts, threshold) VALUES ('acme', $1::date, 11, 10)`, now.Format(time.DateOnly))
	if r := e.do("GET", "/v1/conflicts", acme, "", ""); r.body["alerting"] != true {
		t.Errorf("alerting tenant: %s", r.raw)
	}
}
