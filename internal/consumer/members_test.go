package consumer_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/testkit/kafkatest"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// TestPartitionsConsumedAgainAfterMembersAreKilled runs three aggregator
// processes in one group, SIGKILLs them in turn every 1.5 s (each is
// restarted at once) while events flow to every partition, and checks
// that after the last kill every partition catches up with the records
// written until half a second after that kill, within SESSION_TIMEOUT +
// 20 s, and that every event counts exactly once.
//
// A bound of SESSION_TIMEOUT + 5 s holds when the coordinator
// expires the dead member (about 2 s here, most runs) but not on kfake's
// two bad paths (measured): a member killed between its JoinGroup and
// SyncGroup stays in the group for ever without heartbeats once the leader
// has synced, so its partitions would never be consumed; the consumer's
// idle-partition watch forces a rebalance after SESSION_TIMEOUT + 5 s, but kfake
// then leaves every JoinGroup unanswered until kafka-go's coordinator
// timeout (5 s + the rebalance timeout), after which the members leave,
// rejoin fresh and get the partitions: up to about 17 s after the kill. A shorter
// kafka-go Timeout makes joins time out before the coordinator answers
// and the group never settles (measured too), so it stays at its default.
func TestPartitionsConsumedAgainAfterMembersAreKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("runs aggregator processes for about a minute")
	}
	const sessionTimeout = 2 * time.Second
	bin := filepath.Join(t.TempDir(), "aggregator")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/usagemeter/metering/cmd/aggregator").CombinedOutput(); err != nil {
		t.Fatalf("building the aggregator: %v\n%s", err, out)
	}
	for _, tt := range []struct {
		name  string
		kills int
		limit time.Duration
	}{
		{"one member dies", 1, sessionTimeout + 20*time.Second},
		{"members killed in turn every 1.5s", 9, sessionTimeout + 20*time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) { killMembers(t, bin, tt.kills, sessionTimeout, tt.limit) })
	}
}

