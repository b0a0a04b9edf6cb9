package aggregator_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/testkit/metertruth"
	"github.com/usagemeter/metering/internal/windows"
)

// truth is the ground truth the windows must equal: unique events only.
type truth struct {
	mu      sync.Mutex
	seen    map[string]bool
	sums    map[string]int64 // tenant/metric/granularity/start → value
	sent    []events.Event
	counted []events.Event // the first occurrence of each id
}

func newTruth() *truth { return &truth{seen: map[string]bool{}, sums: map[string]int64{}} }

func windowKey(tenant, metric string, g windows.Granularity, start time.Time) string {
	return fmt.Sprintf("%s/%s/%s/%s", tenant, metric, g, start.UTC().Format(time.RFC3339))
}

func (tr *truth) add(e events.Event) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.sent = append(tr.sent, e)
	if tr.seen[e.Tenant+"\x00"+e.ID] {
		return
	}
	tr.seen[e.Tenant+"\x00"+e.ID] = true
	tr.counted = append(tr.counted, e)
	for _, g := range windows.All {
		tr.sums[windowKey(e.Tenant, e.Metric, g, g.Start(e.Time))] += e.Value
	}
}

// feed emits n events from producer goroutines, about dupShare of them
// resends of events already sent (same id, same payload).
func (s *stack) feed(tr *truth, n int, dupShare float64, seed uint64) {
	s.t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed))
	base := time.Now().UTC().Add(-2 * time.Hour)
	const batch = 100
	for sent := 0; sent < n; sent += batch {
		var evs []events.Event
		for range batch {
			tr.mu.Lock()
			canResend := len(tr.sent) > 0
			var e events.Event
			if canResend && rng.Float64() < dupShare {
				e = tr.sent[rng.IntN(len(tr.sent))]
			}
			tr.mu.Unlock()
			if e.ID == "" {
				e = events.Event{ID: events.NewID(), Tenant: fmt.Sprint("tenant-", rng.IntN(20)), Metric: []string{"api_calls", "tokens"}[rng.IntN(2)],
					Value: rng.Int64N(1000), Time: base.Add(time.Duration(rng.IntN(7200)) * time.Second),
					Properties: map[string]string{"model": fmt.Sprint("m", rng.IntN(5)), "user": fmt.Sprint("u", rng.IntN(50))}}
				if rng.IntN(4) == 0 {
					delete(e.Properties, "model") // a group of its own (null)
				}
			}
			evs = append(evs, e)
		}
		if err := s.producer.Emit(context.Background(), evs...); err != nil {
			s.t.Fatalf("emit: %v", err)
		}
		for _, e := range evs {
			tr.add(e)
		}
	}
}

func (s *stack) checkTruth(tr *truth) {
	s.t.Helper()
	rows, err := s.db.Pool.Query(context.Background(), `SELECT tenant, meter, granularity, window_start, value::bigint FROM usage_windows
		WHERE meter IN ('api_calls', 'tokens')`)
	if err != nil {
		s.t.Fatal(err)
	}
	defer rows.Close()
	got := map[string]int64{}
	for rows.Next() {
		var tenant, metric, g string
		var start time.Time
		var v int64
		if err := rows.Scan(&tenant, &metric, &g, &start, &v); err != nil {
			s.t.Fatal(err)
		}
		got[windowKey(tenant, metric, windows.Granularity(g), start)] = v
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	diff := 0
	for k, want := range tr.sums {
		if got[k] != want {
			diff++
			if diff <= 10 {
				s.t.Errorf("window %s = %d, want %d", k, got[k], want)
			}
		}
	}
	for k := range got {
		if _, ok := tr.sums[k]; !ok {
			diff++
			s.t.Errorf("unexpected window %s = %d", k, got[k])
		}
	}
	if diff > 0 {
		s.t.Fatalf("%d of %d windows differ from the ground truth", diff, len(tr.sums))
	}
	if ms, err := accounts.ListMeters(context.Background(), s.db.Pool); err != nil || len(ms) > 0 {
		// defineMeters was called: the defined meters are exact too.
		metertruth.Diff(s.t, metertruth.Fold(crashMeters, tr.counted), metertruth.Read(s.t, s.db, crashMeters))
	}
}

// crashMeters are one defined meter of each aggregation, grouped and
// filtered, that newStack's database holds.
var crashMeters = []meter.Definition{
	{Name: "tokens_by_model", Metric: "tokens", Aggregation: meter.Sum, GroupBy: []string{"model"}},
	{Name: "calls_count", Metric: "api_calls", Aggregation: meter.Count, GroupBy: []string{"model"}, Filter: map[string]string{"model": "m1"}},
	{Name: "tokens_peak", Metric: "tokens", Aggregation: meter.Max, GroupBy: []string{"model"}},
	{Name: "calls_last", Metric: "api_calls", Aggregation: meter.Latest},
	{Name: "tokens_users", Metric: "tokens", Aggregation: meter.UniqueCount, GroupBy: []string{"model"}, Property: "user"},
}

// defineMeters stores crashMeters.
func (s *stack) defineMeters() {
	s.t.Helper()
	for _, d := range crashMeters {
		if _, _, err := accounts.PutMeter(context.Background(), s.db.Pool, accounts.Meter{
			Name: d.Name, Metric: d.Metric, Aggregation: string(d.Aggregation), GroupBy: d.GroupBy, Filter: d.Filter, Property: d.Property,
		}); err != nil {
			s.t.Fatal(err)
		}
	}
}

func buildAggregator(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "aggregator")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/usagemeter/metering/cmd/aggregator")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the aggregator: %v\n%s", err, out)
	}
	return bin
}

