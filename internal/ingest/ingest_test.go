package ingest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/auth"
	"github.com/usagemeter/metering/internal/httpguard"
	"github.com/usagemeter/metering/internal/ingest"
	"github.com/usagemeter/metering/internal/kafkalog"
	"github.com/usagemeter/metering/internal/publish"
	"github.com/usagemeter/metering/internal/ratelimit"
	"github.com/usagemeter/metering/internal/recordsign"
	"github.com/usagemeter/metering/internal/service"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/kafkatest"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/topics"
)

const adminKey = "test-admin-key"

type env struct {
	t        testing.TB
	db       *pgtest.DB
	srv      *httptest.Server
	kc       *kafkatest.Cluster
	store    *accounts.Store
	producer *events.Producer
}

type envOpts struct {
	keyRate, ipRate   float64
	keyBurst, ipBurst int
	maxBody           int64
	publishTimeout    time.Duration
	now               func() time.Time // nil: time.Now
	largeBodies       httpguard.BodyLimits
	// adjustmentKeys sign adjustments; nil: testAdjustmentKeys, unless
	// noAdjustmentKeys.
	adjustmentKeys           *recordsign.Keyring
	noAdjustmentKeys         bool
	allowUnsignedAdjustments bool
}

// testAdjustmentKeys sign the adjustments ingest writes in these tests.
var testAdjustmentKeys = func() *recordsign.Keyring {
	k, err := recordsign.ParseKeys("ingest-test=" + strings.Repeat("k", 32))
	if err != nil {
		panic(err)
	}
	return k
}()

func newEnv(t testing.TB, o envOpts) *env {
	t.Helper()
	if o.keyRate == 0 {
		o.keyRate, o.keyBurst = 1e6, 1e6
	}
	if o.ipRate == 0 {
		o.ipRate, o.ipBurst = 1e6, 1e6
	}
	if o.maxBody == 0 {
		o.maxBody = 5 << 20
	}
	if o.publishTimeout == 0 {
		o.publishTimeout = 5 * time.Second
	}
	if o.adjustmentKeys == nil && !o.noAdjustmentKeys {
		o.adjustmentKeys = testAdjustmentKeys
	}
	db := pgtest.New(t)
	kc := kafkatest.Start(t)
	kc.CreateTopic(t, topics.UsageEvents, 4)
	producer, err := events.NewProducer(events.ProducerConfig{Brokers: kc.Brokers(), BackoffMin: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond, MaxAttempts: 1000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { producer.Close() })
	st := accounts.New(db.Pool)
	reg := prometheus.NewRegistry()
	api := ingest.New(ingest.Options{
		Store:                    st,
		Auth:                     auth.New(st, adminKey),
		Publisher:                publish.New(producer, 10000, o.publishTimeout),
		Adjustments:              kafkalog.NewWriter(kc.Brokers(), nil),
		Log:                      kafkalog.Cluster{Brokers: kc.Brokers()},
		AdjustmentKeys:           o.adjustmentKeys,
		AllowUnsignedAdjustments: o.allowUnsignedAdjustments,
		Usage:                    usagedata.NewReader(db.Pool),
		DB:                       db.Pool,
		KeyLimiter:               ratelimit.New(o.keyRate, o.keyBurst),
		IPLimiter:                ratelimit.New(o.ipRate, o.ipBurst),
		MaxBodyBytes:             o.maxBody,
		LargeBodies:              o.largeBodies,
		Logger:                   slog.New(slog.DiscardHandler),
		Registry:                 reg,
		Now:                      o.now,
	})
	mux := http.NewServeMux()
	service.Mount(mux, reg, map[string]service.Check{"postgres": st.Ping})
	srv := httptest.NewServer(api.Handler(mux))
	t.Cleanup(srv.Close)
	return &env{t: t, db: db, srv: srv, kc: kc, store: st, producer: producer}
}

type response struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
}

func (e *env) do(method, path, key, contentType, body string) response {
	e.t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	r := response{status: resp.StatusCode, header: resp.Header, raw: string(raw)}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &r.body); err != nil {
			e.t.Fatalf("%s %s: response is not a JSON object: %q", method, path, raw)
		}
	}
	return r
}

