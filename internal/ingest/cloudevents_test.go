package ingest_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"github.com/usagemeter/metering/events"
)

// recorder keeps the headers of every request the SDK sends.
type recorder struct {
	mu      sync.Mutex
	headers []http.Header
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.headers = append(r.headers, req.Header.Clone())
	r.mu.Unlock()
	return http.DefaultTransport.RoundTrip(req)
}

func (r *recorder) last() http.Header {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.headers[len(r.headers)-1]
}

func sdkEvent(id, tenant string, data any) cloudevents.Event {
	ev := cloudevents.NewEvent()
	ev.SetID(id)
	ev.SetSource("checkout-svc")
	ev.SetType("api_calls")
	ev.SetSubject(tenant)
	ev.SetTime(time.Now().UTC().Truncate(time.Millisecond))
	if err := ev.SetData(cloudevents.ApplicationJSON, data); err != nil {
		panic(err)
	}
	return ev
}

// TestCloudEventsSDK sends events with the official CloudEvents Go SDK's
// HTTP client, in its default binary content mode and in structured mode,
// and reads back what was published to usage.events.
func TestCloudEventsSDK(t *testing.T) {
	e := newEnv(t, envOpts{})
	_, acme := e.createKey(`{"tenant":"acme"}`)
	rec := &recorder{}
	c, err := cloudevents.NewClientHTTP(
		cehttp.WithTarget(e.srv.URL+"/v1/events"),
		cehttp.WithHeader("Authorization", "Bearer "+acme),
		cehttp.WithRoundTripper(rec),
	)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	binary := sdkEvent("sdk-binary-1", "acme", map[string]any{"value": 3, "region": "eu", "endpoint": "/v1/chat"})
	structured := sdkEvent("sdk-structured-1", "acme", map[string]any{"value": 1500, "model": "small"})
	structured.SetType("tokens")
	sends := []struct {
		name            string
		ctx             context.Context
		ev              cloudevents.Event
		wantContentType string
		want            events.Event
	}{
		{"binary, the SDK's default", ctx, binary, "application/json", events.Event{ID: "sdk-binary-1", Tenant: "acme", Metric: "api_calls", Value: 3,
			Time: binary.Time(), Source: "checkout-svc", Properties: map[string]string{"region": "eu", "endpoint": "/v1/chat"}}},
		{"structured", cloudevents.WithEncodingStructured(ctx), structured, "application/cloudevents+json", events.Event{ID: "sdk-structured-1", Tenant: "acme",
			Metric: "tokens", Value: 1500, Time: structured.Time(), Source: "checkout-svc", Properties: map[string]string{"model": "small"}}},
	}
	for _, s := range sends {
		if res := c.Send(s.ctx, s.ev); !cloudevents.IsACK(res) {
			t.Fatalf("%s: Send = %v, want an ACK", s.name, res)
		}
		h := rec.last()
		if got := h.Get("Content-Type"); got != s.wantContentType {
			t.Errorf("%s: the SDK sent Content-Type %q, want %q", s.name, got, s.wantContentType)
		}
		if isBinary := h.Get("Ce-Specversion") != ""; isBinary != strings.HasPrefix(s.name, "binary") {
			t.Errorf("%s: ce-specversion header present = %v", s.name, isBinary)
		}
	}
	msgs := e.published()
	if len(msgs) != len(sends) {
		t.Fatalf("%d messages in usage.events, want %d", len(msgs), len(sends))
	}
	got := map[string]events.Event{}
	for _, m := range msgs {
		var ev events.Event
		if err := ev.UnmarshalJSON(m.Value); err != nil {
			t.Fatalf("published %s: %v", m.Value, err)
		}
		if string(m.Key) != ev.Tenant {
			t.Errorf("message key %q, want the tenant %q", m.Key, ev.Tenant)
		}
		got[ev.ID] = ev
	}
	for _, s := range sends {
		if !reflect.DeepEqual(got[s.want.ID], s.want) {
			t.Errorf("%s: published %+v, want %+v", s.name, got[s.want.ID], s.want)
		}
	}

	// Invalid events come back as HTTP results with the status and the
	// field errors, naming what the SDK user set.
	invalid := []struct {
		name   string
		ctx    context.Context
		ev     cloudevents.Event
		status int
		field  string
	}{
		{"binary, no subject", ctx, sdkEvent("bad-1", "", map[string]any{"value": 1}), 400, `"field":"ce-subject"`},
		{"binary, fractional value", ctx, sdkEvent("bad-2", "acme", map[string]any{"value": 1.5}), 400, `"field":"data.value"`},
		{"structured, fractional value", cloudevents.WithEncodingStructured(ctx), sdkEvent("bad-3", "acme", map[string]any{"value": 1.5}), 400, `"field":"data.value"`},
		{"binary, non-string property", ctx, sdkEvent("bad-4", "acme", map[string]any{"value": 1, "n": 2}), 400, `"field":"data.n"`},
		{"binary, text data", ctx, func() cloudevents.Event {
			ev := sdkEvent("bad-5", "acme", nil)
			_ = ev.SetData(cloudevents.TextPlain, "hello")
			return ev
		}(), 415, `"code":"unsupported_media_type"`},
		{"binary, another tenant", ctx, sdkEvent("bad-6", "globex", map[string]any{"value": 1}), 403, `"code":"forbidden"`},
	}
	for _, tt := range invalid {
		res := c.Send(tt.ctx, tt.ev)
		var hr *cehttp.Result
		if !cloudevents.ResultAs(res, &hr) {
			t.Errorf("%s: Send = %v (%T), want an HTTP result", tt.name, res, res)
			continue
		}
		if hr.StatusCode != tt.status || !cloudevents.IsNACK(res) || !strings.Contains(res.Error(), tt.field) {
			t.Errorf("%s: got %d %v, want %d naming %s", tt.name, hr.StatusCode, res, tt.status, tt.field)
		}
	}
	if msgs := e.published(); len(msgs) != len(sends) {
		t.Fatalf("%d messages after the rejected events, want %d", len(msgs), len(sends))
	}
}

