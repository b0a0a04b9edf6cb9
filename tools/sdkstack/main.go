// Command sdkstack runs the pipeline for the SDKs' end-to-end tests, in
// one process: a fresh database (created in the Postgres server of
// TEST_DATABASE_URL, else DATABASE_URL, and migrated), the embedded
// Kafka-protocol broker, ingest, the aggregator, and a fault proxy in
// front of ingest, all on free 127.0.0.1 ports.
//
// Once every part answers it prints ONE JSON line on stdout:
//
//	{"url":          the fault proxy: send events and reads here,
//	 "direct_url":   ingest itself, bypassing the proxy,
//	 "admin_key":    the bootstrap admin key of ingest,
//	 "control_url":  the proxy's control API,
//	 "aggregator_url": the aggregator's HTTP (health, metrics),
//	 "kafka_brokers": the broker's host:port,
//	 "database":     the name of the database it created}
//
// Progress and the services' logs (at -log-level, default warn) go to
// stderr. It stops everything and drops its database on SIGINT, SIGTERM,
// or when stdin reaches its end (so a test runner that dies takes the
// stack with it); -stdin=false ignores stdin.
//
// The control API on control_url:
//
//	POST /storm?count=N&status=503&retry_after=1&mode=before|after
//	    the next N requests to POST /v1/events are answered with status
//	    (400-599; default 503) and Retry-After: retry_after seconds
//	    (default 1; -1 sends no Retry-After). mode=before (the default)
//	    drops the request unread by ingest; mode=after forwards it to
//	    ingest first and answers the fault whatever ingest said, so the
//	    client resends events ingest already accepted. Storms queue: each
//	    POST adds one, served in order. Answers the queue as JSON.
//	DELETE /storm
//	    empties the queue.
//	GET /stats
//	    {"proxied": requests forwarded to ingest (all routes),
//	     "events_requests": POST /v1/events requests received,
//	     "faulted": requests answered with a fault,
//	     "faulted_before": of them dropped, "faulted_after": of them
//	     forwarded first, "forwarded_accepted": forwarded-then-faulted
//	     requests that ingest answered 2xx, "storm_remaining": faults
//	     still queued}
//
// Dev tooling, not product (see internal/testkit): it links no testing.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/usagemeter/metering/internal/aggregator"
	"github.com/usagemeter/metering/internal/config"
	"github.com/usagemeter/metering/internal/ingest"
	"github.com/usagemeter/metering/internal/service"
	"github.com/usagemeter/metering/internal/storage/accounts"
)

func main() {
	logLevel := flag.String("log-level", "warn", "services' log level on stderr: debug, info, warn or error")
	watchStdin := flag.Bool("stdin", true, "stop when stdin reaches its end")
	flag.Parse()
	if err := run(*logLevel, *watchStdin); err != nil {
		fmt.Fprintln(os.Stderr, "sdkstack:", err)
		os.Exit(1)
	}
}

// Info is the JSON line printed once the stack answers.
type Info struct {
	URL           string `json:"url"`
	DirectURL     string `json:"direct_url"`
	AdminKey      string `json:"admin_key"`
	ControlURL    string `json:"control_url"`
	AggregatorURL string `json:"aggregator_url"`
	KafkaBrokers  string `json:"kafka_brokers"`
	Database      string `json:"database"`
}