func (e *env) createKey(body string) (id, key string) {
	e.t.Helper()
	// Keys are only for existing tenants: create the tenant if missing.
	var b struct {
		Tenant string `json:"tenant"`
	}
	if json.Unmarshal([]byte(body), &b) == nil && b.Tenant != "" {
		if r := e.do("GET", "/v1/admin/tenants/"+b.Tenant, adminKey, "", ""); r.status == http.StatusNotFound {
			if r := e.do("PUT", "/v1/admin/tenants/"+b.Tenant, adminKey, "application/json", `{}`); r.status != http.StatusOK {
				e.t.Fatalf("creating tenant %s: %d %s", b.Tenant, r.status, r.raw)
			}
		}
	}
	r := e.do("POST", "/v1/admin/keys", adminKey, "application/json", body)
	if r.status != http.StatusCreated {
		e.t.Fatalf("creating key %s: %d %s", body, r.status, r.raw)
	}
	return r.body["id"].(string), r.body["key"].(string)
}

func (e *env) published() []kafka.Message {
	return kafkatest.ReadAll(e.t, e.kc.Brokers(), topics.UsageEvents)
}

func errorCode(r response) string {
	if m, ok := r.body["error"].(map[string]any); ok {
		if msg, _ := m["message"].(string); msg == "" {
			return "(no message)"
		}
		return m["code"].(string)
	}
	return ""
}

func eventJSON(id, tenant string, value int64) string {
	e := events.Event{ID: id, Tenant: tenant, Metric: "api_calls", Value: value, Time: time.Now().UTC().Truncate(time.Millisecond),
		Source: "test", Properties: map[string]string{"region": "eu"}}
	return string(e.AppendJSON(nil))
}

func TestPostEventsPublishesExactlyTheInput(t *testing.T) {
	e := newEnv(t, envOpts{})
	_, acme := e.createKey(`{"tenant":"acme"}`)
	var lines []string
	for i := range 25 {
		lines = append(lines, eventJSON(fmt.Sprint("evt-", i), "acme", int64(i)))
	}
	r := e.do("POST", "/v1/events", acme, "application/json", "["+strings.Join(lines, ",")+"]")
	if r.status != http.StatusAccepted || r.body["accepted"] != float64(25) {
		t.Fatalf("POST = %d %s, want 202 {accepted:25}", r.status, r.raw)
	}
	want := map[string]bool{}
	for _, l := range lines {
		want[l] = true
	}
	msgs := e.published()
	if len(msgs) != len(lines) {
		t.Fatalf("%d messages in the topic, want %d", len(msgs), len(lines))
	}
	for _, m := range msgs {
		if string(m.Key) != "acme" {
			t.Errorf("key = %q, want acme", m.Key)
		}
		if !want[string(m.Value)] {
			t.Errorf("published %s, which is not byte-equal to any input", m.Value)
		}
		delete(want, string(m.Value))
	}
}