// TestCrashExactness runs the aggregator as a separate process, kills it
// with SIGKILL at random moments while events (30 % resends) keep coming,
// restarts it, and checks that every window equals the ground truth: the
// implicit meters' and those of a defined meter of each aggregation.
func TestCrashExactness(t *testing.T) {
	s := newStack(t)
	s.defineMeters()
	bin := buildAggregator(t)
	logs, err := os.Create(filepath.Join(t.TempDir(), "aggregator.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	startProc := func() *exec.Cmd {
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(), "DATABASE_URL="+s.db.URL, "KAFKA_BROKERS="+s.kc.Addr(), "HTTP_ADDR=127.0.0.1:0",
			"SESSION_TIMEOUT=1s", "BATCH_WAIT=10ms", "BATCH_SIZE=300", "LOG_LEVEL=warn")
		cmd.Stdout, cmd.Stderr = logs, logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}

	tr := newTruth()
	fed := make(chan struct{})
	go func() {
		defer close(fed)
		s.feed(tr, 30000, 0.30, 42)
	}()
	rng := rand.New(rand.NewPCG(7, 7))
	kills := 0
	proc := startProc()
	for kills < 12 {
		time.Sleep(time.Duration(200+rng.IntN(800)) * time.Millisecond)
		if err := proc.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = proc.Wait()
		kills++
		proc = startProc()
	}
	<-fed
	s.waitConsumed("metering-aggregator")
	if err := proc.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := proc.Wait(); err != nil {
		t.Errorf("aggregator exit after SIGTERM: %v", err)
	}
	s.checkTruth(tr)
	var dups, ledger int
	_ = s.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM ledger`).Scan(&ledger)
	tr.mu.Lock()
	dups = len(tr.sent) - len(tr.seen)
	tr.mu.Unlock()
	t.Logf("%d kills; %d events sent, %d resends, %d counted once each", kills, len(tr.sent), dups, ledger)
	if ledger != len(tr.seen) {
		t.Fatalf("ledger has %d ids, want %d", ledger, len(tr.seen))
	}
}

// TestRebalanceMidStream runs two aggregators in one group, adding and
// removing one while events flow: the partitions move, the totals stay exact.
func TestRebalanceMidStream(t *testing.T) {
	s := newStack(t)
	s.defineMeters()
	tr := newTruth()
	cfg := s.config("-batch-size", "200")
	var logA, logB syncBuffer
	stopA := s.startLogged(cfg, &logA)
	s.feed(tr, 3000, 0.3, 1)
	stopB := s.startLogged(cfg, &logB) // B joins: the partitions are split
	s.feed(tr, 3000, 0.3, 2)
	s.waitConsumed("metering-aggregator")
	stopA() // A leaves: B takes everything
	s.feed(tr, 3000, 0.3, 3)
	s.waitConsumed("metering-aggregator")
	stopB()
	s.checkTruth(tr)
	// A held all 4 partitions, then 2; B held 2, then all 4. A member may
	// see an extra generation of the same split (a slow batch under -race
	// can make the idle-partition watch ask for one), so only the first
	// and last of each are fixed.
	if got := generationSizes(t, logA.String()); len(got) < 2 || got[0] != 4 || got[len(got)-1] != 2 {
		t.Errorf("member A's generations held %v partitions, want 4 first and 2 last\n%s", got, logA.String())
	}
	if got := generationSizes(t, logB.String()); len(got) < 2 || got[0] != 2 || got[len(got)-1] != 4 {
		t.Errorf("member B's generations held %v partitions, want 2 first and 4 last\n%s", got, logB.String())
	}
}

// generationSizes returns how many partitions each generation a member
// joined gave it, from its log.
func generationSizes(t *testing.T, log string) []int {
	var sizes []int
	for _, line := range strings.Split(log, "\n") {
		var entry struct {
			Msg        string `json:"msg"`
			Partitions []int  `json:"partitions"`
		}
		if json.Unmarshal([]byte(line), &entry) == nil && entry.Msg == "joined generation" {
			sizes = append(sizes, len(entry.Partitions))
		}
	}
	return sizes
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
