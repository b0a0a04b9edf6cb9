package ingest_test

import (
	"context"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/anomaly"
	"github.com/usagemeter/metering/internal/storage/anomalydata"
)

// TestGetAnomalies: GET /v1/anomalies lists episodes newest first, a
// tenant key its own only, an admin or viewer key one tenant or all; meter,
// from, to and limit filter; the answer matches the OpenAPI schema, and
// bad parameters are 400.
func TestGetAnomalies(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	ctx := context.Background()
	h := time.Date(2026, 11, 21, 14, 0, 0, 0, time.UTC)
	sens, _ := anomaly.ParseSensitivity("4")
	add := func(tenant, meter string, dir anomaly.Direction, hour time.Time, observed int64, expected *big.Rat, score *big.Rat) string {
		s := anomaly.Series{Tenant: tenant, Meter: meter}
		a := anomaly.Anomaly{
			Episode:  anomaly.Episode{ID: anomaly.EpisodeID(s, dir, hour), Series: s, Direction: dir, Hour: hour, LastHour: hour},
			Observed: big.NewInt(observed), Expected: expected, Score: score, Sensitivity: sens, DetectedAt: hour.Add(70 * time.Minute),
		}
		if ok, err := anomalydata.Insert(ctx, e.db.Pool, a); err != nil || !ok {
			t.Fatalf("insert: %v %v", ok, err)
		}
		return a.ID
	}
	spike := add("acme", "api_calls", anomaly.Spike, h, 12040, big.NewRat(2361, 2), big.NewRat(6104, 100))
	drop := add("acme", "tokens", anomaly.Drop, h.Add(-48*time.Hour), 3, big.NewRat(900, 1), big.NewRat(-897, 90))
	other := add("globex", "api_calls", anomaly.Spike, h.Add(-time.Hour), 500, big.NewRat(20, 1), big.NewRat(24, 1))
	if err := anomalydata.End(ctx, e.db.Pool, anomaly.Ended{ID: drop, EndedAt: h.Add(-46 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	_, acme := e.createKey(`{"tenant":"acme"}`)
	_, viewer := e.createKey(`{"role":"viewer"}`)
	schemas := responseSchemas(t)
	c := newSchemaChecker(t)
	tests := []struct {
		name, url, key string
		status         int
		want           []string // ids in order, or the error code
	}{
		{"tenant key, own", "/v1/anomalies", acme, 200, []string{spike, drop}},
		{"tenant key, other tenant", "/v1/anomalies?tenant=globex", acme, 403, []string{"forbidden"}},
		{"viewer, every tenant", "/v1/anomalies", viewer, 200, []string{spike, other, drop}},
		{"admin, one tenant", "/v1/anomalies?tenant=globex", adminKey, 200, []string{other}},
		{"meter", "/v1/anomalies?meter=tokens", adminKey, 200, []string{drop}},
		{"from and to", "/v1/anomalies?from=2026-11-21T00:00:00Z&to=2026-11-21T14:00:00Z", adminKey, 200, []string{other}},
		{"limit", "/v1/anomalies?limit=1", viewer, 200, []string{spike}},
		{"bad limit", "/v1/anomalies?limit=0", viewer, 400, []string{"invalid_request"}},
		{"bad time", "/v1/anomalies?from=yesterday", viewer, 400, []string{"invalid_request"}},
		{"from after to", "/v1/anomalies?from=2026-11-22T00:00:00Z&to=2026-11-21T00:00:00Z", viewer, 400, []string{"invalid_request"}},
		{"bad meter", "/v1/anomalies?meter=a%20b", viewer, 400, []string{"invalid_request"}},
		{"no key", "/v1/anomalies", "", 401, []string{"unauthorized"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := e.do("GET", tt.url, tt.key, "", "")
			if r.status != tt.status {
				t.Fatalf("GET %s: %d %s, want %d", tt.url, r.status, r.raw, tt.status)
			}
			if tt.status != 200 {
				if !strings.Contains(r.raw, `"`+tt.want[0]+`"`) {
					t.Errorf("GET %s: %s, want error %s", tt.url, r.raw, tt.want[0])
				}
				return
			}
			last := -1
			for _, id := range tt.want {
				i := strings.Index(r.raw, `"id":"`+id+`"`)
				if i <= last {
					t.Errorf("GET %s: %s not listed after the previous id: %s", tt.url, id, r.raw)
				}
				last = i
			}
			if n := strings.Count(r.raw, `"id":`); n != len(tt.want) {
				t.Errorf("GET %s: %d episodes, want %d: %s", tt.url, n, len(tt.want), r.raw)
			}
			doc := schemas["GET /v1/anomalies 200"]
			if doc.Schema == nil {
				t.Fatal("no schema for GET /v1/anomalies 200")
			}
			for _, err := range c.check("$", doc.Schema, decodeJSON(t, r.raw)) {
				t.Errorf("GET %s: %s\n%s", tt.url, err, r.raw)
			}
		})
	}
	// The stored episode reads back as its message was written.
	r := e.do("GET", "/v1/anomalies?meter=api_calls&tenant=acme", acme, "", "")
	for _, w := range []string{`"type":"anomaly.spike"`, `"hour":"2026-11-21T14:00:00Z"`, `"observed":"12040"`, `"expected":"1180.5"`,
		`"score":"61.04"`, `"sensitivity":"4"`, `"detected_at":"2026-11-21T15:10:00Z"`, `"last_hour":"2026-11-21T14:00:00Z"`, `"ended_at":null`} {
		if !strings.Contains(r.raw, w) {
			t.Errorf("answer lacks %s: %s", w, r.raw)
		}
	}
	if r := e.do("GET", "/v1/anomalies?meter=tokens", acme, "", ""); !strings.Contains(r.raw, `"ended_at":"2026-11-19T16:00:00Z"`) || !strings.Contains(r.raw, `"type":"anomaly.drop"`) || !strings.Contains(r.raw, `"score":"-9.97"`) {
		t.Errorf("ended drop: %s", r.raw)
	}
}