func TestEveryFormatAndTheSDKPublishTheSameBytes(t *testing.T) {
	e := newEnv(t, envOpts{})
	ev := events.Event{ID: "same-1", Tenant: "acme", Metric: "tokens", Value: 1500,
		Time: time.Now().UTC().Truncate(time.Millisecond), Source: "svc", Properties: map[string]string{"model": "small"}}
	canon := string(ev.AppendJSON(nil))
	ce, _ := ev.AppendCloudEvent(nil)
	if err := e.producer.Emit(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	requests := []struct{ contentType, body string }{
		{"application/json", canon},
		{"application/json", "[" + canon + "]"},
		{"application/x-ndjson", canon + "\n"},
		{"application/cloudevents+json", string(ce)},
		{"application/cloudevents-batch+json", "[" + string(ce) + "]"},
		// Same event, different spelling: offset time and other key order.
		{"application/json", fmt.Sprintf(`{"properties":{"model":"small"},"source":"svc","time":%q,"value":1500,"metric":"tokens","tenant":"acme","id":"same-1"}`,
			ev.Time.In(time.FixedZone("X", -5*3600)).Format(time.RFC3339Nano))},
	}
	for _, req := range requests {
		if r := e.do("POST", "/v1/events", adminKey, req.contentType, req.body); r.status != http.StatusAccepted {
			t.Fatalf("%s: %d %s", req.contentType, r.status, r.raw)
		}
	}
	msgs := e.published()
	if len(msgs) != 1+len(requests) {
		t.Fatalf("%d messages, want %d", len(msgs), 1+len(requests))
	}
	for _, m := range msgs {
		if string(m.Value) != canon || string(m.Key) != "acme" {
			t.Errorf("message %s/%s differs from the SDK's %s", m.Key, m.Value, canon)
		}
	}
}

func TestMixedBatchPublishesNothing(t *testing.T) {
	e := newEnv(t, envOpts{})
	good := eventJSON("g1", "acme", 1)
	bad1 := `{"id":"b1","tenant":"acme","metric":"api_calls","value":1.5,"time":"2026-11-21T19:00:00Z"}`
	bad2 := `{"id":"","tenant":"ac me","metric":"api_calls","value":1,"time":"` + time.Now().UTC().Format(time.RFC3339) + `"}`
	r := e.do("POST", "/v1/events", adminKey, "application/json", "["+good+","+bad1+","+good+","+bad2+"]")
	if r.status != http.StatusBadRequest {
		t.Fatalf("status = %d %s, want 400", r.status, r.raw)
	}
	errs, _ := r.body["errors"].([]any)
	var got []string
	for _, x := range errs {
		fe := x.(map[string]any)
		if fe["message"] == "" {
			t.Errorf("error without message: %v", fe)
		}
		got = append(got, fmt.Sprintf("%v:%v", fe["index"], fe["field"]))
	}
	if want := "1:value 3:id 3:tenant"; strings.Join(got, " ") != want {
		t.Fatalf("errors = %v, want %s", got, want)
	}
	if msgs := e.published(); len(msgs) != 0 {
		t.Fatalf("%d messages published from a rejected batch", len(msgs))
	}
}

func TestErrorClasses(t *testing.T) {
	e := newEnv(t, envOpts{maxBody: 64 << 10})
	acmeID, acme := e.createKey(`{"tenant":"acme"}`)
	_, viewer := e.createKey(`{"role":"viewer"}`)
	revokedID, revoked := e.createKey(`{"tenant":"acme"}`)
	if r := e.do("DELETE", "/v1/admin/keys/"+revokedID, adminKey, "", ""); r.status != http.StatusNoContent {
		t.Fatalf("revoke: %d %s", r.status, r.raw)
	}
	_ = acmeID
	ok := eventJSON("e1", "acme", 1)
	big := "[" + strings.TrimSuffix(strings.Repeat(ok+",", 1+(64<<10)/len(ok)), ",") + "]"
	tooMany := "[" + strings.TrimSuffix(strings.Repeat(`{"id":"x"},`, 1001), ",") + "]"
	tests := []struct {
		name, key, contentType, body string
		status                       int
		code                         string
	}{
		{"no key", "", "application/json", ok, 401, "unauthorized"},
		{"unknown key", "mk_nope", "application/json", ok, 401, "unauthorized"},
		{"revoked key", revoked, "application/json", ok, 401, "unauthorized"},
		{"viewer cannot write", viewer, "application/json", ok, 403, "forbidden"},
		{"another tenant's events", acme, "application/json", "[" + ok + "," + eventJSON("e2", "globex", 1) + "]", 403, "forbidden"},
		{"body over the limit", acme, "application/json", big, 413, "payload_too_large"},
		{"over 1000 events", acme, "application/json", tooMany, 413, events.CodeTooMany},
		{"wrong content type", acme, "text/plain", ok, 415, "unsupported_media_type"},
		{"not JSON", acme, "application/json", "{nope", 400, events.CodeMalformed},
		{"empty body", acme, "application/json", "", 400, events.CodeEmpty},
		{"invalid UTF-8", acme, "application/json", "{\"id\":\"\xff\"}", 400, events.CodeInvalidUTF8},
		{"unknown route", acme, "", "", 404, "not_found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := "/v1/events"
			method := "POST"
			if tt.status == 404 {
				path, method = "/v1/nowhere", "GET"
			}
			r := e.do(method, path, tt.key, tt.contentType, tt.body)
			if r.status != tt.status || errorCode(r) != tt.code {
				t.Fatalf("got %d %s, want %d code %s", r.status, r.raw, tt.status, tt.code)
			}
			if tt.status == 401 && r.header.Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
		})
	}
	if msgs := e.published(); len(msgs) != 0 {
		t.Fatalf("%d messages published by rejected requests", len(msgs))
	}
	// The key works until revoked, and fails on the very next request.
	if r := e.do("POST", "/v1/events", acme, "", ok); r.status != 202 {
		t.Fatalf("before revoke: %d %s", r.status, r.raw)
	}
	if r := e.do("DELETE", "/v1/admin/keys/"+acmeID, adminKey, "", ""); r.status != 204 {
		t.Fatalf("revoke: %d", r.status)
	}
	if r := e.do("POST", "/v1/events", acme, "", ok); r.status != 401 {
		t.Fatalf("after revoke: %d %s, want 401", r.status, r.raw)
	}
}

