package ingest_test

import (
	"io"
	"net/http"
	"testing"
)

// TestExports: counted events and stored windows stream as NDJSON or
// CSV, in order, with what a dispute needs (partition, offset, group),
// readable by a tenant key for its own tenant only; bad queries are 400.
func TestExports(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	_, acme := e.createKey(`{"tenant":"acme"}`)
	_, other := e.createKey(`{"tenant":"other"}`)
	e.db.LedgerEventsWritable(t)
	e.db.Exec(t, `INSERT INTO ledger_events (tenant, event_id, payload_hash, metric, value, event_time, event_day, src_partition, src_offset, recorded_at) VALUES
		('acme', 'e2', 0, 'tokens', 250, '2026-11-21T10:00:00Z', '2026-11-21', 1, 41, '2026-11-21T10:00:01Z'),
		('acme', 'e1', 0, 'api_calls', 1, '2026-11-21T09:00:00Z', '2026-11-21', 0, 7, '2026-11-21T09:00:01Z'),
		('acme', 'e"3', 0, 'tokens', 5, '2026-11-21T10:00:00Z', '2026-11-21', 1, 42, '2026-11-21T10:00:01Z'),
		('acme', 'old', 0, 'tokens', 9, '2026-11-19T10:00:00Z', '2026-11-19', 1, 2, '2026-11-19T10:00:01Z'),
		('other', 'x', 0, 'tokens', 9, '2026-11-21T10:00:00Z', '2026-11-21', 1, 3, '2026-11-21T10:00:01Z')`)
	e.db.Exec(t, `INSERT INTO meters (name, metric, aggregation, group_by, version) VALUES ('tokens_by_model', 'tokens', 'sum', '{model}', 1)`)
	e.db.Exec(t, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events) VALUES
		('acme', 'tokens_by_model', '["o1"]', 'hour', '2026-11-21T10:00:00Z', 5, 1),
		('acme', 'tokens_by_model', '["gpt-4"]', 'hour', '2026-11-21T10:00:00Z', 250, 1),
		('acme', 'tokens_by_model', '[null]', 'hour', '2026-11-21T11:00:00Z', 123456789012345678901234567890, 2),
		('acme', 'tokens', '', 'hour', '2026-11-21T10:00:00Z', 255, 2),
		('acme', 'tokens', '', 'day', '2026-11-21T00:00:00Z', 255, 2)`)
	rng := "&from=2026-11-21T00:00:00Z&to=2026-11-22T00:00:00Z"

	tests := []struct {
		name, path, key string
		status          int
		contentType     string
		want            string
	}{
		{"events as NDJSON, in time then id order", "/v1/exports/events?tenant=acme" + rng, adminKey, 200, "application/x-ndjson",
			`{"id":"e1","tenant":"acme","metric":"api_calls","value":1,"time":"2026-11-21T09:00:00Z","partition":0,"offset":7,"recorded_at":"2026-11-21T09:00:01Z"}` + "\n" +
				`{"id":"e\"3","tenant":"acme","metric":"tokens","value":5,"time":"2026-11-21T10:00:00Z","partition":1,"offset":42,"recorded_at":"2026-11-21T10:00:01Z"}` + "\n" +
				`{"id":"e2","tenant":"acme","metric":"tokens","value":250,"time":"2026-11-21T10:00:00Z","partition":1,"offset":41,"recorded_at":"2026-11-21T10:00:01Z"}` + "\n"},
		{"events of one metric as CSV, by the tenant's own key", "/v1/exports/events?metric=api_calls&format=csv" + rng, acme, 200, "text/csv; charset=utf-8",
			`"id","tenant","metric","value","time","partition","offset","recorded_at"` + "\n" +
				`"e1","acme","api_calls","1","2026-11-21T09:00:00Z","0","7","2026-11-21T09:00:01Z"` + "\n"},
		{"an empty CSV export has its header", "/v1/exports/events?tenant=acme&format=csv&from=2026-10-01T00:00:00Z&to=2026-10-02T00:00:00Z", adminKey, 200, "text/csv; charset=utf-8",
			`"id","tenant","metric","value","time","partition","offset","recorded_at"` + "\n"},
		{"windows of a grouped meter, exact", "/v1/exports/windows?tenant=acme&meter=tokens_by_model" + rng, adminKey, 200, "application/x-ndjson",
			`{"tenant":"acme","meter":"tokens_by_model","group":{"model":"gpt-4"},"window":"hour","start":"2026-11-21T10:00:00Z","end":"2026-11-21T11:00:00Z","value":250,"events":1}` + "\n" +
				`{"tenant":"acme","meter":"tokens_by_model","group":{"model":"o1"},"window":"hour","start":"2026-11-21T10:00:00Z","end":"2026-11-21T11:00:00Z","value":5,"events":1}` + "\n" +
				`{"tenant":"acme","meter":"tokens_by_model","group":{"model":null},"window":"hour","start":"2026-11-21T11:00:00Z","end":"2026-11-21T12:00:00Z","value":123456789012345678901234567890,"events":2}` + "\n"},
		{"a metric's implicit meter by day, as CSV", "/v1/exports/windows?tenant=acme&metric=tokens&window=day&format=csv" + rng, adminKey, 200, "text/csv; charset=utf-8",
			`"tenant","meter","group","window","start","end","value","events"` + "\n" +
				`"acme","tokens","{}","day","2026-11-21T00:00:00Z","2026-11-22T00:00:00Z","255","2"` + "\n"},
		{"another tenant's key", "/v1/exports/events?tenant=acme" + rng, other, 403, "", ""},
		{"no tenant with an admin key", "/v1/exports/events?" + rng[1:], adminKey, 400, "", ""},
		{"a bad format", "/v1/exports/events?tenant=acme&format=xlsx", adminKey, 400, "", ""},
		{"from after to", "/v1/exports/events?tenant=acme&from=2026-11-22T00:00:00Z&to=2026-11-21T00:00:00Z", adminKey, 400, "", ""},
		{"both meter and metric", "/v1/exports/windows?tenant=acme&meter=a&metric=b", adminKey, 400, "", ""},
		{"neither meter nor metric", "/v1/exports/windows?tenant=acme", adminKey, 400, "", ""},
		{"a bad window", "/v1/exports/windows?tenant=acme&metric=tokens&window=week", adminKey, 400, "", ""},
	}
	get := func(path, key string) (int, http.Header, string) {
		t.Helper()
		req, err := http.NewRequest("GET", e.srv.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, resp.Header, string(raw)
	}
	for _, tt := range tests {
		var r response
		r.status, r.header, r.raw = get(tt.path, tt.key)
		if r.status != tt.status {
			t.Errorf("%s: %d %s, want %d", tt.name, r.status, r.raw, tt.status)
			continue
		}
		if tt.status != 200 {
			continue
		}
		if ct := r.header.Get("Content-Type"); ct != tt.contentType {
			t.Errorf("%s: Content-Type %q, want %q", tt.name, ct, tt.contentType)
		}
		if r.raw != tt.want {
			t.Errorf("%s:\n%s\nwant\n%s", tt.name, r.raw, tt.want)
		}
	}
}
