package service

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Service is a part of a process that runs until it is stopped: the
// consumer, a relay, a singleton loop, the HTTP server. Run blocks until
// ctx ends, then returns nil once stopped; it returns early only on a
// failure the process cannot serve through.
type Service interface {
	Name() string
	Run(ctx context.Context) error
}

// Func makes run a Service called name.
func Func(name string, run func(ctx context.Context) error) Service {
	return funcService{name: name, run: run}
}

type funcService struct {
	name string
	run  func(ctx context.Context) error
}

func (f funcService) Name() string                  { return f.name }
func (f funcService) Run(ctx context.Context) error { return f.run(ctx) }

// RunAll starts each service in its own goroutine and blocks until ctx
// ends or one of them returns. It then stops them in the reverse of their
// order, each only after the one listed after it has returned, so that a
// server listed last drains its requests before the loops listed before it
// stop. It returns after every service has returned, with the first error
// one of them returned (nil when all stopped cleanly).
func RunAll(ctx context.Context, log *slog.Logger, svcs ...Service) error {
	type result struct {
		i   int
		err error
	}
	done := make(chan result, len(svcs))
	cancels := make([]context.CancelFunc, len(svcs))
	// Each service stops when RunAll says so, not when ctx ends, and keeps
	// ctx's values.
	base := context.WithoutCancel(ctx)
	for i, s := range svcs {
		sctx, cancel := context.WithCancel(base)
		cancels[i] = cancel
		log.DebugContext(ctx, "service starting", "service", s.Name())
		go func() { done <- result{i, s.Run(sctx)} }()
	}
	stopped := make([]bool, len(svcs))
	var first error
	record := func(r result) {
		stopped[r.i] = true
		switch {
		case r.err != nil && first == nil:
			// Returned to the caller, who reports it.
			first = r.err
			log.DebugContext(ctx, "service failed", "service", svcs[r.i].Name(), "err", r.err)
		case r.err != nil:
			// Not returned: the log is its only trace.
			log.ErrorContext(ctx, "service failed while stopping", "service", svcs[r.i].Name(), "err", r.err)
		default:
			log.DebugContext(ctx, "service stopped", "service", svcs[r.i].Name())
		}
	}
	if len(svcs) > 0 {
		select {
		case <-ctx.Done():
		case r := <-done:
			record(r)
		}
	}
	for i := len(svcs) - 1; i >= 0; i-- {
		cancels[i]()
		for !stopped[i] {
			record(<-done)
		}
	}
	return first
}

// Server is the HTTP server as a Service: ServeLimited on Addr until
// stopped, then a drain of at most Drain.
type Server struct {
	Log     *slog.Logger
	Addr    string
	Handler http.Handler
	Drain   time.Duration
	Limits  HTTPLimits
	// Ready, if not nil, receives the bound address once listening.
	Ready func(net.Addr)
}

// Name is "http".
func (s Server) Name() string { return "http" }

// Run serves until ctx ends, then drains.
func (s Server) Run(ctx context.Context) error {
	return ServeLimited(ctx, s.Log, s.Addr, s.Handler, s.Drain, s.Limits, s.Ready)
}
