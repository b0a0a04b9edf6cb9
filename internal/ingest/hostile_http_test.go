package ingest_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/httpguard"
	"github.com/usagemeter/metering/internal/ingest"
	"github.com/usagemeter/metering/internal/service"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

func gzipped(t testing.TB, s string) []byte {
	t.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	if _, err := io.WriteString(zw, s); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func zstded(t testing.TB, s string) []byte {
	t.Helper()
	var b bytes.Buffer
	zw, err := zstd.NewWriter(&b)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(zw, s); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// postEncoded sends body with the given Content-Encoding (none if empty).
func (e *env) postEncoded(key, encoding string, body []byte) response {
	e.t.Helper()
	req, err := http.NewRequest("POST", e.srv.URL+"/v1/events", bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	if encoding != "" {
		req.Header.Set("Content-Encoding", encoding)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, raw: string(raw)}
}

// TestContentEncoding: gzip and zstd bodies are decoded, within the body
// limit once decompressed; a body that is not what its Content-Encoding
// says gets 400 malformed_encoding, and any other coding 415. Before,
// Content-Encoding was ignored: a gzip body got a misleading invalid_utf8
// and a plain body labelled gzip was accepted.
func TestContentEncoding(t *testing.T) {
	const limit = 64 << 10
	e := newEnv(t, envOpts{maxBody: limit})
	one := eventJSON("enc-1", "acme", 1)
	// 200 000 bytes of JSON whitespace inside a valid array: small when
	// compressed, three times the limit once decompressed.
	bomb := "[" + one + strings.Repeat(" ", 200_000) + "]"
	tests := []struct {
		name, encoding string
		body           []byte
		status         int
		code           string
	}{
		{"gzip", "gzip", gzipped(t, one), http.StatusAccepted, ""},
		{"x-gzip", "x-gzip", gzipped(t, eventJSON("enc-2", "acme", 1)), http.StatusAccepted, ""},
		{"zstd", "zstd", zstded(t, eventJSON("enc-3", "acme", 1)), http.StatusAccepted, ""},
		{"identity", "identity", []byte(eventJSON("enc-4", "acme", 1)), http.StatusAccepted, ""},
		{"upper case", "GZIP", gzipped(t, eventJSON("enc-5", "acme", 1)), http.StatusAccepted, ""},
		{"plain body labelled gzip", "gzip", []byte(eventJSON("enc-6", "acme", 1)), http.StatusBadRequest, httpguard.CodeMalformedEncoding},
		{"plain body labelled zstd", "zstd", []byte(eventJSON("enc-7", "acme", 1)), http.StatusBadRequest, httpguard.CodeMalformedEncoding},
		{"truncated gzip", "gzip", gzipped(t, eventJSON("enc-8", "acme", 1))[:30], http.StatusBadRequest, httpguard.CodeMalformedEncoding},
		{"gzip then garbage", "gzip", append(gzipped(t, eventJSON("enc-9", "acme", 1)), "trailing"...), http.StatusBadRequest, httpguard.CodeMalformedEncoding},
		{"gzip bomb", "gzip", gzipped(t, bomb), http.StatusRequestEntityTooLarge, httpguard.CodeTooLarge},
		{"zstd bomb", "zstd", zstded(t, bomb), http.StatusRequestEntityTooLarge, httpguard.CodeTooLarge},
		{"brotli", "br", []byte(one), http.StatusUnsupportedMediaType, httpguard.CodeUnsupportedEncoding},
		{"deflate", "deflate", []byte(one), http.StatusUnsupportedMediaType, httpguard.CodeUnsupportedEncoding},
		{"two codings", "gzip, gzip", gzipped(t, string(gzipped(t, one))), http.StatusUnsupportedMediaType, httpguard.CodeUnsupportedEncoding},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.name == "gzip bomb" || tt.name == "zstd bomb" {
				if n := len(tt.body); n >= limit {
					t.Fatalf("the bomb is %d bytes compressed, not below the %d limit", n, limit)
				}
			}
			r := e.postEncoded(adminKey, tt.encoding, tt.body)
			if r.status != tt.status || (tt.code != "" && !strings.Contains(r.raw, `"`+tt.code+`"`)) {
				t.Fatalf("Content-Encoding %q: %d %s, want %d %s", tt.encoding, r.status, r.raw, tt.status, tt.code)
			}
			if tt.code == httpguard.CodeUnsupportedEncoding && !strings.Contains(r.raw, "gzip, zstd or identity") {
				t.Errorf("415 does not name the accepted codings: %s", r.raw)
			}
		})
	}
	if n := len(e.published()); n != 5 {
		t.Errorf("%d events published, want the 5 accepted", n)
	}
}

// TestLargeBodiesInFlightAreCapped: with one slot for bodies above 1 KiB,
// a second large body waits briefly then gets 503 with Retry-After while
// the first is still being received; small bodies pass meanwhile, and
// the slot is free again once the first request ends.
func TestLargeBodiesInFlightAreCapped(t *testing.T) {
	e := newEnv(t, envOpts{largeBodies: httpguard.BodyLimits{LargeBytes: 1 << 10, MaxLarge: 1}})
	large := func(id string) []byte {
		return []byte("[" + eventJSON(id, "acme", 1) + strings.Repeat(" ", 4<<10) + "]")
	}
	// The first large body is sent slowly: its first 2 KiB, then nothing
	// until the test says so.
	pr, pw := io.Pipe()
	// Runs before the server's Close, which waits for this request.
	t.Cleanup(func() { pw.CloseWithError(errors.New("the test ended")) })
	first := make(chan response, 1)
	go func() {
		req, _ := http.NewRequest("POST", e.srv.URL+"/v1/events", pr)
		req.Header.Set("Authorization", "Bearer "+adminKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			first <- response{raw: err.Error()}
			return
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		first <- response{status: resp.StatusCode, raw: string(raw)}
	}()
	body := large("large-1")
	if _, err := pw.Write(body[:2<<10]); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	var r response
	for {
		r = e.postEncoded(adminKey, "", large("large-2"))
		if r.status != http.StatusAccepted || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond) // the first has not taken its slot yet
	}
	if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" || !strings.Contains(r.raw, `"overloaded"`) {
		t.Fatalf("second large body while the first is held: %d Retry-After %q %s, want 503 overloaded with Retry-After",
			r.status, r.header.Get("Retry-After"), r.raw)
	}
	if r := e.postEncoded(adminKey, "", []byte(eventJSON("small-1", "acme", 1))); r.status != http.StatusAccepted {
		t.Fatalf("small body while the large slot is taken: %d %s", r.status, r.raw)
	}
	if _, err := pw.Write(body[2<<10:]); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	if r := <-first; r.status != http.StatusAccepted {
		t.Fatalf("first large body: %d %s", r.status, r.raw)
	}
	if r := e.postEncoded(adminKey, "", large("large-3")); r.status != http.StatusAccepted {
		t.Fatalf("large body after the slot was released: %d %s", r.status, r.raw)
	}
}

