// Package service is the runtime every binary shares: structured logger,
// signal handling, Prometheus registry, the /healthz, /readyz and /metrics
// endpoints, an HTTP server that drains in-flight requests on shutdown, and
// Service, the one start/stop shape of every background loop, run by
// RunAll.
//
// Invariants: nothing here is global; each binary builds its own registry
// and logger and passes them down. Every server Serve starts holds at most
// HTTPLimits.MaxConnections connections, cuts a response a client does not
// read within HTTPLimits.WriteTimeout, and sends the security headers of
// httpguard on every answer; /readyz names failing checks but never their
// errors (which hold addresses), those go to the log. RunAll returns only
// after every service it started has returned (TestRunAll).
package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/net/netutil"

	"github.com/usagemeter/metering/internal/apidoc"
	"github.com/usagemeter/metering/internal/httpguard"
	"github.com/usagemeter/metering/internal/httpjson"
)

// NewLogger returns a JSON slog logger at level ("debug", "info", "warn",
// "error") writing to w, tagged with the service name.
func NewLogger(w io.Writer, level, name string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("LOG_LEVEL %q: use debug, info, warn or error", level)
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l})).With("service", name), nil
}

// SignalContext returns a context cancelled on SIGINT or SIGTERM.
func SignalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// NewRegistry returns a Prometheus registry with the Go and process
// collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Check is one readiness check; it returns nil when the dependency is usable.
type Check func(ctx context.Context) error

// Routes are the routes Mount adds to every service.
var Routes = []string{"GET /healthz", "GET /readyz", "GET /metrics", "GET /openapi.yaml", "GET /asyncapi.yaml"}

// Mount adds /healthz (the process is up), /readyz (every check passes
// within 2s), /metrics (reg), /openapi.yaml and /asyncapi.yaml (the
// billing.events messages) to mux. /readyz answers
// each check "ok" or "unavailable"; a check's error goes to the log only.
func Mount(mux *http.ServeMux, reg *prometheus.Registry, checks map[string]Check) {
	MountLogged(mux, reg, checks, slog.New(slog.DiscardHandler))
}

// MountLogged is Mount with the logger that receives failed checks'
// errors.
func MountLogged(mux *http.ServeMux, reg *prometheus.Registry, checks map[string]Check, log *slog.Logger) {
	mux.HandleFunc("GET /openapi.yaml", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/yaml")
		_, _ = w.Write(apidoc.OpenAPI)
	})
	mux.HandleFunc("GET /asyncapi.yaml", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/yaml")
		_, _ = w.Write(apidoc.AsyncAPI)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		httpjson.Write(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		results := map[string]string{}
		failed := []string{}
		for name, check := range checks {
			if err := check(ctx); err != nil {
				log.WarnContext(r.Context(), "readiness check failed", "check", name, "err", err)
				results[name] = "unavailable"
				failed = append(failed, name)
			} else {
				results[name] = "ok"
			}
		}
		if len(failed) > 0 {
			httpjson.Write(w, http.StatusServiceUnavailable, map[string]any{
				"status": "unavailable", "checks": results,
				"error": map[string]string{"code": "not_ready", "message": "not ready: " + strings.Join(failed, ", ")},
			})
			return
		}
		httpjson.Write(w, http.StatusOK, map[string]any{"status": "ok", "checks": results})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
}

// HTTPLimits bound what clients can hold of a server.
type HTTPLimits struct {
	// MaxConnections is the most connections open at once; more wait in
	// the listen backlog until one closes.
	MaxConnections int
	// WriteTimeout bounds a request from the end of its headers to the end
	// of its answer (reading the body included): a client that does not
	// read its answer is cut off then. Handlers that legitimately take
	// longer extend their own deadline (http.ResponseController).
	WriteTimeout time.Duration
}

// DefaultHTTPLimits are the defaults of HTTP_MAX_CONNECTIONS and
// HTTP_WRITE_TIMEOUT. The write timeout is above the 60 s read timeout
// (the body is read within it) plus the slowest answer, a publish held up
// to PUBLISH_TIMEOUT.
var DefaultHTTPLimits = HTTPLimits{MaxConnections: 1024, WriteTimeout: 2 * time.Minute}

// Serve serves h on addr until ctx ends, then stops accepting, lets
// in-flight requests finish within drain, and returns. ready, if not nil,
// is called with the bound address once listening. It applies
// DefaultHTTPLimits; see ServeLimited.
func Serve(ctx context.Context, log *slog.Logger, addr string, h http.Handler, drain time.Duration, ready func(net.Addr)) error {
	return ServeLimited(ctx, log, addr, h, drain, DefaultHTTPLimits, ready)
}

// ServeLimited is Serve with limits (a zero field takes its default). h
// is wrapped in httpguard.SecurityHeaders.
func ServeLimited(ctx context.Context, log *slog.Logger, addr string, h http.Handler, drain time.Duration, limits HTTPLimits, ready func(net.Addr)) error {
	if limits.MaxConnections <= 0 {
		limits.MaxConnections = DefaultHTTPLimits.MaxConnections
	}
	if limits.WriteTimeout <= 0 {
		limits.WriteTimeout = DefaultHTTPLimits.WriteTimeout
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	ln = netutil.LimitListener(ln, limits.MaxConnections)
	srv := &http.Server{
		Handler:           httpguard.SecurityHeaders(h),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		WriteTimeout:      limits.WriteTimeout,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.InfoContext(ctx, "listening", "addr", ln.Addr().String(), "max_connections", limits.MaxConnections, "write_timeout", limits.WriteTimeout)
	if ready != nil {
		ready(ln.Addr())
	}
	select {
	case err := <-errc:
		return fmt.Errorf("serving %s: %w", addr, err)
	case <-ctx.Done():
	}
	log.Info("shutting down: draining in-flight requests", "timeout", drain)
	sctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("draining HTTP server: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
