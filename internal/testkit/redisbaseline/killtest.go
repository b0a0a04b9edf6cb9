package redisbaseline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/topics"
	"github.com/usagemeter/metering/internal/windows"
)

// Partitions of usage.events in the kill test and the benchmark, as the
// stack runs it.
const Partitions = 4

// KillConfig is one kill test of the baseline.
type KillConfig struct {
	// Root is the repository root (to build tools/redisbaseline); Work a
	// directory for the binary, Redis's data and the logs.
	Root, Work string
	Events     int     // unique events
	DupShare   float64 // share of resends among the events sent
	Tenants    int
	// ConsumerKills is how many SIGKILLs of the consumer, at least.
	ConsumerKills int
	// KillRedis SIGKILLs redis-server once, half way through the load,
	// and starts it again on its data directory.
	KillRedis   bool
	Persistence Persistence
	Batch       int // events per pipeline (default 2000)
	Seed        uint64
}

// KillReport is what a kill test counted and found. Units are the events'
// values summed; Under and Over are summed over the month windows, where
// each unique event counts once.
type KillReport struct {
	Persistence          Persistence
	Sent, Unique, Resent int
	ConsumerKills        int
	RedisKills           int
	// UnsavedWrites is how many writes Redis had made since its last RDB
	// snapshot when it was killed (rdb_changes_since_last_save), and
	// Snapshotted whether it had taken one at all.
	UnsavedWrites int64
	Snapshotted   bool
	// CommittedAtRedisKill is how many records the consumer group had
	// committed in Kafka when Redis was killed (half way through the
	// load, once the consumer had caught up or 30 s had passed).
	CommittedAtRedisKill int64
	// StallRestarts counts restarts of a consumer that made no progress
	// for 15 s while records waited, after the load.
	StallRestarts    int
	WindowsChecked   int
	WindowsDiffering int
	TruthUnits       int64 // month windows, ground truth
	Under, Over      int64 // month windows: units missing, units too many
	Elapsed          time.Duration
}