// doHeaders sends body to POST /v1/events with the given headers.
func (e *env) doHeaders(key string, h http.Header, body string) response {
	e.t.Helper()
	req, err := http.NewRequest("POST", e.srv.URL+"/v1/events", strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header = h.Clone()
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	r := response{status: resp.StatusCode, header: resp.Header, raw: string(raw)}
	if err := json.Unmarshal(raw, &r.body); err != nil {
		e.t.Fatalf("response is not a JSON object: %q", raw)
	}
	return r
}

func TestCloudEventBinaryMode(t *testing.T) {
	e := newEnv(t, envOpts{maxBody: 4 << 10})
	_, acme := e.createKey(`{"tenant":"acme"}`)
	now := time.Now().UTC().Truncate(time.Millisecond)
	headers := func(set ...string) http.Header {
		h := http.Header{
			"Ce-Specversion": {"1.0"}, "Ce-Id": {"bin-1"}, "Ce-Source": {"svc"}, "Ce-Type": {"api_calls"},
			"Ce-Subject": {"acme"}, "Ce-Time": {now.Format(time.RFC3339Nano)}, "Content-Type": {"application/json"},
		}
		for i := 0; i+1 < len(set); i += 2 {
			if set[i+1] == "" {
				h.Del(set[i])
			} else {
				h[http.CanonicalHeaderKey(set[i])] = strings.Split(set[i+1], "\n")
			}
		}
		return h
	}
	data := `{"value":7,"region":"eu"}`
	tests := []struct {
		name   string
		key    string
		header http.Header
		body   string
		status int
		want   string // error code, or the fields of a 400 with field errors
	}{
		{"accepted", acme, headers(), data, 202, ""},
		{"percent-encoded source", acme, headers("Ce-Id", "bin-2", "Ce-Source", "checkout%20svc"), data, 202, ""},
		{"unsupported specversion", acme, headers("Ce-Specversion", "0.3"), data, 400, "ce-specversion"},
		{"missing attributes", acme, headers("Ce-Id", "", "Ce-Source", "", "Ce-Subject", "", "Ce-Type", "", "Ce-Time", ""), data, 400,
			"ce-source ce-id ce-subject ce-type ce-time"},
		{"attribute sent twice", acme, headers("Ce-Subject", "acme\nacme"), data, 400, "ce-subject"},
		{"ce-datacontenttype", acme, headers("Ce-Datacontenttype", "application/json"), data, 400, "ce-datacontenttype"},
		{"bad time", acme, headers("Ce-Time", "now"), data, 400, "ce-time"},
		{"invalid data", acme, headers(), `{"value":1.5,"n":1}`, 400, "data.value data.n"},
		{"data member twice", acme, headers(), `{"value":1,"value":2}`, 400, "data.value"},
		{"data not JSON", acme, headers(), `{nope`, 400, "data"},
		{"text data", acme, headers("Content-Type", "text/plain"), "hello", 415, "unsupported_media_type"},
		{"NDJSON data", acme, headers("Content-Type", "application/x-ndjson"), data, 415, "unsupported_media_type"},
		{"body over the limit", acme, headers(), `{"value":1,"k":"` + strings.Repeat("v", 5<<10) + `"}`, 413, "payload_too_large"},
		{"body not UTF-8", acme, headers(), "{\"value\":1,\"k\":\"\xff\"}", 400, events.CodeInvalidUTF8},
		{"no key", "", headers(), data, 401, "unauthorized"},
		{"another tenant", acme, headers("Ce-Subject", "globex"), data, 403, "forbidden"},
	}
	accepted := 0
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.doHeaders(tt.key, tt.header, tt.body)
			if r.status != tt.status {
				t.Fatalf("status %d %s, want %d", r.status, r.raw, tt.status)
			}
			switch {
			case tt.status == 202:
				accepted++
				if r.body["accepted"] != float64(1) {
					t.Fatalf("body %s, want {\"accepted\":1}", r.raw)
				}
			case r.body["errors"] != nil:
				var fields []string
				for _, x := range r.body["errors"].([]any) {
					fe := x.(map[string]any)
					if fe["index"] != float64(0) || fe["message"] == "" {
						t.Errorf("field error %v: want index 0 and a message", fe)
					}
					fields = append(fields, fe["field"].(string))
				}
				if strings.Join(fields, " ") != tt.want {
					t.Fatalf("fields %v, want %s (%s)", fields, tt.want, r.raw)
				}
			default:
				if errorCode(r) != tt.want {
					t.Fatalf("code %q (%s), want %s", errorCode(r), r.raw, tt.want)
				}
			}
		})
	}
	var ids []string
	for _, m := range e.published() {
		var ev events.Event
		if err := ev.UnmarshalJSON(m.Value); err != nil {
			t.Fatal(err)
		}
		if ev.Value != 7 || ev.Properties["region"] != "eu" || !ev.Time.Equal(now) {
			t.Errorf("published %+v", ev)
		}
		ids = append(ids, ev.ID+"/"+ev.Source)
	}
	slices.Sort(ids)
	if want := []string{"bin-1/svc", "bin-2/checkout svc"}; !slices.Equal(ids, want) || accepted != len(want) {
		t.Fatalf("published %v, want %v", ids, want)
	}
	// A structured request that repeats its attributes as headers, as the
	// binding allows, stays structured.
	ce, err := events.Event{ID: "str-1", Tenant: "acme", Metric: "api_calls", Value: 1, Time: now, Source: "svc"}.AppendCloudEvent(nil)
	if err != nil {
		t.Fatal(err)
	}
	if r := e.doHeaders(acme, headers("Content-Type", events.MediaCloudEvent), string(ce)); r.status != 202 {
		t.Fatalf("structured with ce- headers: %d %s", r.status, r.raw)
	}
}

