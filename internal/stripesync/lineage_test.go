package stripesync_test

import (
	"context"
	"fmt"
	"math/big"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/storage/billingdata"
	"github.com/usagemeter/metering/internal/testkit/stripefake"
	"github.com/usagemeter/metering/internal/topics"
	"github.com/usagemeter/metering/internal/windows"
)

// TestLineageIsExactUnderConcurrentBatches runs the aggregator (four
// partitions, concurrent batches committing in any order) and the biller
// at once, then checks every push's lineage: the events it carried sum to
// its cumulative total minus the previous push's, every counted event is
// carried by exactly one push, and each event's own lineage names that
// push.
func TestLineageIsExactUnderConcurrentBatches(t *testing.T) {
	f := newFixture(t, 2, stripefake.Config{})
	ctx := context.Background()
	agg := rollup.New(f.db.Pool, rollup.Config{Group: "lineage", Topic: topics.UsageEvents})
	monthStart := windows.Month.Start(f.now)
	span := max(f.now.Sub(monthStart), time.Second)

	const partitions, batches, perBatch = 4, 15, 100
	var wg sync.WaitGroup
	errs := make(chan error, partitions+1)
	done := make(chan struct{})
	for p := range partitions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(p), 7))
			next := int64(-1)
			for b := range batches {
				recs := make([]rollup.Record, perBatch)
				for i := range recs {
					ev := events.Event{ID: fmt.Sprintf("p%d-b%d-e%d", p, b, i), Tenant: fmt.Sprint("t", 1+rng.IntN(2)), Metric: []string{"api_calls", "tokens"}[rng.IntN(2)],
						Value: 1 + rng.Int64N(1000), Time: monthStart.Add(time.Duration(rng.Int64N(int64(span))))}
					recs[i] = rollup.Record{Partition: p, Offset: max(next, 0) + int64(i), Key: []byte(ev.Tenant), Value: ev.AppendJSON(nil), Time: time.Now()}
				}
				res, err := agg.Apply(ctx, p, next, recs)
				if err != nil {
					errs <- err
					return
				}
				next = res.NextOffset
			}
		}()
	}
	// Made once: a channel made at each turn would lose the race with the
	// select that reads it (its goroutine runs after the select).
	applied := doneApplying(&wg)
	go func() {
		defer close(done)
		for {
			time.Sleep(5 * time.Millisecond)
			if _, err := f.biller.Sync(ctx); err != nil {
				errs <- err
				return
			}
			select {
			case <-applied:
				if _, err := f.biller.Sync(ctx); err != nil { // what the last batches counted
					errs <- err
				}
				return
			default:
			}
		}
	}()
	<-done
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	// Every push of the month, by pair, in cumulative order.
	rows, err := f.db.Pool.Query(ctx, `SELECT identifier, tenant, metric FROM billing_pushes WHERE status <> 'cancelled' ORDER BY tenant, metric, cumulative_total`)
	if err != nil {
		t.Fatal(err)
	}
	type pushRef struct{ id, tenant, metric string }
	var pushes []pushRef
	for rows.Next() {
		var p pushRef
		if err := rows.Scan(&p.id, &p.tenant, &p.metric); err != nil {
			t.Fatal(err)
		}
		pushes = append(pushes, p)
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	if len(pushes) < 8 {
		t.Fatalf("%d pushes: the biller did not run alongside the aggregator enough to test anything", len(pushes))
	}
	carrier := map[string]string{} // event id -> push identifier
	for _, p := range pushes {
		lp, err := billingdata.PushLineage(ctx, f.db.Pool, p.id)
		if err != nil {
			t.Fatal(err)
		}
		if !lp.Complete || lp.Snapshot == "" {
			t.Fatalf("push %s: lineage incomplete (%+v)", p.id, lp)
		}
		sum := new(big.Int)
		err = billingdata.EachPushItem(ctx, f.db.Pool, lp, func(it billingdata.LineageItem) error {
			if prev, ok := carrier[it.ID]; ok {
				return fmt.Errorf("event %s carried by push %s and by push %s", it.ID, prev, p.id)
			}
			carrier[it.ID] = p.id
			sum.Add(sum, big.NewInt(it.Value))
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		cum, _ := new(big.Int).SetString(lp.Cumulative, 10)
		prev, _ := new(big.Int).SetString(lp.PrevCumulative, 10)
		if want := new(big.Int).Sub(cum, prev); sum.Cmp(want) != 0 {
			t.Errorf("push %s (%s/%s): its events sum to %s, want %s (cumulative %s, previous %s)", p.id, p.tenant, p.metric, sum, want, cum, prev)
		}
	}
	var counted int
	if err := f.db.Pool.QueryRow(ctx, `SELECT count(*) FROM ledger`).Scan(&counted); err != nil {
		t.Fatal(err)
	}
	if counted != partitions*batches*perBatch || len(carrier) != counted {
		t.Fatalf("%d events counted, %d carried by a push: want all %d, each once", counted, len(carrier), partitions*batches*perBatch)
	}
	// The reverse, for a sample.
	for _, id := range []string{"p0-b0-e0", "p3-b14-e99", "p2-b7-e50"} {
		var tenant string
		if err := f.db.Pool.QueryRow(ctx, `SELECT tenant FROM ledger_events WHERE event_id = $1`, id).Scan(&tenant); err != nil {
			t.Fatal(err)
		}
		el, err := billingdata.EventLineageOf(ctx, f.db.Pool, tenant, id)
		if err != nil {
			t.Fatal(err)
		}
		if !el.Traced || el.Push == nil || el.Push.Identifier != carrier[id] {
			t.Errorf("event %s: lineage %+v, want push %s", id, el, carrier[id])
		}
	}
}

// doneApplying returns a channel closed once wg is done.
func doneApplying(wg *sync.WaitGroup) <-chan struct{} {
	c := make(chan struct{})
	go func() { wg.Wait(); close(c) }()
	return c
}