// RunKillTest runs the baseline as a process against an in-process broker
// and a private redis-server, sends cfg.Events events with resends while
// SIGKILLing the consumer (and Redis once), drains, and compares Redis's
// counters with the ground truth. err is about the test itself: a count
// that differs is the finding, in the report, not an error.
func RunKillTest(ctx context.Context, cfg KillConfig, out io.Writer) (rep KillReport, err error) {
	started := time.Now()
	rep.Persistence = cfg.Persistence
	defer func() { rep.Elapsed = time.Since(started) }()
	if cfg.Batch <= 0 {
		cfg.Batch = 2000
	}
	if cfg.Tenants <= 0 {
		cfg.Tenants = 50
	}
	logPath := filepath.Join(cfg.Work, "redisbaseline.log")
	if err := os.MkdirAll(cfg.Work, 0o755); err != nil {
		return rep, err
	}
	logs, err := os.Create(logPath)
	if err != nil {
		return rep, err
	}
	defer logs.Close()
	bin := filepath.Join(cfg.Work, "bin", "redisbaseline")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./tools/redisbaseline")
	build.Dir = cfg.Root
	if b, err := build.CombinedOutput(); err != nil {
		return rep, fmt.Errorf("building tools/redisbaseline: %v\n%s", err, b)
	}

	kc, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(Partitions, topics.UsageEvents),
		kfake.GroupMinSessionTimeout(100*time.Millisecond))
	if err != nil {
		return rep, fmt.Errorf("starting the broker: %w", err)
	}
	defer kc.Close()
	brokers := kc.ListenAddrs()
	srv, err := StartServer(ctx, filepath.Join(cfg.Work, "redis"), cfg.Persistence, logs)
	if err != nil {
		return rep, err
	}
	defer srv.Stop()
	const group = "redis-baseline-kill"
	consumer := &proc{bin: bin, log: logs, env: []string{"KAFKA_BROKERS=" + brokers[0], "REDIS_ADDR=" + srv.Addr, "GROUP=" + group,
		fmt.Sprint("BATCH_SIZE=", cfg.Batch), "SESSION_TIMEOUT=1s", "LOG_LEVEL=warn"}}
	if err := consumer.start(); err != nil {
		return rep, err
	}
	defer consumer.stop()

	w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: topics.UsageEvents, Balancer: kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll, BatchSize: 1000, BatchBytes: 16 << 20, BatchTimeout: 2 * time.Millisecond}
	defer w.Close()

	// The killer: SIGKILL and restart the consumer every 0.3-1.2 s until
	// the load is sent and it has killed ConsumerKills times.
	var loadDone, paused atomic.Bool
	var killerErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		krng := rand.New(rand.NewPCG(cfg.Seed^1, cfg.Seed^2))
		for !loadDone.Load() || rep.ConsumerKills < cfg.ConsumerKills {
			if ctx.Err() != nil {
				return
			}
			time.Sleep(time.Duration(300+krng.IntN(900)) * time.Millisecond)
			if paused.Load() {
				continue
			}
			consumer.kill()
			rep.ConsumerKills++
			if err := consumer.start(); err != nil {
				killerErr = err
				return
			}
		}
	})

	fmt.Fprintf(out, "  baseline kill test (%s): %d events, %.0f%% resends, %d+ consumer kills%s\n", cfg.Persistence, cfg.Events,
		cfg.DupShare*100, cfg.ConsumerKills, map[bool]string{true: ", one redis-server kill", false: ""}[cfg.KillRedis])
	truth := map[string]int64{}
	rng := rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x5ed15))
	var sent []events.Event
	now := time.Now().UTC()
	const batch = 500
	minDuration := time.Duration(cfg.ConsumerKills) * 750 * time.Millisecond
	perBatch := minDuration / time.Duration(max(1, cfg.Events/batch))
	next := time.Now()
	metrics := []string{"api_calls", "tokens", "bytes"}
	var loadErr error
	for rep.Unique < cfg.Events && ctx.Err() == nil {
		time.Sleep(time.Until(next))
		next = next.Add(perBatch)
		msgs := make([]kafka.Message, 0, batch)
		for len(msgs) < batch && rep.Unique < cfg.Events {
			var e events.Event
			if len(sent) > 0 && rng.Float64() < cfg.DupShare {
				e = sent[rng.IntN(len(sent))]
				rep.Resent++
			} else {
				e = events.Event{ID: events.NewID(), Tenant: fmt.Sprint("t", rng.IntN(cfg.Tenants)), Metric: metrics[rng.IntN(len(metrics))],
					Value: rng.Int64N(1000), Time: now.Add(-time.Duration(rng.IntN(3600)) * time.Second)}
				sent = append(sent, e)
				for _, g := range windows.All {
					truth[TruthKey(e.Tenant, e.Metric, g, g.Start(e.Time))] += e.Value
				}
				rep.Unique++
			}
			msgs = append(msgs, kafka.Message{Key: []byte(e.Tenant), Value: e.AppendJSON(nil)})
		}
		rep.Sent += len(msgs)
		if loadErr = w.WriteMessages(ctx, msgs...); loadErr != nil {
			loadErr = fmt.Errorf("writing to the broker: %w", loadErr)
			break
		}
		if cfg.KillRedis && rep.RedisKills == 0 && rep.Unique >= cfg.Events/2 {
			// As in production most of the time, the consumer has caught
			// up: what it counted is committed in Kafka (the consumer
			// kills pause for this, up to 30 s).
			paused.Store(true)
			for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
				if lag, err := Lag(ctx, brokers[0], group, topics.UsageEvents, Partitions); err == nil && lag == 0 {
					break
				}
			}
			if lag, err := Lag(ctx, brokers[0], group, topics.UsageEvents, Partitions); err == nil {
				rep.CommittedAtRedisKill = int64(rep.Sent) - lag
			}
			paused.Store(false)
			if n, err := unsavedWrites(ctx, srv.Addr); err == nil {
				rep.UnsavedWrites = n
			}
			_, err := os.Stat(filepath.Join(srv.dir, "dump.rdb"))
			rep.Snapshotted = err == nil
			srv.Kill()
			rep.RedisKills++
			if loadErr = srv.Start(ctx); loadErr != nil {
				break
			}
		}
	}
	loadDone.Store(true)
	wg.Wait()
	if err := errors.Join(loadErr, killerErr, ctx.Err()); err != nil {
		return rep, err
	}
	if rep.StallRestarts, err = waitDrained(ctx, brokers[0], group, consumer, 5*time.Minute); err != nil {
		return rep, fmt.Errorf("%w (see %s)", err, logPath)
	}
	got, err := Totals(ctx, srv.Addr)
	if err != nil {
		return rep, err
	}
	for k, v := range truth {
		if got[k] != v {
			rep.WindowsDiffering++
		}
	}
	for k := range got {
		if _, ok := truth[k]; !ok {
			rep.WindowsDiffering++
		}
	}
	rep.WindowsChecked = len(truth)
	monthly := map[string]bool{}
	for k := range truth {
		monthly[k] = true
	}
	for k := range got {
		monthly[k] = true
	}
	for k := range monthly {
		if !isMonth(k) {
			continue
		}
		rep.TruthUnits += truth[k]
		if d := got[k] - truth[k]; d > 0 {
			rep.Over += d
		} else {
			rep.Under -= d
		}
	}
	fmt.Fprintf(out, "    %s, %s: %d consumer kills (+%d restarts of a stuck consumer), %d redis-server kills; windows differing %d of %d; under %d, over %d of %d units\n",
		cfg.Persistence, time.Since(started).Round(time.Second), rep.ConsumerKills, rep.StallRestarts, rep.RedisKills, rep.WindowsDiffering, rep.WindowsChecked, rep.Under, rep.Over, rep.TruthUnits)
	return rep, nil
}