func killMembers(t *testing.T, bin string, kills int, sessionTimeout, limit time.Duration) {
	const (
		topic, group = "usage.events", "metering-aggregator"
		partitions   = 6
	)
	db := pgtest.New(t)
	kc := kafkatest.Start(t, kfake.GroupMinSessionTimeout(100*time.Millisecond))
	kc.CreateTopic(t, topic, partitions)
	logPath := filepath.Join(t.TempDir(), "aggregators.log")
	logs, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	startProc := func() *exec.Cmd {
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(), "DATABASE_URL="+db.URL, "KAFKA_BROKERS="+kc.Addr(), "HTTP_ADDR=127.0.0.1:0",
			"SESSION_TIMEOUT="+sessionTimeout.String(), "BATCH_WAIT=10ms", "BATCH_SIZE=200", "LOG_LEVEL=info", "KAFKA_PARTITIONS=6")
		cmd.Stdout, cmd.Stderr = logs, logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	procs := []*exec.Cmd{startProc(), startProc(), startProc()}
	defer func() {
		for _, p := range procs {
			_ = p.Process.Signal(syscall.SIGKILL)
			_ = p.Wait()
		}
		if t.Failed() {
			tailLog(t, logPath, 60)
		}
	}()

	// Events to every partition, round robin, every 50 ms.
	w := &kafka.Writer{Addr: kafka.TCP(kc.Addr()), Topic: topic, Balancer: &kafka.RoundRobin{}, BatchTimeout: 5 * time.Millisecond, RequiredAcks: kafka.RequireAll}
	defer w.Close()
	var sent atomic.Int64
	stop := make(chan struct{})
	var feeding sync.WaitGroup
	feeding.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			msgs := make([]kafka.Message, partitions)
			for j := range msgs {
				e := events.Event{ID: fmt.Sprintf("e%d-%d", i, j), Tenant: "acme", Metric: "api_calls", Value: 1, Time: time.Now().UTC()}
				msgs[j] = kafka.Message{Key: []byte(e.Tenant), Value: e.AppendJSON(nil)}
			}
			if err := w.WriteMessages(context.Background(), msgs...); err != nil {
				t.Errorf("writing events: %v", err)
				return
			}
			sent.Add(int64(len(msgs)))
		}
	})
	defer func() { close(stop); feeding.Wait() }()

	stored := func() map[int]int64 {
		rows, err := db.Pool.Query(context.Background(), `SELECT partition, next_offset FROM consumer_offsets WHERE consumer_group = $1`, group)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		out := map[int]int64{}
		for rows.Next() {
			var p int
			var n int64
			if err := rows.Scan(&p, &n); err != nil {
				t.Fatal(err)
			}
			out[p] = n
		}
		return out
	}
	deadline := time.Now().Add(60 * time.Second)
	for len(stored()) < partitions {
		if time.Now().After(deadline) {
			t.Fatalf("only partitions %v consumed after 60s", stored())
		}
		time.Sleep(100 * time.Millisecond)
	}

	for k := range kills {
		i := k % len(procs)
		_ = procs[i].Process.Signal(syscall.SIGKILL)
		_ = procs[i].Wait()
		procs[i] = startProc()
		if k < kills-1 {
			time.Sleep(1500 * time.Millisecond)
		}
	}
	lastKill := time.Now()
	// Records written after the kill: a killed member cannot have
	// counted them, so each partition is consumed again only once they are.
	time.Sleep(500 * time.Millisecond)
	hwm := highWatermarks(t, kc.Addr(), topic, partitions)
	caughtUp := map[int]time.Duration{}
	for len(caughtUp) < partitions && time.Since(lastKill) < limit+20*time.Second {
		now := stored()
		for p := range partitions {
			if _, ok := caughtUp[p]; !ok && now[p] >= hwm[p] {
				caughtUp[p] = time.Since(lastKill)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	var worst time.Duration
	for p := range partitions {
		d, ok := caughtUp[p]
		if !ok {
			t.Errorf("partition %d: stored offset %d has not reached %d, the log end 0.5s after the last kill, %s after it",
				p, stored()[p], hwm[p], time.Since(lastKill).Round(time.Millisecond))
			continue
		}
		worst = max(worst, d)
		if d > limit {
			t.Errorf("partition %d caught up %s after the last kill, want within %s", p, d.Round(time.Millisecond), limit)
		}
	}
	t.Logf("%d kills; every partition caught up with the log end of 0.5s after the last kill within %s of the kill (limit %s): %v",
		kills, worst.Round(time.Millisecond), limit, caughtUp)

	// Exactly once: stop feeding, let everything be counted, compare.
	close(stop)
	feeding.Wait()
	stop = make(chan struct{})
	hwm = highWatermarks(t, kc.Addr(), topic, partitions)
	deadline = time.Now().Add(60 * time.Second)
	for {
		now, done := stored(), true
		for p := range partitions {
			done = done && now[p] >= hwm[p]
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not all consumed 60s after the feed stopped: stored %v, log ends %v", now, hwm)
		}
		time.Sleep(50 * time.Millisecond)
	}
	var counted int64
	_ = db.Pool.QueryRow(context.Background(), `SELECT coalesce(sum(value), 0)::bigint FROM usage_windows WHERE granularity = 'month'`).Scan(&counted)
	if counted != sent.Load() {
		t.Fatalf("%d events counted, %d sent", counted, sent.Load())
	}
}

func highWatermarks(t *testing.T, addr, topic string, partitions int) map[int]int64 {
	t.Helper()
	reqs := make([]kafka.OffsetRequest, partitions)
	for p := range reqs {
		reqs[p] = kafka.LastOffsetOf(p)
	}
	cl := &kafka.Client{Addr: kafka.TCP(addr), Timeout: 10 * time.Second}
	resp, err := cl.ListOffsets(context.Background(), &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]int64{}
	for _, po := range resp.Topics[topic] {
		if po.Error != nil {
			t.Fatalf("log end of %s/%d: %v", topic, po.Partition, po.Error)
		}
		out[po.Partition] = po.LastOffset
	}
	return out
}

func tailLog(t *testing.T, path string, n int) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if !strings.Contains(sc.Text(), `"level":"DEBUG"`) {
			lines = append(lines, sc.Text())
		}
	}
	t.Logf("last aggregator log lines:\n%s", strings.Join(lines[max(0, len(lines)-n):], "\n"))
}