func TestRateLimits(t *testing.T) {
	t.Run("per key, in events", func(t *testing.T) {
		e := newEnv(t, envOpts{keyRate: 1, keyBurst: 10})
		_, acme := e.createKey(`{"tenant":"acme"}`)
		batch := func(n int, prefix string) string {
			var ls []string
			for i := range n {
				ls = append(ls, eventJSON(fmt.Sprint(prefix, i), "acme", 1))
			}
			return "[" + strings.Join(ls, ",") + "]"
		}
		r := e.do("POST", "/v1/events", acme, "", batch(8, "a"))
		if r.status != 202 || r.header.Get("RateLimit-Limit") != "10" || r.header.Get("RateLimit-Remaining") != "2" {
			t.Fatalf("first batch: %d %v %s", r.status, r.header, r.raw)
		}
		r = e.do("POST", "/v1/events", acme, "", batch(3, "b"))
		if r.status != 429 || errorCode(r) != "rate_limited" || r.header.Get("Retry-After") != "1" || r.header.Get("RateLimit-Remaining") != "2" {
			t.Fatalf("over the limit: %d %v %s", r.status, r.header, r.raw)
		}
		r = e.do("POST", "/v1/events", acme, "", batch(11, "c"))
		if r.status != 429 || !strings.Contains(r.raw, "smaller batches") {
			t.Fatalf("batch above burst: %d %s", r.status, r.raw)
		}
		// Another key has its own bucket.
		_, other := e.createKey(`{"tenant":"acme"}`)
		if r := e.do("POST", "/v1/events", other, "", batch(10, "d")); r.status != 202 {
			t.Fatalf("second key: %d %s", r.status, r.raw)
		}
		if n := len(e.published()); n != 18 {
			t.Fatalf("%d published, want 18 (8 + 10)", n)
		}
	})
	t.Run("per IP, in requests", func(t *testing.T) {
		e := newEnv(t, envOpts{ipRate: 0.001, ipBurst: 3})
		for i := range 3 {
			if r := e.do("GET", "/v1/admin/plans", adminKey, "", ""); r.status != 200 {
				t.Fatalf("request %d: %d %s", i, r.status, r.raw)
			}
		}
		r := e.do("POST", "/v1/events", adminKey, "", eventJSON("x", "acme", 1))
		if r.status != 429 || r.header.Get("Retry-After") == "" || errorCode(r) != "rate_limited" {
			t.Fatalf("4th request: %d %v %s", r.status, r.header, r.raw)
		}
		if r := e.do("GET", "/healthz", "", "", ""); r.status != 200 {
			t.Fatalf("healthz is rate limited: %d", r.status)
		}
	})
}

func TestBrokerGone(t *testing.T) {
	e := newEnv(t, envOpts{publishTimeout: 500 * time.Millisecond})
	_, acme := e.createKey(`{"tenant":"acme"}`)
	body := "[" + eventJSON("r1", "acme", 1) + "," + eventJSON("r2", "acme", 2) + "]"
	if r := e.do("POST", "/v1/events", acme, "", body); r.status != 202 {
		t.Fatalf("with the broker up: %d %s", r.status, r.raw)
	}
	// The broker drops every produce request's connection from now on, as a
	// broker dying mid-request does.
	var down atomic.Bool
	down.Store(true)
	e.kc.ControlKey(0, func(kafkaRequest) (kafkaResponse, error, bool) {
		if !down.Load() {
			e.kc.DropControl()
			return nil, nil, false
		}
		e.kc.KeepControl()
		return nil, fmt.Errorf("broker stopped"), true
	})
	r := e.do("POST", "/v1/events", acme, "", body)
	if r.status != 503 || r.header.Get("Retry-After") == "" || errorCode(r) != "unavailable" || !strings.Contains(r.raw, "retry it unchanged") {
		t.Fatalf("broker down: %d %v %s", r.status, r.header, r.raw)
	}
	// The broker recovers; the client retries the same request.
	down.Store(false)
	if r := e.do("POST", "/v1/events", acme, "", body); r.status != 202 {
		t.Fatalf("retry after recovery: %d %s", r.status, r.raw)
	}
	// Every id is in the topic at least once; duplicates of the same ids are
	// what the aggregator's dedup ledger exists for.
	ids := map[string]int{}
	for _, m := range e.published() {
		var ev events.Event
		if err := ev.UnmarshalJSON(m.Value); err != nil {
			t.Fatal(err)
		}
		ids[ev.ID]++
	}
	if ids["r1"] < 2 || ids["r2"] < 2 || len(ids) != 2 {
		t.Fatalf("ids in topic = %v", ids)
	}
}

