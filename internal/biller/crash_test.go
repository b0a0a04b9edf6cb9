package biller_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/testkit/kafkatest"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/testkit/stripefake"
	"github.com/usagemeter/metering/internal/windows"
)

// TestKillBetweenIntentAndOutcome runs the biller as a process and kills
// it with SIGKILL again and again while it pushes (each push held open by
// the Stripe test server after it recorded the event), with usage growing
// between kills. In the end Stripe's total equals Postgres's for every
// tenant and metric: nothing counted twice, nothing lost.
func TestKillBetweenIntentAndOutcome(t *testing.T) {
	db := pgtest.New(t)
	kc := kafkatest.Start(t)
	fake := stripefake.New(stripefake.Config{Latency: 30 * time.Millisecond})
	srv := httptest.NewServer(fake)
	defer func() { fake.Close(); srv.Close() }()
	metrics := []string{"api_calls", "tokens", "bytes"}
	for _, m := range metrics {
		fake.EnsureMeter(m)
	}
	const tenants = 20
	db.Exec(t, `INSERT INTO plans (name) VALUES ('pro')`)
	for _, m := range metrics {
		db.Exec(t, `INSERT INTO plan_quotas (plan, metric, period, stripe_event_name) VALUES ('pro', $1, 'month', $1)`, m)
	}
	db.Exec(t, `INSERT INTO tenants (tenant, plan, stripe_customer_id) SELECT 't' || g, 'pro', 'cus_t' || g FROM generate_series(1, $1) g`, tenants)
	month := windows.Month.Start(time.Now())
	grow := func(rng *rand.Rand) {
		for i := 1; i <= tenants; i++ {
			for _, m := range metrics {
				db.Exec(t, `INSERT INTO usage_windows (tenant, meter, granularity, window_start, value, events) VALUES ($1, $2, 'month', $3, $4, 1)
					ON CONFLICT (tenant, meter, group_key, granularity, window_start) DO UPDATE SET value = usage_windows.value + EXCLUDED.value`,
					fmt.Sprint("t", i), m, month, 1+rng.IntN(100))
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
			"STRIPE_API_KEY=sk_test_crash", "STRIPE_API_BASE="+srv.URL, "SYNC_INTERVAL=50ms", "STRIPE_RATE_LIMIT=1000", "LOG_LEVEL=warn")
		cmd.Stdout, cmd.Stderr = logs, logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	rng := rand.New(rand.NewPCG(9, 9))
	kills := 0
	for kills < 12 {
		grow(rng)
		proc := start()
		time.Sleep(time.Duration(150+rng.IntN(400)) * time.Millisecond)
		_ = proc.Process.Signal(syscall.SIGKILL)
		_ = proc.Wait()
		kills++
	}
	var intentsAtKill int
	_ = db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM billing_pushes WHERE status = 'intent'`).Scan(&intentsAtKill)

	// A last run, allowed to finish: open intents first, then the rest.
	proc := start()
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
	_ = proc.Process.Signal(syscall.SIGTERM)
	_ = proc.Wait()

	end := windows.Month.End(month)
	for i := 1; i <= tenants; i++ {
		for _, m := range metrics {
			var metered int64
			_ = db.Pool.QueryRow(context.Background(), `SELECT value::bigint FROM usage_windows WHERE tenant = $1 AND meter = $2 AND granularity = 'month'`,
				fmt.Sprint("t", i), m).Scan(&metered)
			if got := fake.Total(m, fmt.Sprint("cus_t", i), month, end); got != metered {
				t.Errorf("t%d/%s: Stripe %d, Postgres %d", i, m, got, metered)
			}
		}
	}
	ids := map[string]bool{}
	for _, e := range fake.Events() {
		if ids[e.EventName+e.Identifier] {
			t.Fatalf("identifier %s accepted twice", e.Identifier)
		}
		ids[e.EventName+e.Identifier] = true
	}
	t.Logf("%d kills, %d intents open at the last kill, %d meter events in Stripe, %d calls", kills, intentsAtKill, len(ids), fake.Calls()["POST /v1/billing/meter_events"])
}
