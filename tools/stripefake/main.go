// Command stripefake runs the project's stateful Stripe test server for
// the local stack and benchmarks: billing meters, meter events (identifier
// dedup, Idempotency-Key replay, timestamp rules), adjustments and event
// summaries, with optional fault injection.
//
//	stripefake [-addr 127.0.0.1:12111] [-meters api_calls,tokens] [-fault-rate 0.1] [-aggregation-delay 0s]
//
// Dev tooling, not product (see internal/testkit): it links no testing.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/usagemeter/metering/internal/service"
	"github.com/usagemeter/metering/internal/testkit/stripefake"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:12111", "listen address")
	meters := flag.String("meters", "", "comma-separated meter event names to create at start")
	faultRate := flag.Float64("fault-rate", 0, "share of POST requests that fail (0..1)")
	delay := flag.Duration("aggregation-delay", 0, "how long events take to show in summaries")
	flag.Parse()
	log, _ := service.NewLogger(os.Stderr, "info", "stripefake")
	srv := stripefake.New(stripefake.Config{FaultRate: *faultRate, AggregationDelay: *delay, Seed: uint64(time.Now().UnixNano())})
	defer srv.Close()
	for _, m := range strings.Split(*meters, ",") {
		if m = strings.TrimSpace(m); m != "" {
			srv.EnsureMeter(m)
		}
	}
	ctx, stop := service.SignalContext()
	defer stop()
	if err := service.Serve(ctx, log, *addr, srv, 5*time.Second, nil); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "stripefake:", err)
		os.Exit(1)
	}
}