// TestEveryIngestRouteSendsSecurityHeaders asks every route of the API
// (and the service routes, an unknown path and a wrong method) and checks
// each answer, error or not, for nosniff, DENY, no-referrer and a CSP that
// forbids framing and inline script.
func TestEveryIngestRouteSendsSecurityHeaders(t *testing.T) {
	e := newEnv(t, envOpts{})
	var paths []string
	for _, r := range ingest.New(ingest.Options{}).Routes() {
		paths = append(paths, r.Method+" "+r.Path)
	}
	paths = append(paths, service.Routes...)
	paths = append(paths, "GET /v1/nowhere", "PATCH /v1/events", "GET /ui/app.js", "GET /ui/app.css", "GET /ui/missing.js")
	for _, route := range paths {
		method, path, _ := strings.Cut(route, " ")
		path = strings.NewReplacer("{tenant}", "acme", "{plan}", "free", "{id}", "nokey", "{asset}", "app.js").Replace(path)
		for _, key := range []string{"", adminKey} {
			req, _ := http.NewRequest(method, e.srv.URL+path+"?tenant=acme", strings.NewReader("{}"))
			if key != "" {
				req.Header.Set("Authorization", "Bearer "+key)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if missing := httpguard.Missing(resp.Header); len(missing) > 0 {
				t.Errorf("%s %s (key %v): %d without %v", method, path, key != "", resp.StatusCode, missing)
			}
		}
	}
}

// TestKafkaDownErrorsNameNoAddress runs ingest against a broker address
// where nothing listens: /readyz and POST /v1/events say what is wrong
// and when to retry, never the broker's address or the driver's error.
func TestKafkaDownErrorsNameNoAddress(t *testing.T) {
	db := pgtest.NewEmpty(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	base, done := startIngest(ctx, t, "-database-url", db.URL, "-kafka-brokers", dead, "-http-addr", "127.0.0.1:0", "-publish-timeout", "1s")
	t.Cleanup(func() { cancel(); <-done })
	_, port, _ := net.SplitHostPort(dead)
	leaks := []string{dead, "127.0.0.1", ":" + port, "dial tcp", "connect:", "refused", "kafka-go", "/root/", ".go:"}
	check := func(what string, status int, raw string) {
		t.Helper()
		if status != http.StatusServiceUnavailable {
			t.Errorf("%s: %d %s, want 503", what, status, raw)
		}
		for _, leak := range leaks {
			if strings.Contains(raw, leak) {
				t.Errorf("%s names %q: %s", what, leak, raw)
			}
		}
	}
	resp, err := http.Get(base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	check("/readyz", resp.StatusCode, string(raw))

	req, _ := http.NewRequest("POST", base+"/v1/events", strings.NewReader(eventJSON("down-1", "acme", 1)))
	req.Header.Set("Authorization", "Bearer "+adminKey)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	check("POST /v1/events", resp.StatusCode, string(raw))
	if !strings.Contains(string(raw), "the event log is unavailable; retry it unchanged after 5 s") || resp.Header.Get("Retry-After") != "5" {
		t.Errorf("POST /v1/events with the event log down: Retry-After %q %s", resp.Header.Get("Retry-After"), raw)
	}
}

// TestAdminBodiesRefuseContentEncoding: admin bodies are read as sent; a
// compressed one gets 415 unsupported_encoding, not a misleading "must be
// a JSON object", and changes nothing.
func TestAdminBodiesRefuseContentEncoding(t *testing.T) {
	e := newEnv(t, envOpts{})
	for _, enc := range []string{"gzip", "zstd"} {
		req, err := http.NewRequest("PUT", e.srv.URL+"/v1/admin/tenants/enc-"+enc, bytes.NewReader(gzipped(t, `{}`)))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+adminKey)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Content-Encoding", enc)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnsupportedMediaType || !strings.Contains(string(raw), `"unsupported_encoding"`) {
			t.Fatalf("%s admin body: %d %s, want 415 unsupported_encoding", enc, resp.StatusCode, raw)
		}
		if r := e.do("GET", "/v1/admin/tenants/enc-"+enc, adminKey, "", ""); r.status != http.StatusNotFound {
			t.Fatalf("the refused PUT made tenant enc-%s: %d %s", enc, r.status, r.raw)
		}
	}
}

// TestFiveMillionBrackets: the body that killed ingest (fatal error: stack
// overflow in the duplicate-key scan) is refused as too_deep in every
// media type, and the server still answers afterwards.
func TestFiveMillionBrackets(t *testing.T) {
	e := newEnv(t, envOpts{maxBody: 6 << 20})
	body := strings.Repeat("[", 5_000_000)
	for _, ct := range []string{events.MediaJSON, events.MediaNDJSON, events.MediaCloudEvent, events.MediaCloudEventBatch} {
		if r := e.do("POST", "/v1/events", adminKey, ct, body); r.status != http.StatusBadRequest || errorCode(r) != events.CodeTooDeep {
			t.Fatalf("%s: %d %.300s, want 400 %s", ct, r.status, r.raw, events.CodeTooDeep)
		}
	}
	if r := e.do("GET", "/healthz", "", "", ""); r.status != http.StatusOK {
		t.Fatalf("after the bodies: /healthz %d", r.status)
	}
}