func TestAdminRoutes(t *testing.T) {
	e := newEnv(t, envOpts{})
	_, acme := e.createKey(`{"tenant":"acme"}`)
	plan := `{"quotas":[{"metric":"api_calls","limit":1000,"period":"month","burst_percent":20,"hard":true,"stripe_event_name":"api_calls"},{"metric":"tokens","limit":null}]}`
	r := e.do("PUT", "/v1/admin/plans/free", adminKey, "application/json", plan)
	if r.status != 200 {
		t.Fatalf("PUT plan: %d %s", r.status, r.raw)
	}
	quotas := r.body["quotas"].([]any)
	tokens := quotas[1].(map[string]any)
	if tokens["limit"] != nil || tokens["period"] != "month" || tokens["stripe_event_name"] != "tokens" || tokens["hard"] != false {
		t.Fatalf("defaults not applied: %v", tokens)
	}
	tests := []struct {
		name, method, path, key, body string
		status                        int
		code                          string
	}{
		{"tenant key on admin route", "PUT", "/v1/admin/plans/x", acme, plan, 403, "forbidden"},
		{"no key on admin route", "GET", "/v1/admin/keys", "", "", 401, "unauthorized"},
		{"limit forgotten", "PUT", "/v1/admin/plans/x", adminKey, `{"quotas":[{"metric":"a"}]}`, 400, "invalid_request"},
		{"negative limit", "PUT", "/v1/admin/plans/x", adminKey, `{"quotas":[{"metric":"a","limit":-1}]}`, 400, "invalid_request"},
		{"bad period", "PUT", "/v1/admin/plans/x", adminKey, `{"quotas":[{"metric":"a","limit":1,"period":"week"}]}`, 400, "invalid_request"},
		{"duplicate metric", "PUT", "/v1/admin/plans/x", adminKey, `{"quotas":[{"metric":"a","limit":1},{"metric":"a","limit":2}]}`, 400, "invalid_request"},
		{"unknown field", "PUT", "/v1/admin/plans/x", adminKey, `{"quota":[]}`, 400, "invalid_request"},
		{"bad plan name", "PUT", "/v1/admin/plans/a%20b", adminKey, `{"quotas":[]}`, 400, "invalid_request"},
		{"unknown plan", "PUT", "/v1/admin/tenants/acme", adminKey, `{"plan":"gold"}`, 400, "unknown_plan"},
		{"bad customer id", "PUT", "/v1/admin/tenants/acme", adminKey, `{"plan":"free","stripe_customer_id":"acme"}`, 400, "invalid_request"},
		{"missing plan", "GET", "/v1/admin/plans/gold", adminKey, "", 404, "not_found"},
		{"missing tenant", "GET", "/v1/admin/tenants/nobody", adminKey, "", 404, "not_found"},
		{"key with neither", "POST", "/v1/admin/keys", adminKey, `{}`, 400, "invalid_request"},
		{"key with both", "POST", "/v1/admin/keys", adminKey, `{"tenant":"a","role":"admin"}`, 400, "invalid_request"},
		{"revoke unknown key", "DELETE", "/v1/admin/keys/nope", adminKey, "", 404, "not_found"},
		{"revoke unknown UUID", "DELETE", "/v1/admin/keys/0193a5c2-7d3e-7b2a-9f1e-3c4d5e6f7a8b", adminKey, "", 404, "not_found"},
		{"revoke id with a NUL", "DELETE", "/v1/admin/keys/a%00b", adminKey, "", 404, "not_found"},
		{"get plan, bad name", "GET", "/v1/admin/plans/a%00b", adminKey, "", 400, "invalid_request"},
		{"get tenant, bad name", "GET", "/v1/admin/tenants/a%FFb", adminKey, "", 400, "invalid_request"},
		{"tenant body null", "PUT", "/v1/admin/tenants/acme", adminKey, `null`, 400, "invalid_request"},
		{"plan body an array", "PUT", "/v1/admin/plans/x", adminKey, `[]`, 400, "invalid_request"},
		{"key body a string", "POST", "/v1/admin/keys", adminKey, `"admin"`, 400, "invalid_request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.do(tt.method, tt.path, tt.key, "application/json", tt.body)
			if r.status != tt.status || errorCode(r) != tt.code {
				t.Fatalf("got %d %s, want %d %s", r.status, r.raw, tt.status, tt.code)
			}
		})
	}
	r = e.do("PUT", "/v1/admin/tenants/acme", adminKey, "application/json", `{"plan":"free","stripe_customer_id":"cus_123"}`)
	if r.status != 200 || r.body["plan"] != "free" || r.body["stripe_customer_id"] != "cus_123" {
		t.Fatalf("PUT tenant: %d %s", r.status, r.raw)
	}
	if r := e.do("GET", "/v1/admin/tenants", adminKey, "", ""); r.status != 200 || len(r.body["tenants"].([]any)) != 1 {
		t.Fatalf("list tenants: %d %s", r.status, r.raw)
	}
	if r := e.do("GET", "/v1/admin/plans", adminKey, "", ""); r.status != 200 || len(r.body["plans"].([]any)) != 1 {
		t.Fatalf("list plans: %d %s", r.status, r.raw)
	}
	r = e.do("GET", "/v1/admin/keys", adminKey, "", "")
	if r.status != 200 || len(r.body["keys"].([]any)) != 1 || strings.Contains(r.raw, "mk_") {
		t.Fatalf("list keys (must not show secrets): %d %s", r.status, r.raw)
	}
	// A stored admin key works like the bootstrap key.
	_, admin2 := e.createKey(`{"role":"admin"}`)
	if r := e.do("GET", "/v1/admin/keys", admin2, "", ""); r.status != 200 {
		t.Fatalf("stored admin key: %d %s", r.status, r.raw)
	}
}

