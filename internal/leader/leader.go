// Package leader elects one leader per named loop among every process that
// shares a Postgres database, so that singleton work (retention, the
// biller's sync) runs in one replica at a time.
//
// An Elector campaigns with pg_try_advisory_lock on a connection of its
// own, outside any pool. The session-level lock is the leadership: it is
// held for as long as that connection lives, and Postgres releases it the
// moment the connection closes because the process resigned or died; a
// leader that went silent (lost its network) loses it when the server ends
// its idle session, after three Intervals. A follower retries every
// Interval, so a new leader takes over within one Interval of the release.
//
// Invariant: at most one Elector per name holds the lock at any instant,
// and an Elector starts its loop only after winning the lock. The loop's
// context is cancelled when the Elector resigns, or within one Interval of
// its connection failing; a deposed leader's loop may therefore overlap a
// new leader's by at most one Interval, so a loop's work must stay safe to
// repeat (every singleton loop in this module is idempotent).
package leader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/usagemeter/metering/internal/service"
)

// lockSpace is the first key of every leadership lock ("lead" in ASCII);
// the second is hashtext(name). Two-key advisory locks never collide with
// the one-key lock migrations take.
const lockSpace int32 = 0x6c656164

// DefaultInterval is how often a follower campaigns and a leader checks
// its connection when Options.Interval is zero.
const DefaultInterval = 5 * time.Second

// Options tune an Elector. The zero value is usable.
type Options struct {
	// Interval between campaigns of a follower and connection checks of a
	// leader; DefaultInterval when zero.
	Interval time.Duration
	// Logger receives elections and losses; discarded when nil.
	Logger *slog.Logger
	// Registerer receives metering_leader{loop}; none when nil. Electors of
	// several loops may share one registry.
	Registerer prometheus.Registerer
}

// Elector campaigns for the leadership of one named loop.
type Elector struct {
	name     string
	connCfg  *pgx.ConnConfig
	interval time.Duration
	log      *slog.Logger
	gauge    prometheus.Gauge
	leading  atomic.Bool
}

// New returns an Elector for the loop name on the database pool connects
// to. It opens its own connection when it campaigns; the pool itself is
// never used for the lock.
func New(pool *pgxpool.Pool, name string, opts Options) *Elector {
	cfg := pool.Config().ConnConfig.Copy()
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	// On-call can see who leads: SELECT pid, application_name FROM pg_stat_activity.
	cfg.RuntimeParams["application_name"] = "metering leader " + name
	e := &Elector{name: name, connCfg: cfg, interval: opts.Interval, log: opts.Logger}
	if e.interval <= 0 {
		e.interval = DefaultInterval
	}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	e.log = e.log.With("loop", name)
	e.gauge = leaderGauge(opts.Registerer).WithLabelValues(name)
	e.gauge.Set(0)
	return e
}

// leaderGauge registers metering_leader on reg, or finds the one another
// Elector registered there.
func leaderGauge(reg prometheus.Registerer) *prometheus.GaugeVec {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "metering_leader",
		Help: "1 while this process is the elected leader of the loop, else 0.",
	}, []string{"loop"})
	if reg == nil {
		return g
	}
	if err := reg.Register(g); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(*prometheus.GaugeVec); ok {
				return existing
			}
		}
		panic(fmt.Sprintf("leader: registering metering_leader: %v", err))
	}
	return g
}

// Singleton returns loop as a Service that runs only while this process
// leads it: an Elector for the loop named loop.Name() campaigns, and runs
// loop each time it wins (see Elector.Run).
func Singleton(pool *pgxpool.Pool, loop service.Service, opts Options) service.Service {
	return singleton{e: New(pool, loop.Name(), opts), loop: loop}
}

type singleton struct {
	e    *Elector
	loop service.Service
}

func (s singleton) Name() string                  { return s.e.Name() }
func (s singleton) Run(ctx context.Context) error { return s.e.Run(ctx, s.loop.Run) }

// Name is the loop's name.
func (e *Elector) Name() string { return e.name }

// IsLeader reports whether this Elector holds the leadership now.
func (e *Elector) IsLeader() bool { return e.leading.Load() }

