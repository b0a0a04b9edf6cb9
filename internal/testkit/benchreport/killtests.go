package benchreport

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/usagemeter/metering/internal/testkit/chaos"
	"github.com/usagemeter/metering/internal/testkit/redisbaseline"
)

// KillTests is the pipeline's kill test (the chaos run) beside the same
// shape of test against the Redis baseline, in one run.
type KillTests struct {
	Events, Kills int
	Seed          uint64
	// Ours is the chaos run's report; OursErr the invariant that did not
	// hold, or what stopped the run, when one did.
	Ours    chaos.Report
	OursErr string
	// Redis are the baseline's kill tests: consumer kills only with
	// Debian's default persistence, then with one redis-server kill, then
	// the same with the append-only file.
	Redis []RedisKill
}

// RedisKill is one kill test of the baseline.
type RedisKill struct {
	Name   string
	Report redisbaseline.KillReport
}

// RunKillTests runs the chaos run with events unique events (30 %
// resends, kills SIGKILLs at least, one broker and one Postgres restart,
// 10 % Stripe faults), then the baseline's three kill tests side by side
// with the same events, resends and kills. work holds their binaries,
// data and logs.
func RunKillTests(ctx context.Context, root, work string, events, kills int, seed uint64, out io.Writer) (KillTests, error) {
	kt := KillTests{Events: events, Kills: kills, Seed: seed}
	chaosWork := filepath.Join(work, "chaos")
	if err := os.MkdirAll(chaosWork, 0o755); err != nil {
		return kt, err
	}
	fmt.Fprintf(out, "running the pipeline's kill test (chaos: %d events, %d kills)...\n", events, kills)
	var err error
	kt.Ours, err = chaos.Run(ctx, chaos.Config{Root: root, Work: chaosWork, Events: events, DupShare: 0.3, FaultRate: 0.1,
		MinKills: kills, Tenants: 50, Seed: seed}, out)
	fmt.Fprintf(out, "\n  the pipeline's kill test took %s; windows differing from the truth: %d of %d\n", kt.Ours.Elapsed.Round(time.Second), kt.Ours.WindowDiff, kt.Ours.WindowsChecked)
	if err != nil {
		if ctx.Err() != nil {
			return kt, ctx.Err()
		}
		kt.OursErr = err.Error()
		fmt.Fprintln(out, "  the pipeline's kill test FAILED:", err)
	}

	fmt.Fprintln(out, "running the Redis baseline's kill tests...")
	variants := []struct {
		name      string
		killRedis bool
		p         redisbaseline.Persistence
	}{
		{"consumer SIGKILLs; Debian's default persistence (RDB snapshots)", false, redisbaseline.Snapshots},
		{"consumer SIGKILLs + one redis-server SIGKILL; Debian's default persistence (RDB snapshots)", true, redisbaseline.Snapshots},
		{"consumer SIGKILLs + one redis-server SIGKILL; append-only file, fsync every second", true, redisbaseline.AppendOnly},
	}
	kt.Redis = make([]RedisKill, len(variants))
	errs := make([]error, len(variants))
	var wg sync.WaitGroup
	for i, v := range variants {
		wg.Go(func() {
			rep, err := redisbaseline.RunKillTest(ctx, redisbaseline.KillConfig{Root: root, Work: filepath.Join(work, fmt.Sprint("redis-kill-", i)),
				Events: events, DupShare: 0.3, Tenants: 50, ConsumerKills: kills, KillRedis: v.killRedis, Persistence: v.p, Seed: seed}, out)
			kt.Redis[i], errs[i] = RedisKill{Name: v.name, Report: rep}, err
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return kt, fmt.Errorf("the baseline's kill test (%s): %w", variants[i].name, err)
		}
	}
	return kt, nil
}

func (kt KillTests) write(p func(string, ...any), oursPerSec, redisPerSec, redisBytes float64) {
	p("## The baseline users would pick: Redis counters\n")
	p("What a team would write instead of the aggregator: a kafka-go consumer group reading usage.events, a Lua script per event (`SET seen:TENANT:ID 1 NX EX <35 days>`; when the id is new, `INCRBY` on its minute, hour, day and month counters), one pipeline per batch, the offsets committed once the pipeline returned (internal/testkit/redisbaseline, tools/redisbaseline). Redis 7 from Debian, run privately.\n")
	p("| | events/s (same backlog, 4 partitions, the in-process broker) | aggregator ÷ baseline |")
	p("|---|---|---|")
	p("| aggregator: kfake → consumer group → Apply → Postgres | %s | 1.00 |", n0(oursPerSec))
	p("| baseline: kfake → consumer group → Lua script per event → Redis | %s | %s |", n0(redisPerSec), ratio(oursPerSec, redisPerSec))
	p("")
	p("Redis held %.0f bytes per event after that backlog (used_memory: the dedup keys with their TTL, and the counters), all of it in RAM.\n", redisBytes)
	p("The kill tests, %s unique events each with 30 %% resends and at least %d SIGKILLs (seed %d). The pipeline's is the chaos run (HTTP ingest → broker → aggregator → Postgres → biller; ingest, aggregator and biller SIGKILLed at random, the broker SIGKILLed and restarted on its data once, Postgres restarted once, 10 %% Stripe faults). The baseline's writes the same shape of events to the broker and SIGKILLs the consumer process, and in two of the three runs redis-server once, half way through the load once the consumer has caught up (the consumer kills pause until its offsets reach the log ends, up to 30 s: a Redis crash in steady state), starting it again on its data directory. Under- and over-count are in usage units summed over the month windows against the ground truth each test keeps.\n",
		n0(float64(kt.Events)), kt.Kills, kt.Seed)
	p("| design | kills | windows differing from the truth | under-count | over-count |")
	p("|---|---|---|---|---|")
	kills := 0
	for _, n := range kt.Ours.Kills {
		kills += n
	}
	if kt.OursErr == "" {
		p("| pipeline (aggregator, Postgres) | %d SIGKILLs of services, %d broker and %d Postgres restarts | %d of %s | 0 | 0 |", kills, kt.Ours.BrokerRestarts, kt.Ours.PostgresRestarts,
			kt.Ours.WindowDiff, n0(float64(kt.Ours.WindowsChecked)))
	} else {
		p("| pipeline (aggregator, Postgres) | %d SIGKILLs of services, %d broker and %d Postgres restarts | %d of %s | **failed: %s** | |", kills, kt.Ours.BrokerRestarts, kt.Ours.PostgresRestarts,
			kt.Ours.WindowDiff, n0(float64(kt.Ours.WindowsChecked)), kt.OursErr)
	}
	for _, r := range kt.Redis {
		k := fmt.Sprintf("%d consumer SIGKILLs", r.Report.ConsumerKills)
		if r.Report.StallRestarts > 0 {
			k += fmt.Sprintf(" (+%d restarts of a stuck consumer)", r.Report.StallRestarts)
		}
		if r.Report.RedisKills > 0 {
			k += fmt.Sprintf(", %d redis-server SIGKILL with %s records committed in Kafka", r.Report.RedisKills, n0(float64(r.Report.CommittedAtRedisKill)))
			if r.Report.Persistence == redisbaseline.Snapshots {
				snap := "no RDB snapshot taken yet"
				if r.Report.Snapshotted {
					snap = "since the last RDB snapshot"
				}
				k += fmt.Sprintf(" and %s writes not persisted (%s)", n0(float64(r.Report.UnsavedWrites)), snap)
			}
		}
		p("| Redis baseline: %s | %s | %d of %s | %s (%s) | %s (%s) |", r.Name, k, r.Report.WindowsDiffering, n0(float64(r.Report.WindowsChecked)),
			n0(float64(r.Report.Under)), share(r.Report.Under, r.Report.TruthUnits), n0(float64(r.Report.Over)), share(r.Report.Over, r.Report.TruthUnits))
	}
	p("")
	p("Why: the script makes an event's dedup key and its counters one atomic step, and the offsets are committed only after the pipeline returned, so a consumer killed at any point reads its batch again and the ids already counted are skipped. What Redis can lose is its own memory: killed, it restarts from what it persisted. With Debian's default that is the last RDB snapshot (taken after 60 s with 10,000 changes, 300 s with 100, 3600 s with 1), so every event counted since then whose offset Kafka already holds is gone for good; the dedup keys vanish with the counters, so what comes back is short, never double. The append-only file with fsync every second survives a process kill (its writes are already in the kernel) but not a machine crash or power loss, which may drop the last second of counts. In this run:\n")
	for _, r := range kt.Redis {
		verdict := "lost nothing"
		if r.Report.Under != 0 || r.Report.Over != 0 || r.Report.WindowsDiffering != 0 {
			verdict = fmt.Sprintf("under-counted %s units and over-counted %s", n0(float64(r.Report.Under)), n0(float64(r.Report.Over)))
		}
		p("- %s: %s.", r.Name, verdict)
	}
	p("\nBeyond these counts, neither mode keeps a ledger, per-event lineage or dead letters (an invalid record is skipped, silently), and its counters are sums per window only: no meters, groups, unique counts or quotas.\n")
}

// share is part as a percentage of whole.
func share(part, whole int64) string {
	if whole == 0 {
		return "-"
	}
	bp := part * 10000 / whole // basis points, rounded down
	return fmt.Sprintf("%d.%02d %%", bp/100, bp%100)
}
