package ingest_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestLineageRoutes: a push's summary and the events it carried (NDJSON),
// an event's push, a tenant key limited to its own tenant, and a defined
// meter's push refused with the reason.
func TestLineageRoutes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	_, acme := e.createKey(`{"tenant":"acme"}`)
	_, other := e.createKey(`{"tenant":"other"}`)
	e.db.LedgerEventsWritable(t)
	e.db.Exec(t, `INSERT INTO ledger_events (tenant, event_id, payload_hash, metric, value, event_time, event_day, src_partition, src_offset) VALUES
		('acme', 'e1', 0, 'api_calls', 3, '2026-11-21T09:00:00Z', '2026-11-21', 0, 7),
		('acme', 'e2', 0, 'api_calls', 4, '2026-11-21T10:00:00Z', '2026-11-21', 1, 9)`)
	e.db.Exec(t, `INSERT INTO billing_pushes (tenant, metric, period_start, billed_period_start, stripe_customer_id, event_name, cumulative_total, delta,
			identifier, event_timestamp, metered_snapshot) VALUES
		('acme', 'api_calls', '2026-11-01T00:00:00Z', '2026-11-01T00:00:00Z', 'cus_a', 'api_calls', 7, 7, 'mu_first', now(), pg_current_snapshot())`)
	// An event and an adjustment (its ledger dedup row and its row in
	// usage_adjustments, as the aggregator writes them) after the first push.
	e.db.Exec(t, `INSERT INTO ledger_events (tenant, event_id, payload_hash, metric, value, event_time, event_day, src_partition, src_offset) VALUES
		('acme', 'e3', 0, 'api_calls', 5, '2026-11-22T09:00:00Z', '2026-11-22', 0, 8),
		('acme', E'\u0394adjustment:a1', 0, 'api_calls', 6, '2026-11-30T23:59:59Z', '2026-11-30', 2, 3)`)
	e.db.Exec(t, `INSERT INTO usage_adjustments (tenant, adjustment_id, meter, group_key, period_start, amount, reason, reference, src_partition, src_offset, recorded_at)
		VALUES ('acme', 'a1', 'api_calls', '', '2026-11-01T00:00:00Z', 6, 'refund', 'T-1', 2, 3, '2026-11-23T00:00:00Z')`)
	e.db.Exec(t, `INSERT INTO billing_pushes (tenant, metric, period_start, billed_period_start, stripe_customer_id, event_name, cumulative_total, delta,
			identifier, event_timestamp, metered_snapshot) VALUES
		('acme', 'api_calls', '2026-11-01T00:00:00Z', '2026-11-01T00:00:00Z', 'cus_a', 'api_calls', 18, 11, 'mu_second', now(), pg_current_snapshot())`)
	e.db.Exec(t, `INSERT INTO meters (name, metric, aggregation, group_by, version) VALUES ('tokens_by_model', 'tokens', 'sum', '{model}', 1)`)
	e.db.Exec(t, `INSERT INTO billing_pushes (tenant, metric, period_start, billed_period_start, stripe_customer_id, event_name, cumulative_total, delta,
			identifier, event_timestamp, group_key, metered_snapshot) VALUES
		('acme', 'tokens_by_model', '2026-11-01T00:00:00Z', '2026-11-01T00:00:00Z', 'cus_a', 'tokens_o1', 1, 1, 'mu_grouped', now(), '["o1"]', pg_current_snapshot())`)
	e.db.Exec(t, `INSERT INTO billing_pushes (tenant, metric, period_start, billed_period_start, stripe_customer_id, event_name, cumulative_total, delta,
			identifier, event_timestamp, group_key, metered_snapshot) VALUES
		('acme', 'gone_meter', '2026-11-01T00:00:00Z', '2026-11-01T00:00:00Z', 'cus_a', 'gone', 1, 1, 'mu_gone', now(), '["x"]', pg_current_snapshot())`)
	get := func(path, key string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", e.srv.URL+path, nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	code, body := get("/v1/lineage/pushes/mu_second", acme)
	var summary struct {
		Tenant, Meter  string
		Cumulative     string `json:"cumulative_total"`
		PrevIdentifier string `json:"previous_identifier"`
		PrevCumulative string `json:"previous_cumulative_total"`
		Complete       bool
		Windows        []struct{ Window, Start string }
	}
	if err := json.Unmarshal([]byte(body), &summary); err != nil || code != 200 || summary.PrevIdentifier != "mu_first" || summary.PrevCumulative != "7" || summary.Cumulative != "18" ||
		!summary.Complete || len(summary.Windows) != 1 || summary.Windows[0].Start != "2026-11-01T00:00:00Z" {
		t.Fatalf("summary: %d %s", code, body)
	}
	code, body = get("/v1/lineage/pushes/mu_second/events", acme)
	if want := `{"kind":"event","id":"e3","value":5,"time":"2026-11-22T09:00:00Z","partition":0,"offset":8}` + "\n" +
		`{"kind":"adjustment","id":"a1","value":6,"time":"2026-11-23T00:00:00Z","partition":2,"offset":3}` + "\n"; code != 200 || body != want {
		t.Fatalf("second push's events: %d %q, want %q", code, body, want)
	}
	code, body = get("/v1/lineage/pushes/mu_first/events?format=csv", adminKey)
	if want := `"kind","id","value","time","partition","offset"` + "\n" + `"event","e1","3","2026-11-21T09:00:00Z","0","7"` + "\n" + `"event","e2","4","2026-11-21T10:00:00Z","1","9"` + "\n"; code != 200 || body != want {
		t.Fatalf("first push's events as CSV: %d %q, want %q", code, body, want)
	}
	// The adjustment's ledger row is neither an export's event nor an event's lineage.
	if code, body := get("/v1/exports/events?tenant=acme&from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z", adminKey); code != 200 || strings.Count(body, "\n") != 3 || strings.Contains(body, "adjustment") {
		t.Fatalf("export: %d %s, want the three events only", code, body)
	}
	if code, body := get("/v1/lineage/events/%CE%94adjustment:a1?tenant=acme", adminKey); code != 404 {
		t.Fatalf("lineage of an adjustment's ledger row: %d %s, want 404", code, body)
	}
	code, body = get("/v1/lineage/events/e2?tenant=acme", adminKey)
	if code != 200 || !strings.Contains(body, `"push":{"identifier":"mu_first"`) || !strings.Contains(body, `"window":"month","start":"2026-11-01T00:00:00Z"`) {
		t.Fatalf("event lineage: %d %s", code, body)
	}
	for _, tt := range []struct {
		name, path, key string
		status          int
		msg             string
	}{
		{"another tenant's push", "/v1/lineage/pushes/mu_first", other, 404, "no push"},
		{"an unknown push", "/v1/lineage/pushes/mu_nope/events", adminKey, 404, "no push"},
		{"a defined meter's push", "/v1/lineage/pushes/mu_grouped/events", adminKey, 200, `{"kind":"end","complete":true,"events":0,"adjustments":0,"unreadable":0}`},
		{"a push of a meter no longer defined", "/v1/lineage/pushes/mu_gone", adminKey, 422, "no longer defined"},
		{"a bad format", "/v1/lineage/pushes/mu_first/events?format=xml", adminKey, 400, "format"},
		{"an unknown event", "/v1/lineage/events/nope?tenant=acme", adminKey, 404, "no counted event"},
		{"another tenant's event", "/v1/lineage/events/e1?tenant=acme", other, 403, "cannot read"},
		{"no key", "/v1/lineage/pushes/mu_first", "", 401, ""},
	} {
		code, body := get(tt.path, tt.key)
		if code != tt.status || !strings.Contains(body, tt.msg) {
			t.Errorf("%s: %d %s, want %d with %q", tt.name, code, body, tt.status, tt.msg)
		}
	}
}
