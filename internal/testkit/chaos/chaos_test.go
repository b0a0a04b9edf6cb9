package chaos_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/testkit/chaos"
	"github.com/usagemeter/metering/internal/testkit/stack"
	"github.com/usagemeter/metering/internal/testkit/stack/stacktest"
)

// TestChaosReduced is `make chaos` at a size CI affords: 20,000 events,
// 30 % resends, 10 % Stripe faults, at least 20 SIGKILLs, one broker and
// one Postgres restart. The invariants are the full run's.
func TestChaosReduced(t *testing.T) {
	work := stacktest.TempWork(t, "chaos-")
	root, _ := filepath.Abs(filepath.Join("..", "..", ".."))
	var out strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	rep, err := chaos.Run(ctx, chaos.Config{
		Root: root, Work: work, Events: 20000, DupShare: 0.3, FaultRate: 0.1, MinKills: 20, Tenants: 20, Seed: 42,
	}, &out)
	t.Log("\n" + rep.String())
	if err != nil {
		t.Fatalf("%v\n%s\n(service logs: %s)", err, out.String(), filepath.Join(work, "services.log"))
	}
	kills := 0
	for _, n := range rep.Kills {
		kills += n
	}
	if kills < 20 || rep.BrokerRestarts != 1 || rep.PostgresRestarts != 1 || rep.WindowDiff != 0 || rep.StripeDiff != 0 {
		t.Fatalf("report %+v", rep)
	}
}

// TestChaosReplicasReduced is `make chaos ARGS=-replicas` at a size CI
// affords: 10,000 events in requests of 100 spread over 2 ingest, to 3
// aggregators and 2 billers on one database, every process SIGKILLed at least once (21 kills at
// least), one broker and one Postgres restart, 10 % Stripe faults, and 4
// records of each hostile class written straight to usage.events.
func TestChaosReplicasReduced(t *testing.T) {
	work := stacktest.TempWork(t, "chaos-replicas-")
	root, _ := filepath.Abs(filepath.Join("..", "..", ".."))
	var out strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	rep, err := chaos.Run(ctx, chaos.Config{
		Root: root, Work: work, Events: 10000, DupShare: 0.3, FaultRate: 0.1, MinKills: 21, Tenants: 10, Seed: 7,
		Replicas: true, HostilePerClass: 4, Batch: 100,
	}, &out)
	t.Log("\n" + rep.String())
	if err != nil {
		t.Fatalf("%v\n%s\n(service logs: %s)", err, out.String(), filepath.Join(work, "services.log"))
	}
	perService := map[string]int{}
	for name, n := range rep.Kills {
		perService[strings.Split(name, "-")[0]] += n
	}
	for _, name := range []string{"ingest", "ingest-2", "aggregator", "aggregator-2", "aggregator-3", "biller", "biller-2"} {
		if rep.Kills[name] == 0 {
			t.Errorf("%s was never killed: %v", name, rep.Kills)
		}
	}
	for _, s := range stack.Services {
		if perService[s] < 3 {
			t.Errorf("%d kills of %s, want 3 at least: %v", perService[s], s, rep.Kills)
		}
	}
	hostile := 0
	for _, c := range chaos.HostileClasses {
		if rep.HostileSent[c] != 4 {
			t.Errorf("%d %s records sent, want 4", rep.HostileSent[c], c)
		}
		hostile += rep.HostileSent[c]
	}
	if rep.HostileDeadLettered+rep.HostileCounted != hostile || rep.HostileMissing != 0 || rep.UnexpectedDeadLetters != 0 ||
		rep.PartitionsStalled != 0 || rep.MaxOverReport != 0 || rep.TotalsChecked == 0 ||
		rep.BrokerRestarts != 1 || rep.PostgresRestarts != 1 || rep.WindowDiff != 0 || rep.StripeDiff != 0 {
		t.Fatalf("report %+v", rep)
	}
}
