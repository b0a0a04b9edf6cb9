package ingest_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/config"
	"github.com/usagemeter/metering/internal/ingest"
	"github.com/usagemeter/metering/internal/testkit/kafkatest"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/topics"
)

// startIngest runs ingest as cmd/ingest does, configured by args with
// ADMIN_API_KEY set to adminKey, until ctx ends. It returns the service's
// base URL once it listens, and the channel Run's result arrives on.
func startIngest(ctx context.Context, t *testing.T, args ...string) (string, <-chan error) {
	t.Helper()
	cfg, _, err := config.LoadIngest("ingest", args, func(k string) string {
		if k == "ADMIN_API_KEY" {
			return adminKey
		}
		return ""
	}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	addrc := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() { done <- ingest.Run(ctx, cfg, slog.New(slog.DiscardHandler), func(a net.Addr) { addrc <- a }) }()
	select {
	case a := <-addrc:
		return "http://" + a.String(), done
	case err := <-done:
		t.Fatalf("Run: %v", err)
		return "", nil
	}
}

// TestRunDrainsInFlightRequests starts the whole service as cmd/ingest
// does, holds a publish inside Kafka, asks the service to stop, and
// checks that the held request still gets its 202 before Run returns.
func TestRunDrainsInFlightRequests(t *testing.T) {
	db := pgtest.NewEmpty(t) // Run applies the migrations itself.
	kc := kafkatest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	base, done := startIngest(ctx, t, "-database-url", db.URL, "-kafka-brokers", kc.Addr(), "-http-addr", "127.0.0.1:0")
	get := func(path string) int {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if s := get("/readyz"); s != 200 {
		t.Fatalf("readyz = %d", s)
	}

	// Hold the next produce request for a while.
	var held atomic.Bool
	release := make(chan struct{})
	kc.ControlKey(0, func(kafkaRequest) (kafkaResponse, error, bool) {
		if held.CompareAndSwap(false, true) {
			<-release
		}
		return nil, nil, false
	})
	type result struct {
		status int
		err    error
	}
	resc := make(chan result, 1)
	go func() {
		req, _ := http.NewRequest("POST", base+"/v1/events", strings.NewReader(eventJSON("drain-1", "acme", 1)))
		req.Header.Set("Authorization", "Bearer "+adminKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			resc <- result{err: err}
			return
		}
		resp.Body.Close()
		resc <- result{status: resp.StatusCode}
	}()
	for !held.Load() {
		time.Sleep(5 * time.Millisecond)
	}
	cancel() // SIGTERM
	time.Sleep(100 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("Run returned (%v) with a request in flight", err)
	default:
	}
	close(release)
	r := <-resc
	if r.err != nil || r.status != http.StatusAccepted {
		t.Fatalf("in-flight request: %d %v, want 202", r.status, r.err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if n := len(kafkatest.ReadAll(t, kc.Brokers(), topics.UsageEvents)); n != 1 {
		t.Fatalf("%d events in the topic, want 1", n)
	}
}
