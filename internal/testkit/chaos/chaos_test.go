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

// TestChaosReduced is `make chaos ARGS=-replicas` at a size CI affords,
// asserting the invariants of both `make chaos` runs in one: 20,000 events
// (30 % resends) from 20 tenants in requests of 100 spread over 2 ingest,
// to 3 aggregators and 2 billers on one database; every process SIGKILLed
// at least once (21 kills at least, 3 at least of each service), one
// broker and one Postgres restart, 10 % Stripe faults, and 4 records of
// each hostile class written straight to usage.events. Every window
// equals the ground truth, Stripe equals Postgres, every hostile record
// is a dead letter or counted, no partition stalls and Stripe's running
// total is never above the metered total.
func TestChaosReduced(t *testing.T) {
	work := stacktest.TempWork(t, "chaos-")
	root, _ := filepath.Abs(filepath.Join("..", "..", ".."))
	var out strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	rep, err := chaos.Run(ctx, chaos.Config{
		Root: root, Work: work, Events: 20000, DupShare: 0.3, FaultRate: 0.1, MinKills: 21, Tenants: 20, Seed: 42,
		Replicas: true, HostilePerClass: 4, Batch: 100,
	}, &out)
	t.Log("\n" + rep.String())
	if err != nil {
		t.Fatalf("%v\n%s\n(service logs: %s)", err, out.String(), filepath.Join(work, "services.log"))
	}
	kills := 0
	perService := map[string]int{}
	for name, n := range rep.Kills {
		kills += n
		perService[strings.Split(name, "-")[0]] += n
	}
	if kills < 21 {
		t.Errorf("%d kills, want 21 at least: %v", kills, rep.Kills)
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
	if rep.Unique != 20000 {
		t.Errorf("%d unique events sent, want 20000", rep.Unique)
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
