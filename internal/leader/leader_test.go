package leader_test

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/usagemeter/metering/internal/leader"
	"github.com/usagemeter/metering/internal/service"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

const interval = 50 * time.Millisecond

// replica is one process's elector for a loop, with the loop's record.
type replica struct {
	e       *leader.Elector
	reg     *prometheus.Registry
	cancel  context.CancelFunc
	done    chan error
	started atomic.Int32 // times the loop was called
	stopped atomic.Int32 // times the loop saw its context end
}

// start runs an elector for name with a loop that runs until its context
// ends, counting how many loops of name run at once in running.
func start(t *testing.T, db *pgtest.DB, name string, running *atomic.Int32, overlap *atomic.Bool) *replica {
	t.Helper()
	r := &replica{reg: prometheus.NewRegistry(), done: make(chan error, 1)}
	r.e = leader.New(db.Pool, name, leader.Options{Interval: interval, Logger: slog.New(slog.DiscardHandler), Registerer: r.reg})
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() {
		r.done <- r.e.Run(ctx, func(ctx context.Context) error {
			r.started.Add(1)
			if running.Add(1) > 1 {
				overlap.Store(true)
			}
			<-ctx.Done()
			running.Add(-1)
			r.stopped.Add(1)
			return nil
		})
	}()
	t.Cleanup(func() {
		cancel()
		<-r.done
	})
	return r
}

func (r *replica) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	if err := <-r.done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	r.done <- nil // for the cleanup
}

