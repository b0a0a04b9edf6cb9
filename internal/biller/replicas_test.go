package biller_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/testkit/kafkatest"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/testkit/stripefake"
	"github.com/usagemeter/metering/internal/windows"
)

// TestTwoBillerProcessesWithKills runs two biller processes against one
// database and one Stripe test server, kills one or the other with
// SIGKILL again and again (each push held open by the server after it
// recorded the event) while usage grows, and restarts it. After every meter
// event Stripe accepts, the server's running total for the customer, meter
// and month is compared with the metered total of that instant: it never
// exceeds it, and in the end they are equal.
func TestTwoBillerProcessesWithKills(t *testing.T) {
	db := pgtest.New(t)
	kc := kafkatest.Start(t)
	var mu sync.RWMutex // held for writing while usage and metered change together
	metered := map[string]int64{}
	var checked, over int
	var first string
	fake := stripefake.New(stripefake.Config{Latency: 20 * time.Millisecond, OnTotal: func(r stripefake.RunningTotal) {
		mu.RLock()
		defer mu.RUnlock()
		checked++ // the server calls OnTotal under its own lock: one at a time
		if want := metered[r.Customer+"/"+r.EventName]; r.Total > want {
			over++
			if first == "" {
				first = fmt.Sprintf("%s/%s reached %d while %d was metered", r.Customer, r.EventName, r.Total, want)
			}
		}
	}})
	srv := httptest.NewServer(fake)
	defer func() { fake.Close(); srv.Close() }()
	metrics := []string{"api_calls", "tokens"}
	for _, m := range metrics {
		fake.EnsureMeter(m)
	}
	const tenants = 10
	db.Exec(t, `INSERT INTO plans (name) VALUES ('pro')`)
	for _, m := range metrics {
		db.Exec(t, `INSERT INTO plan_quotas (plan, metric, period, stripe_event_name) VALUES ('pro', $1, 'month', $1)`, m)
	}
	db.Exec(t, `INSERT INTO tenants (tenant, plan, stripe_customer_id) SELECT 't' || g, 'pro', 'cus_t' || g FROM generate_series(1, $1) g`, tenants)
	month := windows.Month.Start(time.Now())
	grow := func(rng *rand.Rand) {
		mu.Lock()
		defer mu.Unlock()
		for i := 1; i <= tenants; i++ {
			for _, m := range metrics {
				v := 1 + rng.IntN(100)
				db.Exec(t, `INSERT INTO usage_windows (tenant, meter, granularity, window_start, value, events) VALUES ($1, $2, 'month', $3, $4, 1)
					ON CONFLICT (tenant, meter, group_key, granularity, window_start) DO UPDATE SET value = usage_windows.value + EXCLUDED.value`,
					fmt.Sprint("t", i), m, month, v)
				metered[fmt.Sprintf("cus_t%d/%s", i, m)] += int64(v)
			}
		}
	}

	bin := filepath.Join(t.TempDir(), "biller")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/usagemeter/metering/cmd/biller").CombinedOutput(); err != nil {
		t.Fatalf("building the biller: %v\n%s", err, out)
	}
	logs, _ := os.Create(filepath.Join(t.TempDir(), "biller.log"))
	defer logs.Close()
	start := func() *exec.Cmd {
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(), "DATABASE_URL="+db.URL, "KAFKA_BROKERS="+kc.Addr(), "HTTP_ADDR=127.0.0.1:0",
			"STRIPE_API_KEY=sk_test_replicas", "STRIPE_API_BASE="+srv.URL, "SYNC_INTERVAL=50ms", "STRIPE_RATE_LIMIT=1000", "LOG_LEVEL=warn")
		cmd.Stdout, cmd.Stderr = logs, logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	procs := []*exec.Cmd{start(), start()}
	defer func() {
		for _, p := range procs {
			_ = p.Process.Signal(syscall.SIGKILL)
			_ = p.Wait()
		}
	}()
	rng := rand.New(rand.NewPCG(11, 11))
	kills := 0
	for kills < 12 {
		grow(rng)
		time.Sleep(time.Duration(100+rng.IntN(300)) * time.Millisecond)
		i := rng.IntN(2)
		_ = procs[i].Process.Signal(syscall.SIGKILL)
		_ = procs[i].Wait()
		kills++
		procs[i] = start()
	}

	deadline := time.Now().Add(60 * time.Second)
	for {
		var open, behind int
		_ = db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM billing_pushes WHERE status IN ('intent', 'dead')`).Scan(&open)
		_ = db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM usage_windows w WHERE granularity = 'month' AND value >
			coalesce((SELECT sum(delta) FROM billing_pushes p WHERE p.tenant = w.tenant AND p.metric = w.meter AND p.status = 'sent'), 0)`).Scan(&behind)
		if open == 0 && behind == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still %d open pushes and %d months behind after 60s", open, behind)
		}
		time.Sleep(50 * time.Millisecond)
	}
	mu.RLock()
	defer mu.RUnlock()
	if over > 0 {
		t.Fatalf("%d of %d running totals above the metered total; first: %s", over, checked, first)
	}
	end := windows.Month.End(month)
	for key, want := range metered {
		var i int
		var m string
		_, _ = fmt.Sscanf(key, "cus_t%d/%s", &i, &m)
		if got := fake.Total(m, fmt.Sprint("cus_t", i), month, end); got != want {
			t.Errorf("%s: Stripe %d, metered %d", key, got, want)
		}
	}
	t.Logf("%d kills; %d running totals checked, none above the metered total; %d meter events from %d calls",
		kills, checked, len(fake.Events()), fake.Calls()["POST /v1/billing/meter_events"])
}