// Run campaigns until ctx ends. Each time it wins, it calls loop with a
// context that is cancelled when leadership ends, and waits for loop to
// return before campaigning again. If loop returns by itself (with or
// without an error), the Elector resigns so that another process can lead,
// and campaigns again after one Interval. Run returns nil when ctx ends,
// after resigning.
func (e *Elector) Run(ctx context.Context, loop func(ctx context.Context) error) error {
	for {
		conn, err := e.campaign(ctx)
		if err != nil && ctx.Err() == nil {
			e.log.WarnContext(ctx, "leader election", "err", err)
		}
		if conn != nil {
			e.lead(ctx, conn, loop)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(e.interval):
		}
	}
}

// campaign connects and tries the lock once. It returns the connection
// holding the lock, or nil when another process holds it.
func (e *Elector) campaign(ctx context.Context) (*pgx.Conn, error) {
	if ctx.Err() != nil {
		return nil, nil
	}
	cctx, cancel := context.WithTimeout(ctx, e.interval+5*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, e.connCfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to campaign for %s: %w", e.name, err)
	}
	var won bool
	if err := conn.QueryRow(cctx, `SELECT pg_try_advisory_lock($1, hashtext($2))`, lockSpace, e.name).Scan(&won); err != nil {
		_ = conn.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("campaigning for %s: %w", e.name, err)
	}
	if !won {
		_ = conn.Close(context.WithoutCancel(ctx))
		return nil, nil
	}
	e.bound(cctx, conn)
	return conn, nil
}

// bound makes the server end the session, and so release the lock, soon
// after a leader it can no longer hear from stops pinging: the session
// ends after three Intervals idle (Postgres 14 and later), and TCP
// keepalives drop a vanished peer in about 25 seconds instead of the
// operating system's default of hours. Best effort: a server that refuses a
// setting keeps its default.
func (e *Elector) bound(ctx context.Context, conn *pgx.Conn) {
	idle := 3 * e.interval
	for _, set := range []string{
		fmt.Sprintf("SET idle_session_timeout = %d", idle.Milliseconds()),
		"SET tcp_keepalives_idle = 10", "SET tcp_keepalives_interval = 5", "SET tcp_keepalives_count = 3",
	} {
		if _, err := conn.Exec(ctx, set); err != nil {
			e.log.DebugContext(ctx, "leader connection setting refused", "setting", set, "err", err)
		}
	}
}

// lead runs loop while conn, which holds the lock, stays healthy, then
// closes conn, which releases the lock.
func (e *Elector) lead(ctx context.Context, conn *pgx.Conn, loop func(ctx context.Context) error) {
	e.leading.Store(true)
	e.gauge.Set(1)
	e.log.InfoContext(ctx, "elected leader")
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- loop(lctx) }()

	why := e.watch(lctx, conn, done)
	cancel()
	loopErr := <-done
	e.gauge.Set(0)
	e.leading.Store(false)
	// Closing the session releases the lock even if the unlock never ran.
	closeCtx, closeCancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	_ = conn.Close(closeCtx)
	closeCancel()
	switch {
	case why != nil:
		e.log.ErrorContext(ctx, "lost leadership", "err", why)
	case loopErr != nil && ctx.Err() == nil:
		e.log.ErrorContext(ctx, "leader loop failed; resigned", "err", loopErr)
	case ctx.Err() == nil:
		e.log.WarnContext(ctx, "leader loop returned; resigned")
	default:
		e.log.InfoContext(ctx, "resigned leadership")
	}
}

// watch checks conn every Interval until ctx ends, the loop returns (its
// result is put back on done) or the connection fails (returned).
func (e *Elector) watch(ctx context.Context, conn *pgx.Conn, done chan error) error {
	t := time.NewTicker(e.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-done:
			done <- err
			return nil
		case <-t.C:
			pctx, cancel := context.WithTimeout(ctx, e.interval)
			err := conn.Ping(pctx)
			cancel()
			if err != nil && ctx.Err() == nil {
				return fmt.Errorf("leader connection of %s: %w", e.name, err)
			}
		}
	}
}