// gauge reads metering_leader{loop=name} from r's registry.
func (r *replica) gauge(t *testing.T) float64 {
	t.Helper()
	families, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range families {
		if mf.GetName() != "metering_leader" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "loop" && l.GetValue() == r.e.Name() {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("no metering_leader{loop=%q}", r.e.Name())
	return 0
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 5s: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func leaders(rs ...*replica) (n int, who *replica) {
	for _, r := range rs {
		if r.e.IsLeader() {
			n++
			who = r
		}
	}
	return n, who
}

// killLeaderConnection terminates the backend holding name's lock, as
// Postgres sees a leader process die or lose its network.
func killLeaderConnection(t *testing.T, db *pgtest.DB, name string) {
	t.Helper()
	var killed bool
	err := db.Pool.QueryRow(context.Background(), `SELECT pg_terminate_backend(l.pid) FROM pg_locks l
		WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
		AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
		AND l.classid = 1818583396 AND l.objid = hashtext($1)::oid`, name).Scan(&killed)
	if err != nil || !killed {
		t.Fatalf("terminating the leader's connection: %v, %v", killed, err)
	}
}

func TestOneLeaderPerLoopReelectedWhenItsConnectionDies(t *testing.T) {
	t.Parallel()
	db := pgtest.NewEmpty(t)
	var running atomic.Int32
	var overlap atomic.Bool
	a := start(t, db, "retention", &running, &overlap)
	b := start(t, db, "retention", &running, &overlap)

	eventually(t, "one leader elected", func() bool { n, _ := leaders(a, b); return n == 1 })
	time.Sleep(10 * interval) // many campaigns of the follower
	n, first := leaders(a, b)
	follower := map[*replica]*replica{a: b, b: a}[first]
	if n != 1 || overlap.Load() || first.started.Load() != 1 || follower.started.Load() != 0 {
		t.Fatalf("steady state: %d leaders, overlap %v, loops started %d and %d", n, overlap.Load(), a.started.Load(), b.started.Load())
	}
	if first.gauge(t) != 1 || follower.gauge(t) != 0 {
		t.Fatalf("metering_leader: leader %v, follower %v", first.gauge(t), follower.gauge(t))
	}

	// The leader's connection dies: its loop is stopped and a leader is
	// elected again, whichever replica wins the next campaign.
	killLeaderConnection(t, db, "retention")
	eventually(t, "the deposed leader's loop stopped", func() bool { return first.stopped.Load() == 1 })
	eventually(t, "a leader re-elected", func() bool { n, _ := leaders(a, b); return n == 1 && running.Load() == 1 })
	if first.gauge(t)+follower.gauge(t) != 1 {
		t.Fatalf("metering_leader after re-election: %v + %v", first.gauge(t), follower.gauge(t))
	}

	// The current leader resigns (its process shuts down): the other leads.
	_, current := leaders(a, b)
	other := map[*replica]*replica{a: b, b: a}[current]
	current.stop(t)
	if current.gauge(t) != 0 || current.e.IsLeader() {
		t.Fatal("a stopped elector still reports leadership")
	}
	eventually(t, "the other replica took over", func() bool { return other.e.IsLeader() && running.Load() == 1 })
}

func TestLoopsOfDifferentNamesLeadIndependently(t *testing.T) {
	t.Parallel()
	db := pgtest.NewEmpty(t)
	var running [2]atomic.Int32
	var overlap [2]atomic.Bool
	tests := []struct {
		name string
		i    int
	}{{"retention", 0}, {"biller-sync", 1}}
	var rs []*replica
	for _, tc := range tests {
		rs = append(rs, start(t, db, tc.name, &running[tc.i], &overlap[tc.i]), start(t, db, tc.name, &running[tc.i], &overlap[tc.i]))
	}
	eventually(t, "a leader for each loop", func() bool {
		n0, _ := leaders(rs[0], rs[1])
		n1, _ := leaders(rs[2], rs[3])
		return n0 == 1 && n1 == 1
	})
	time.Sleep(5 * interval)
	for _, tc := range tests {
		if running[tc.i].Load() != 1 || overlap[tc.i].Load() {
			t.Errorf("%s: %d loops running, overlap %v", tc.name, running[tc.i].Load(), overlap[tc.i].Load())
		}
	}
}

func TestLoopThatReturnsResignsAndCampaignsAgain(t *testing.T) {
	t.Parallel()
	db := pgtest.NewEmpty(t)
	e := leader.New(db.Pool, "flaky", leader.Options{Interval: interval})
	ctx, cancel := context.WithCancel(context.Background())
	var calls atomic.Int32
	var wg sync.WaitGroup
	wg.Go(func() {
		_ = e.Run(ctx, func(context.Context) error {
			calls.Add(1)
			return context.DeadlineExceeded
		})
	})
	eventually(t, "the loop called again after it failed", func() bool { return calls.Load() >= 3 })
	cancel()
	wg.Wait()
	if e.IsLeader() {
		t.Fatal("leader after Run returned")
	}
	// The lock was released: a new elector wins at once.
	var won bool
	if err := db.Pool.QueryRow(context.Background(), `SELECT pg_try_advisory_lock(1818583396, hashtext('flaky'))`).Scan(&won); err != nil || !won {
		t.Fatalf("lock still held after Run returned: %v %v", won, err)
	}
}

// countingLoop is a singleton loop that counts how many of it run at once.
type countingLoop struct {
	running, started *atomic.Int32
	overlap          *atomic.Bool
}

func (countingLoop) Name() string { return "singleton-test" }

func (l countingLoop) Run(ctx context.Context) error {
	l.started.Add(1)
	if l.running.Add(1) > 1 {
		l.overlap.Store(true)
	}
	<-ctx.Done()
	l.running.Add(-1)
	return nil
}

func TestSingletonRunsItsLoopInOneProcessAtATime(t *testing.T) {
	t.Parallel()
	db := pgtest.NewEmpty(t)
	var running, started atomic.Int32
	var overlap atomic.Bool
	loop := countingLoop{running: &running, started: &started, overlap: &overlap}
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	for range 3 {
		s := leader.Singleton(db.Pool, loop, leader.Options{Interval: interval, Logger: slog.New(slog.DiscardHandler)})
		if s.Name() != loop.Name() {
			t.Fatalf("Singleton.Name() = %q, want the loop's %q", s.Name(), loop.Name())
		}
		wg.Go(func() {
			if err := service.RunAll(ctx, slog.New(slog.DiscardHandler), s); err != nil {
				t.Errorf("RunAll: %v", err)
			}
		})
	}
	deadline := time.Now().Add(10 * time.Second)
	for started.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(5 * interval)
	cancel()
	wg.Wait()
	if started.Load() != 1 || overlap.Load() || running.Load() != 0 {
		t.Errorf("loop started %d times (want 1), overlapped %v, still running %d", started.Load(), overlap.Load(), running.Load())
	}
}
