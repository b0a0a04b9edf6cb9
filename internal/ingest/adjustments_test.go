package ingest_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/recordsign"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/kafkatest"
	"github.com/usagemeter/metering/internal/topics"
)

func TestPostAdjustmentPutsAnAdjustmentRecordOnTheLog(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.do("PUT", "/v1/admin/tenants/acme", adminKey, "application/json", `{}`)
	e.db.Exec(t, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events)
		VALUES ('acme', 'api_calls', '', 'month', '2026-11-01T00:00:00Z', 100, 3)`)
	e.do("PUT", "/v1/admin/meters/peak", adminKey, "application/json", `{"metric":"cpu","aggregation":"max"}`)
	e.do("PUT", "/v1/admin/meters/by_model", adminKey, "application/json", `{"metric":"tokens","aggregation":"sum","group_by":["model"]}`)

	const id = "8d3c2b1a-0f9e-4d8c-b7a6-5e4d3c2b1a09"
	body := `{"id":"` + id + `","tenant":"acme","meter":"api_calls","group":{},"period":"2026-11","amount":-30,"reason":"refund","reference":"T-9"}`
	for range 2 { // a retry with the same id: the aggregator counts it once
		if r := e.do("POST", "/v1/admin/adjustments", adminKey, "application/json", body); r.status != http.StatusAccepted || r.body["id"] != id {
			t.Fatalf("POST = %d %s", r.status, r.raw)
		}
	}
	r := e.do("POST", "/v1/admin/adjustments", adminKey, "application/json",
		`{"tenant":"acme","meter":"by_model","group":{"model":"gpt"},"period":"2026-11","amount":5,"reason":"","reference":""}`)
	if r.status != http.StatusAccepted || len(r.body["id"].(string)) != 36 {
		t.Fatalf("POST without id = %d %s", r.status, r.raw)
	}
	msgs := kafkatest.ReadAll(t, e.kc.Brokers(), topics.UsageEvents)
	if len(msgs) != 3 {
		t.Fatalf("%d records on usage.events, want 3", len(msgs))
	}
	for _, m := range msgs {
		names := make([]string, len(m.Headers))
		for i, h := range m.Headers {
			names[i] = h.Key
		}
		if string(m.Key) != "acme" || strings.Join(names, ",") != "kind,signature,signature-key,signature-time" ||
			m.Headers[0].Key != rollup.HeaderKind || string(m.Headers[0].Value) != rollup.KindAdjustment {
			t.Fatalf("record key %q headers %+v", m.Key, m.Headers)
		}
		if _, err := rollup.DecodeAdjustment(m.Value); err != nil {
			t.Fatalf("record value %s: %v", m.Value, err)
		}
		// Signed with ingest's signing key: the aggregator's policy accepts it.
		rec := rollup.Record{Key: m.Key, Value: m.Value}
		for _, h := range m.Headers {
			rec.Headers = append(rec.Headers, rollup.Header{Key: h.Key, Value: h.Value})
		}
		if err := rollup.VerifyAdjustment(recordsign.Policy{Keys: testAdjustmentKeys}, rec); err != nil {
			t.Fatalf("record signature: %v", err)
		}
	}

	for _, c := range []struct {
		name, key, body string
		status          int
	}{
		{"not admin", "mk_nope", body, http.StatusUnauthorized},
		{"amount 0", adminKey, strings.Replace(body, "-30", "0", 1), http.StatusBadRequest},
		{"bad period", adminKey, strings.Replace(body, "2026-11", "2026-13", 1), http.StatusBadRequest},
		{"bad id", adminKey, strings.Replace(body, id, "x", 1), http.StatusBadRequest},
		{"unknown tenant", adminKey, strings.Replace(body, `"acme"`, `"nobody"`, 1), http.StatusNotFound},
		{"unknown metric", adminKey, strings.Replace(body, "api_calls", "nothing", 1), http.StatusNotFound},
		{"max meter", adminKey, strings.Replace(body, "api_calls", "peak", 1), http.StatusBadRequest},
		{"group on implicit", adminKey, strings.Replace(body, `{}`, `{"a":"b"}`, 1), http.StatusBadRequest},
		{"wrong group", adminKey, strings.Replace(body, `"api_calls","group":{}`, `"by_model","group":{"region":"eu"}`, 1), http.StatusBadRequest},
		{"unknown field", adminKey, strings.Replace(body, `"reason"`, `"why"`, 1), http.StatusBadRequest},
	} {
		if r := e.do("POST", "/v1/admin/adjustments", c.key, "application/json", c.body); r.status != c.status {
			t.Errorf("%s: %d %s, want %d", c.name, r.status, r.raw, c.status)
		}
	}
	if n := len(kafkatest.ReadAll(t, e.kc.Brokers(), topics.UsageEvents)); n != 3 {
		t.Errorf("refused adjustments wrote records: %d", n)
	}

	// The list reads what the aggregator applied.
	if _, err := usagedata.RecordAdjustment(context.Background(), e.db.Pool, usagedata.Adjustment{Tenant: "acme", ID: id, Meter: "api_calls",
		PeriodStart: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), Amount: -30, Reason: "refund", Reference: "T-9", Offset: 7}); err != nil {
		t.Fatal(err)
	}
	r = e.do("GET", "/v1/admin/adjustments?tenant=acme&period=2026-11", adminKey, "", "")
	list, _ := r.body["adjustments"].([]any)
	if r.status != http.StatusOK || len(list) != 1 || list[0].(map[string]any)["amount"] != float64(-30) {
		t.Fatalf("GET = %d %s", r.status, r.raw)
	}
	r = e.do("GET", "/v1/admin/adjustments?tenant=acme&period=2026-10", adminKey, "", "")
	if list, _ := r.body["adjustments"].([]any); r.status != http.StatusOK || len(list) != 0 {
		t.Fatalf("GET another month = %d %s", r.status, r.raw)
	}
	if r := e.do("GET", "/v1/admin/adjustments?period=11-2026", adminKey, "", ""); r.status != http.StatusBadRequest {
		t.Errorf("GET bad period = %d", r.status)
	}
}

// TestAdjustmentsNeedASigningKey: without ADJUSTMENT_SIGNING_KEYS ingest
// refuses adjustments (503 adjustments_not_configured) and writes
// nothing; with ALLOW_UNSIGNED_ADJUSTMENTS (development) it writes them
// unsigned.
func TestAdjustmentsNeedASigningKey(t *testing.T) {
	t.Parallel()
	body := `{"tenant":"acme","meter":"api_calls","group":{},"period":"2026-11","amount":-30}`
	for _, c := range []struct {
		name    string
		opts    envOpts
		status  int
		headers int
	}{
		{"no key", envOpts{noAdjustmentKeys: true}, http.StatusServiceUnavailable, 0},
		{"unsigned allowed", envOpts{noAdjustmentKeys: true, allowUnsignedAdjustments: true}, http.StatusAccepted, 1},
		{"a key signs even when unsigned ones are allowed", envOpts{allowUnsignedAdjustments: true}, http.StatusAccepted, 4},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, c.opts)
			e.do("PUT", "/v1/admin/tenants/acme", adminKey, "application/json", `{}`)
			e.db.Exec(t, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events)
				VALUES ('acme', 'api_calls', '', 'month', '2026-11-01T00:00:00Z', 100, 3)`)
			r := e.do("POST", "/v1/admin/adjustments", adminKey, "application/json", body)
			if r.status != c.status {
				t.Fatalf("POST = %d %s, want %d", r.status, r.raw, c.status)
			}
			if errBody, _ := r.body["error"].(map[string]any); c.status == http.StatusServiceUnavailable && errBody["code"] != "adjustments_not_configured" {
				t.Errorf("POST = %s, want error adjustments_not_configured", r.raw)
			}
			msgs := kafkatest.ReadAll(t, e.kc.Brokers(), topics.UsageEvents)
			if c.headers == 0 {
				if len(msgs) != 0 {
					t.Fatalf("%d records written without a signing key", len(msgs))
				}
				return
			}
			if len(msgs) != 1 || len(msgs[0].Headers) != c.headers {
				t.Fatalf("records %+v, want one with %d headers", msgs, c.headers)
			}
		})
	}
}