// isMonth reports whether a TruthKey (TENANT/METRIC/GRANULARITY/START)
// is of a month window.
func isMonth(truthKey string) bool {
	parts := strings.Split(truthKey, "/")
	return len(parts) >= 4 && parts[len(parts)-2] == string(windows.Month)
}

// unsavedWrites reads rdb_changes_since_last_save from INFO persistence.
func unsavedWrites(ctx context.Context, addr string) (int64, error) {
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	info, err := rdb.Info(ctx, "persistence").Result()
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "rdb_changes_since_last_save:"); ok {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, errors.New("no rdb_changes_since_last_save in INFO persistence")
}

// Lag returns how many records of topic lie between group's committed
// offsets and the partitions' ends.
func Lag(ctx context.Context, broker, group, topic string, partitions int) (int64, error) {
	cl := &kafka.Client{Addr: kafka.TCP(broker), Timeout: 5 * time.Second}
	parts := make([]int, partitions)
	reqs := make([]kafka.OffsetRequest, partitions)
	for p := range parts {
		parts[p] = p
		reqs[p] = kafka.LastOffsetOf(p)
	}
	ends, err := cl.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return 0, fmt.Errorf("listing the ends of %s: %w", topic, err)
	}
	committed, err := cl.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: parts}})
	if err != nil {
		return 0, fmt.Errorf("fetching %s's offsets: %w", group, err)
	}
	at := map[int]int64{}
	for _, p := range committed.Topics[topic] {
		if p.Error != nil {
			return 0, fmt.Errorf("fetching %s's offset of partition %d: %w", group, p.Partition, p.Error)
		}
		at[p.Partition] = max(p.CommittedOffset, 0)
	}
	var lag int64
	for _, p := range ends.Topics[topic] {
		if p.Error != nil {
			return 0, fmt.Errorf("the end of partition %d: %w", p.Partition, p.Error)
		}
		lag += p.LastOffset - at[p.Partition]
	}
	return lag, nil
}

// waitDrained waits up to d until group's committed offsets reach the
// ends of usage.events. A consumer whose group stays stuck (no offset
// moves for stuckAfter while records wait, as kafka-go's group member
// can after its predecessor was SIGKILLed mid-rebalance) is restarted, as
// on-call would; restarts counts those restarts.
func waitDrained(ctx context.Context, broker, group string, consumer *proc, d time.Duration) (restarts int, err error) {
	const stuckAfter = 15 * time.Second
	deadline := time.Now().Add(d)
	moved := time.Now()
	last := int64(-1)
	for {
		lag, err := Lag(ctx, broker, group, topics.UsageEvents, Partitions)
		if err == nil && lag == 0 {
			return restarts, nil
		}
		if err == nil && (last < 0 || lag < last) {
			last, moved = lag, time.Now()
		}
		if ctx.Err() != nil {
			return restarts, ctx.Err()
		}
		if time.Now().After(deadline) {
			return restarts, fmt.Errorf("the baseline is %d records behind after %s (%v)", lag, d, err)
		}
		if time.Since(moved) > stuckAfter {
			consumer.kill()
			if err := consumer.start(); err != nil {
				return restarts, err
			}
			restarts++
			moved = time.Now()
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// proc is the consumer process, killed and started again.
type proc struct {
	bin string
	env []string
	log io.Writer
	mu  sync.Mutex
	cmd *exec.Cmd
}

func (p *proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	cmd := exec.Command(p.bin)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = p.log, p.log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting the baseline consumer: %w", err)
	}
	p.cmd = cmd
	return nil
}

func (p *proc) kill() { p.signal(syscall.SIGKILL) }

func (p *proc) stop() { p.signal(syscall.SIGTERM) }

func (p *proc) signal(sig syscall.Signal) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		_ = p.cmd.Process.Signal(sig)
		_ = p.cmd.Wait()
		p.cmd = nil
	}
}