func run(logLevel string, watchStdin bool) error {
	ctx, stop := service.SignalContext()
	defer stop()
	if watchStdin {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			stop()
		}()
	}
	log, err := service.NewLogger(os.Stderr, logLevel, "sdkstack")
	if err != nil {
		return err
	}

	adminURL := os.Getenv("TEST_DATABASE_URL")
	if adminURL == "" {
		adminURL = os.Getenv("DATABASE_URL")
	}
	if adminURL == "" {
		return errors.New("set TEST_DATABASE_URL (or DATABASE_URL) to a Postgres server where a database may be created")
	}
	dbName := "sdkstack_" + randomHex(6)
	dbURL, err := createDatabase(ctx, adminURL, dbName)
	if err != nil {
		return err
	}
	defer func() {
		if err := dropDatabase(adminURL, dbName); err != nil {
			log.Error("dropping the database", "database", dbName, "err", err)
		}
	}()
	if err := ingest.Migrate(ctx, dbURL, log); err != nil {
		return fmt.Errorf("migrating %s: %w", dbName, err)
	}

	broker, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(0), kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(4), kfake.GroupMinSessionTimeout(time.Second))
	if err != nil {
		return fmt.Errorf("starting the broker: %w", err)
	}
	defer broker.Close()
	brokers := broker.ListenAddrs()[0]

	adminKey := "sdkstack-admin-" + randomHex(12)
	env := map[string]string{
		"DATABASE_URL": dbURL, "KAFKA_BROKERS": brokers, "HTTP_ADDR": "127.0.0.1:0",
		"LOG_LEVEL": logLevel, "ADMIN_API_KEY": adminKey, "KAFKA_PARTITIONS": "4",
		"SHUTDOWN_TIMEOUT": "5s", "SESSION_TIMEOUT": "2s", "BATCH_WAIT": "50ms",
	}
	getenv := func(k string) string { return env[k] }
	icfg, _, err := config.LoadIngest("ingest", nil, getenv, io.Discard)
	if err != nil {
		return fmt.Errorf("ingest settings: %w", err)
	}
	acfg, _, err := config.LoadAggregator("aggregator", nil, getenv, io.Discard)
	if err != nil {
		return fmt.Errorf("aggregator settings: %w", err)
	}
	ilog, _ := service.NewLogger(os.Stderr, logLevel, "ingest")
	alog, _ := service.NewLogger(os.Stderr, logLevel, "aggregator")

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	ingestAddr := make(chan net.Addr, 1)
	aggAddr := make(chan net.Addr, 1)
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := ingest.Run(runCtx, icfg, ilog, func(a net.Addr) { ingestAddr <- a }); err != nil {
			errc <- fmt.Errorf("ingest: %w", err)
		}
	}()
	go func() {
		defer wg.Done()
		if err := aggregator.Run(runCtx, acfg, alog, func(a net.Addr) { aggAddr <- a }); err != nil {
			errc <- fmt.Errorf("aggregator: %w", err)
		}
	}()
	defer wg.Wait()
	defer cancel()

	var direct, agg string
	for direct == "" || agg == "" {
		select {
		case a := <-ingestAddr:
			direct = "http://" + a.String()
		case a := <-aggAddr:
			agg = "http://" + a.String()
		case err := <-errc:
			return err
		case <-ctx.Done():
			return nil
		case <-time.After(60 * time.Second):
			return errors.New("ingest and the aggregator did not start within 60s")
		}
	}

	target, _ := url.Parse(direct)
	proxy := newFaultProxy(target)
	proxyLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	controlLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	proxySrv := &http.Server{Handler: proxy, ReadHeaderTimeout: 10 * time.Second}
	controlSrv := &http.Server{Handler: proxy.controlHandler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = proxySrv.Serve(proxyLn) }()
	go func() { _ = controlSrv.Serve(controlLn) }()
	defer func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		_ = proxySrv.Shutdown(sctx)
		_ = controlSrv.Shutdown(sctx)
	}()

	for _, u := range []string{direct + "/readyz", agg + "/readyz"} {
		if err := waitReady(ctx, u, 60*time.Second); err != nil {
			return err
		}
	}

	info := Info{
		URL: "http://" + proxyLn.Addr().String(), DirectURL: direct, AdminKey: adminKey,
		ControlURL: "http://" + controlLn.Addr().String(), AggregatorURL: agg,
		KafkaBrokers: brokers, Database: dbName,
	}
	line, _ := json.Marshal(info)
	fmt.Println(string(line))
	log.Info("stack ready", "url", info.URL)

	select {
	case <-ctx.Done():
		log.Info("stopping")
		return nil
	case err := <-errc:
		return err
	}
}

// waitReady waits until u answers 200.
func waitReady(ctx context.Context, u string, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready within %s: %w", u, d, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// createDatabase creates name in the server of adminURL and returns its URL.
func createDatabase(ctx context.Context, adminURL, name string) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, adminURL)
	if err != nil {
		return "", fmt.Errorf("connecting to %s: %w", accounts.Redact(adminURL), err)
	}
	defer conn.Close(cctx)
	if _, err := conn.Exec(cctx, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("creating database %s: %w", name, err)
	}
	u, err := url.Parse(adminURL)
	if err != nil {
		return "", fmt.Errorf("database URL: %w", err)
	}
	u.Path = "/" + name
	return u.String(), nil
}

func dropDatabase(adminURL, name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("connecting: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("dropping %s: %w", name, err)
	}
	return nil
}

// storm is a queued run of faults.
type storm struct {
	Remaining  int    `json:"remaining"`
	Status     int    `json:"status"`
	RetryAfter int    `json:"retry_after"`
	Mode       string `json:"mode"`
}

