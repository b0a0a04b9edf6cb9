package redisbaseline_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/record"
	"github.com/usagemeter/metering/internal/testkit/kafkatest"
	"github.com/usagemeter/metering/internal/testkit/redisbaseline"
	"github.com/usagemeter/metering/internal/topics"
	"github.com/usagemeter/metering/internal/windows"
)

// redisServer starts a private redis-server for tb, stopped at its end.
func redisServer(tb testing.TB, p redisbaseline.Persistence) *redisbaseline.Server {
	tb.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		tb.Fatalf("redis-server is missing (Debian's redis-server; make test installs it): %v", err)
	}
	srv, err := redisbaseline.StartServer(context.Background(), tb.TempDir(), p, nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(srv.Stop)
	return srv
}

// runConsumer runs the baseline in this process until tb ends.
func runConsumer(tb testing.TB, brokers []string, addr, group string, batch int) {
	c := redisbaseline.NewConsumer(redisbaseline.ConsumerConfig{Brokers: brokers, Topic: topics.UsageEvents, Group: group,
		RedisAddr: addr, BatchSize: batch, SessionTimeout: time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Error(err)
		}
		_ = c.Close()
	})
}

func waitDrained(tb testing.TB, broker, group string) {
	tb.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		lag, err := redisbaseline.Lag(context.Background(), broker, group, topics.UsageEvents, redisbaseline.Partitions)
		if err == nil && lag == 0 {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("still %d records behind (%v)", lag, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestCountsEachEventOnce: resent events, invalid records and a second
// delivery of the whole topic to a new group count each event once, in
// each of its four windows.
func TestCountsEachEventOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := redisServer(t, redisbaseline.Snapshots)
	kc := kafkatest.Start(t, kfake.GroupMinSessionTimeout(100*time.Millisecond))
	kc.CreateTopic(t, topics.UsageEvents, redisbaseline.Partitions)
	w := kafkatest.NewWriter(kc.Brokers(), topics.UsageEvents)
	defer w.Close()
	rng := rand.New(rand.NewPCG(3, 4))
	truth := map[string]int64{}
	var recs []record.Record
	var sent []events.Event
	for i := range 3000 {
		e := events.New(fmt.Sprint("t", rng.IntN(20)), []string{"api_calls", "tokens"}[i%2], 1+rng.Int64N(100))
		if len(sent) > 0 && i%3 == 0 {
			e = sent[rng.IntN(len(sent))]
		} else {
			sent = append(sent, e)
			for _, g := range windows.All {
				truth[redisbaseline.TruthKey(e.Tenant, e.Metric, g, g.Start(e.Time))] += e.Value
			}
		}
		recs = append(recs, record.Record{Key: []byte(e.Tenant), Value: e.AppendJSON(nil)})
	}
	recs = append(recs, record.Record{Key: []byte("t1"), Value: []byte("not an event")}, record.Record{Key: []byte("t1"), Value: []byte(`{}`)})
	if err := w.Write(ctx, recs...); err != nil {
		t.Fatal(err)
	}
	for _, group := range []string{"first", "second"} {
		runConsumer(t, kc.Brokers(), srv.Addr, group, 500)
		waitDrained(t, kc.Addr(), group)
	}
	got, err := redisbaseline.Totals(ctx, srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(truth) {
		t.Errorf("%d counters, want %d", len(got), len(truth))
	}
	for k, v := range truth {
		if got[k] != v {
			t.Errorf("%s = %d, want %d", k, got[k], v)
		}
	}
}

// TestKillTest runs a small kill test of each kind: SIGKILLs of the
// consumer alone lose nothing (the script is atomic and the offsets are
// committed after it), and the report adds up.
func TestKillTest(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills processes")
	}
	t.Parallel()
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..", "..")
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server is missing (Debian's redis-server; make test installs it): %v", err)
	}
	tests := []struct {
		name      string
		killRedis bool
		p         redisbaseline.Persistence
	}{
		{"consumer-kills", false, redisbaseline.Snapshots},
		{"redis-kill-aof", true, redisbaseline.AppendOnly},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			work := t.TempDir()
			rep, err := redisbaseline.RunKillTest(context.Background(), redisbaseline.KillConfig{Root: root, Work: work,
				Events: 5000, DupShare: 0.3, Tenants: 20, ConsumerKills: 3, KillRedis: tt.killRedis, Persistence: tt.p, Batch: 500, Seed: 7}, os.Stderr)
			defer func() {
				if t.Failed() {
					b, _ := os.ReadFile(filepath.Join(work, "redisbaseline.log"))
					t.Logf("the baseline's and Redis's log:\n%s", b)
				}
			}()
			if err != nil {
				t.Fatal(err)
			}
			if rep.Unique != 5000 || rep.Sent != rep.Unique+rep.Resent || rep.ConsumerKills < 3 || rep.TruthUnits == 0 {
				t.Errorf("report does not add up: %+v", rep)
			}
			if tt.killRedis != (rep.RedisKills == 1) {
				t.Errorf("%d redis-server kills", rep.RedisKills)
			}
			if !tt.killRedis && (rep.Under != 0 || rep.Over != 0 || rep.WindowsDiffering != 0) {
				t.Errorf("consumer kills alone: under %d, over %d, %d windows differing", rep.Under, rep.Over, rep.WindowsDiffering)
			}
		})
	}
}
