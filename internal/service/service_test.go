package service_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/apidoc"
	"github.com/usagemeter/metering/internal/httpguard"
	"github.com/usagemeter/metering/internal/service"
)

// serve starts ServeLimited with h and limits and returns its address;
// the server stops when the test ends.
func serve(t *testing.T, h http.Handler, limits service.HTTPLimits) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() {
		done <- service.ServeLimited(ctx, slog.New(slog.DiscardHandler), "127.0.0.1:0", h, time.Second, limits, func(a net.Addr) { addrc <- a })
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeLimited: %v", err)
		}
	})
	select {
	case a := <-addrc:
		return a.String()
	case err := <-done:
		t.Fatalf("ServeLimited: %v", err)
		return ""
	}
}

// get sends GET path on conn (kept alive) and reads the answer's status
// line, or fails after wait.
func get(conn net.Conn, r *bufio.Reader, path string, wait time.Duration) (*http.Response, error) {
	_ = conn.SetDeadline(time.Now().Add(wait))
	if _, err := io.WriteString(conn, "GET "+path+" HTTP/1.1\r\nHost: test\r\n\r\n"); err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		return nil, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp, nil
}

// TestConnectionCap: a server with a cap of 2 serves two kept-alive
// connections; a third is not answered until one of them closes.
func TestConnectionCap(t *testing.T) {
	t.Parallel()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ping", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "pong") })
	addr := serve(t, mux, service.HTTPLimits{MaxConnections: 2, WriteTimeout: 10 * time.Second})
	var conns []net.Conn
	for i := range 3 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	readers := []*bufio.Reader{bufio.NewReader(conns[0]), bufio.NewReader(conns[1]), bufio.NewReader(conns[2])}
	for i := range 2 {
		if _, err := get(conns[i], readers[i], "/ping", 5*time.Second); err != nil {
			t.Fatalf("connection %d within the cap: %v", i+1, err)
		}
	}
	if resp, err := get(conns[2], readers[2], "/ping", 300*time.Millisecond); err == nil {
		t.Fatalf("connection 3 over a cap of 2 was served: %s", resp.Status)
	}
	conns[0].Close()
	// The request already sent on connection 3 is answered once a slot
	// frees.
	_ = conns[2].SetDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(readers[2], nil)
	if err != nil {
		t.Fatalf("connection 3 after connection 1 closed: %v", err)
	}
	resp.Body.Close()
}

// TestSlowReaderIsCutOff: a client that asks for a large answer and never
// reads it holds the handler only until WriteTimeout.
func TestSlowReaderIsCutOff(t *testing.T) {
	t.Parallel()
	writeErr := make(chan error, 1)
	chunk := make([]byte, 1<<20)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /big", func(w http.ResponseWriter, r *http.Request) {
		for range 256 {
			if _, err := w.Write(chunk); err != nil {
				writeErr <- err
				return
			}
		}
		writeErr <- nil
	})
	addr := serve(t, mux, service.HTTPLimits{MaxConnections: 8, WriteTimeout: 300 * time.Millisecond})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET /big HTTP/1.1\r\nHost: test\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	// Never read.
	select {
	case err := <-writeErr:
		if err == nil {
			t.Fatal("256 MiB were written to a client that reads nothing")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the handler is still writing to a client that reads nothing 10 s after a 300 ms WriteTimeout")
	}
}

// TestReadyzNamesNoAddress: a failing check is named, its error (which
// holds the dependency's address) is not.
func TestReadyzNamesNoAddress(t *testing.T) {
	t.Parallel()
	mux := http.NewServeMux()
	service.Mount(mux, service.NewRegistry(), map[string]service.Check{
		"postgres": func(context.Context) error {
			return errors.New("failed to connect to `user=postgres database=metering`: 10.1.2.3:5432 (db.internal): dial error: dial tcp 10.1.2.3:5432: connect: connection refused")
		},
		"kafka": func(context.Context) error { return nil },
	})
	addr := serve(t, mux, service.HTTPLimits{})
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(raw), `"postgres":"unavailable"`) || !strings.Contains(string(raw), `"kafka":"ok"`) {
		t.Fatalf("/readyz: %d %s", resp.StatusCode, raw)
	}
	for _, leak := range []string{"10.1.2.3", "5432", "dial", "db.internal", "user="} {
		if strings.Contains(string(raw), leak) {
			t.Errorf("/readyz answers %q: %s", leak, raw)
		}
	}
}

// TestEveryServiceRouteSendsSecurityHeaders: every route Mount adds (all
// the aggregator serves), an unknown path and a handler that sets no
// header at all answer with the security headers.
func TestEveryServiceRouteSendsSecurityHeaders(t *testing.T) {
	t.Parallel()
	mux := http.NewServeMux()
	service.Mount(mux, service.NewRegistry(), map[string]service.Check{"fails": func(context.Context) error { return errors.New("down") }})
	var bare atomic.Bool
	mux.HandleFunc("GET /bare", func(w http.ResponseWriter, r *http.Request) { bare.Store(true); w.WriteHeader(http.StatusTeapot) })
	addr := serve(t, mux, service.HTTPLimits{})
	routes := append([]string{"GET /bare", "GET /nowhere", "POST /healthz"}, service.Routes...)
	for _, route := range routes {
		method, path, _ := strings.Cut(route, " ")
		req, _ := http.NewRequest(method, "http://"+addr+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if missing := httpguard.Missing(resp.Header); len(missing) > 0 {
			t.Errorf("%s: %d without %v", route, resp.StatusCode, missing)
		}
	}
	if !bare.Load() {
		t.Error("GET /bare was not served")
	}
}

// TestMountServesTheDocuments: every service serves the OpenAPI document
// and the billing.events AsyncAPI document, as YAML, byte for byte.
func TestMountServesTheDocuments(t *testing.T) {
	t.Parallel()
	mux := http.NewServeMux()
	service.Mount(mux, service.NewRegistry(), nil)
	for path, want := range map[string][]byte{"/openapi.yaml": apidoc.OpenAPI, "/asyncapi.yaml": apidoc.AsyncAPI} {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "application/yaml" || !bytes.Equal(rec.Body.Bytes(), want) {
			t.Errorf("GET %s: %d %s, %d bytes", path, rec.Code, rec.Header().Get("Content-Type"), rec.Body.Len())
		}
	}
	if !bytes.HasPrefix(apidoc.AsyncAPI, []byte("asyncapi: 3.0.0")) {
		t.Error("asyncapi.yaml does not start with its version")
	}
}