// stats are the proxy's counters (see the command's doc).
type stats struct {
	Proxied           int64 `json:"proxied"`
	EventsRequests    int64 `json:"events_requests"`
	Faulted           int64 `json:"faulted"`
	FaultedBefore     int64 `json:"faulted_before"`
	FaultedAfter      int64 `json:"faulted_after"`
	ForwardedAccepted int64 `json:"forwarded_accepted"`
	StormRemaining    int64 `json:"storm_remaining"`
}

// faultProxy forwards every request to ingest, answering queued faults
// to POST /v1/events instead.
type faultProxy struct {
	target *url.URL
	rp     *httputil.ReverseProxy
	client *http.Client

	mu     sync.Mutex
	storms []storm
	st     stats
}

func newFaultProxy(target *url.URL) *faultProxy {
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err error) {
		writeError(w, http.StatusBadGateway, "proxy_error", "the fault proxy could not reach ingest: "+err.Error(), -1)
	}
	return &faultProxy{target: target, rp: rp, client: &http.Client{Timeout: 2 * time.Minute}}
}

// take returns the fault for the next events request, if one is queued.
func (p *faultProxy) take() (storm, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.st.EventsRequests++
	if len(p.storms) == 0 {
		return storm{}, false
	}
	s := p.storms[0]
	p.storms[0].Remaining--
	if p.storms[0].Remaining == 0 {
		p.storms = p.storms[1:]
	}
	p.st.Faulted++
	if s.Mode == "after" {
		p.st.FaultedAfter++
	} else {
		p.st.FaultedBefore++
	}
	return s, true
}

func (p *faultProxy) count(f func(*stats)) {
	p.mu.Lock()
	f(&p.st)
	p.mu.Unlock()
}

func (p *faultProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/events" {
		p.count(func(s *stats) { s.Proxied++ })
		p.rp.ServeHTTP(w, r)
		return
	}
	s, fault := p.take()
	if !fault {
		p.count(func(s *stats) { s.Proxied++ })
		p.rp.ServeHTTP(w, r)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return // the client went away
	}
	if s.Mode == "after" {
		status, err := p.forward(r, body)
		p.count(func(st *stats) {
			st.Proxied++
			if err == nil && status/100 == 2 {
				st.ForwardedAccepted++
			}
		})
	}
	writeError(w, s.Status, "injected_fault", fmt.Sprintf("fault injected by the SDK test stack (mode %s)", s.Mode), s.RetryAfter)
}

// forward sends the request to ingest and returns its status.
func (p *faultProxy) forward(r *http.Request, body []byte) (int, error) {
	u := *p.target
	u.Path, u.RawQuery = r.URL.Path, r.URL.RawQuery
	req, err := http.NewRequestWithContext(r.Context(), r.Method, u.String(), bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header = r.Header.Clone()
	resp, err := p.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

func writeError(w http.ResponseWriter, status int, code, msg string, retryAfter int) {
	if retryAfter >= 0 {
		w.Header().Set("Retry-After", strconv.Itoa(retryAfter))
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	b, _ := json.Marshal(map[string]any{"error": map[string]string{"code": code, "message": msg}})
	_, _ = w.Write(b)
}

func (p *faultProxy) controlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /storm", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		s := storm{Remaining: 1, Status: http.StatusServiceUnavailable, RetryAfter: 1, Mode: "before"}
		var bad []string
		intParam := func(name string, dst *int, lo, hi int) {
			if v := q.Get(name); v != "" {
				n, err := strconv.Atoi(v)
				if err != nil || n < lo || n > hi {
					bad = append(bad, fmt.Sprintf("%s must be an integer from %d to %d", name, lo, hi))
					return
				}
				*dst = n
			}
		}
		intParam("count", &s.Remaining, 1, 1_000_000)
		intParam("status", &s.Status, 400, 599)
		intParam("retry_after", &s.RetryAfter, -1, 3600)
		if m := q.Get("mode"); m != "" {
			if m != "before" && m != "after" {
				bad = append(bad, "mode must be before or after")
			}
			s.Mode = m
		}
		if len(bad) > 0 {
			writeError(w, http.StatusBadRequest, "bad_storm", fmt.Sprint(bad), -1)
			return
		}
		p.mu.Lock()
		p.storms = append(p.storms, s)
		queue := append([]storm(nil), p.storms...)
		p.mu.Unlock()
		writeJSON(w, map[string]any{"storms": queue})
	})
	mux.HandleFunc("DELETE /storm", func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.storms = nil
		p.mu.Unlock()
		writeJSON(w, map[string]any{"storms": []storm{}})
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		st := p.st
		for _, s := range p.storms {
			st.StormRemaining += int64(s.Remaining)
		}
		p.mu.Unlock()
		writeJSON(w, st)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