// TestMethodNotAllowed: a path the API serves, asked with a method it
// does not take, gets 405 with Allow; an unknown path gets 404.
func TestMethodNotAllowed(t *testing.T) {
	e := newEnv(t, envOpts{})
	tests := []struct {
		method, path string
		status       int
		allow        string
	}{
		{"GET", "/v1/events", 405, "POST"},
		{"TRACE", "/v1/admin/plans", 405, "GET, HEAD"},
		{"DELETE", "/v1/admin/plans/free", 405, "GET, HEAD, PUT"},
		{"PATCH", "/v1/quotas/acme", 405, "GET, HEAD"},
		{"PUT", "/v1/admin/keys/x", 405, "DELETE"},
		{"GET", "/v1/nowhere", 404, ""},
		{"GET", "/v1/quotas/acme/extra", 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			r := e.do(tt.method, tt.path, adminKey, "", "")
			if r.status != tt.status || r.header.Get("Allow") != tt.allow {
				t.Fatalf("got %d Allow %q (%s), want %d Allow %q", r.status, r.header.Get("Allow"), r.raw, tt.status, tt.allow)
			}
			if want := map[int]string{405: "method_not_allowed", 404: "not_found"}[tt.status]; errorCode(r) != want {
				t.Fatalf("code %q, want %q", errorCode(r), want)
			}
		})
	}
}