func TestHealthReadyMetrics(t *testing.T) {
	e := newEnv(t, envOpts{})
	if r := e.do("GET", "/healthz", "", "", ""); r.status != 200 {
		t.Fatalf("healthz: %d", r.status)
	}
	if r := e.do("GET", "/readyz", "", "", ""); r.status != 200 || r.body["status"] != "ok" {
		t.Fatalf("readyz: %d %s", r.status, r.raw)
	}
	doc, err := http.Get(e.srv.URL + "/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	docBody, _ := io.ReadAll(doc.Body)
	doc.Body.Close()
	if doc.StatusCode != 200 || doc.Header.Get("Content-Type") != "application/yaml" || !bytes.HasPrefix(docBody, []byte("openapi: 3.1.0")) {
		t.Fatalf("openapi.yaml: %d %s", doc.StatusCode, doc.Header.Get("Content-Type"))
	}
	e.do("POST", "/v1/events", adminKey, "", eventJSON("m1", "acme", 1))
	resp, err := http.Get(e.srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		"metering_ingest_events_accepted_total 1",
		`metering_http_requests_total{code="202",route="POST /v1/events"} 1`,
	} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// A MAX_BODY_BYTES above the decoder's default is honoured by the decoder
// too: a 6 MiB batch within a 8 MiB limit is decoded, not refused as
// too_large, and the decoder's too_large answers 413 like the body limit.
func TestDecoderFollowsTheBodyLimit(t *testing.T) {
	e := newEnv(t, envOpts{maxBody: 8 << 20})
	_, acme := e.createKey(`{"tenant":"acme"}`)
	ev := eventJSON("big", "acme", 1)
	pad := strings.Repeat(" ", 6<<20)
	if r := e.do("POST", "/v1/events", acme, "application/json", ev+pad); r.status != http.StatusAccepted {
		t.Fatalf("6 MiB body within an 8 MiB limit: %d %.200s", r.status, r.raw)
	}
}
