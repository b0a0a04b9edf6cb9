package chaos_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/chaos"
	"github.com/usagemeter/metering/internal/stack"
)

// TestChaosReduced is `make chaos` at a size CI affords: 20,000 events,
// 30 % resends, 10 % Stripe faults, at least 20 SIGKILLs, one broker and
// one Postgres restart. The invariants are the full run's.
func TestChaosReduced(t *testing.T) {
	work := stack.TempWork(t, "chaos-")
	root, _ := filepath.Abs(filepath.Join("..", ".."))
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
