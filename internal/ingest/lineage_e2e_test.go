package ingest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/big"
	"math/rand/v2"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/consumer"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/stripeapi"
	"github.com/usagemeter/metering/internal/stripesync"
	"github.com/usagemeter/metering/internal/testkit/kafkatest"
	"github.com/usagemeter/metering/internal/testkit/stripefake"
	"github.com/usagemeter/metering/internal/topics"
	"github.com/usagemeter/metering/internal/windows"
)

// TestDefinedMeterLineageIsExactEndToEnd produces events (a fifth of
// them sent twice) to usage.events over four partitions while the real
// consumer counts them and the biller syncs a grouped, filtered sum meter
// to Stripe at the same time; then, for every push of the meter, its
// lineage read through the API lists events that sum to its delta, none
// unreadable, and ends complete; every counted event the meter's filter
// takes is carried by exactly one push, of its tenant and group, at the
// partition and offset it was first written at; and each group's pushes
// add up to its events' total.
func TestDefinedMeterLineageIsExactEndToEnd(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	const tenants = 6
	models := []string{"o1", "o3", "mini"}
	fake := stripefake.New(stripefake.Config{})
	hs := httptest.NewServer(fake)
	t.Cleanup(func() { hs.Close(); fake.Close() })
	for _, m := range models {
		fake.EnsureMeter("tokens_" + m)
	}
	if _, _, err := accounts.PutMeter(ctx, e.db.Pool, accounts.Meter{Name: "tokens_by_model", Metric: "tokens", Aggregation: "sum",
		GroupBy: []string{"model"}, Filter: map[string]string{"region": "eu"}}); err != nil {
		t.Fatal(err)
	}
	e.db.Exec(t, `INSERT INTO plans (name) VALUES ('pro')`)
	e.db.Exec(t, `INSERT INTO plan_quotas (plan, metric, quota_limit, period, stripe_event_name, meter, group_filter, per_group)
		VALUES ('pro', 'tokens', NULL, 'month', 'tokens_{model}', 'tokens_by_model', '{}', false)`)
	e.db.Exec(t, `INSERT INTO tenants (tenant, plan, stripe_customer_id) SELECT 't' || g, 'pro', 'cus_t' || g FROM generate_series(1, $1) g`, tenants)
	biller := stripesync.New(e.db.Pool, stripeapi.NewClient("sk_test_123", hs.URL, 2*time.Second), stripesync.Config{
		RatePerSecond: 1000, BackoffMin: time.Millisecond, BackoffMax: 20 * time.Millisecond, MaxAttempts: 12,
		Logger: slog.New(slog.DiscardHandler),
	})

	// The events: tenants t1..t6, models o1, o3 and mini, regions eu
	// (the meter's) and us, and a few api_calls the meter does not read.
	const unique, chunk = 3000, 150
	now := time.Now().UTC()
	from := now.Add(-time.Hour)
	if ms := windows.Month.Start(now); from.Before(ms) {
		from = ms
	}
	span := max(now.Sub(from), time.Second)
	rng := rand.New(rand.NewPCG(25, 16))
	evs := make([]events.Event, unique)
	for i := range evs {
		metric := "tokens"
		if rng.IntN(10) == 0 {
			metric = "api_calls"
		}
		region := "eu"
		if rng.IntN(4) == 0 {
			region = "us"
		}
		evs[i] = events.Event{ID: fmt.Sprintf("ev-%05d", i), Tenant: fmt.Sprint("t", 1+rng.IntN(tenants)), Metric: metric,
			Value: 1 + rng.Int64N(1000), Time: from.Add(time.Duration(rng.Int64N(int64(span)))).Truncate(time.Millisecond),
			Properties: map[string]string{"model": models[rng.IntN(len(models))], "region": region}}
	}

	agg := rollup.New(e.db.Pool, rollup.Config{Group: "lineage-e2e", Topic: topics.UsageEvents, Logger: slog.New(slog.DiscardHandler)})
	c := consumer.New(consumer.Config{Brokers: e.kc.Brokers(), Topic: topics.UsageEvents, Group: "lineage-e2e",
		BatchSize: 200, BatchWait: 20 * time.Millisecond}, agg, slog.New(slog.DiscardHandler), nil)
	cctx, stopConsumer := context.WithCancel(ctx)
	consumed := make(chan error, 1)
	go func() { consumed <- c.Run(cctx) }()
	defer func() {
		stopConsumer()
		if err := <-consumed; err != nil {
			t.Errorf("consumer: %v", err)
		}
	}()

	// The producer: chunks of new events, each followed by resends of a
	// fifth as many earlier ones, while the biller syncs in a loop.
	produced := make(chan error, 1)
	records := 0
	var sendOrder []events.Event
	for start := 0; start < unique; start += chunk {
		sendOrder = append(sendOrder, evs[start:start+chunk]...)
		for range chunk / 5 {
			sendOrder = append(sendOrder, evs[rng.IntN(start+chunk)])
		}
	}
	records = len(sendOrder)
	go func() {
		for i := 0; i < len(sendOrder); i += chunk {
			if err := e.producer.Emit(ctx, sendOrder[i:min(i+chunk, len(sendOrder))]...); err != nil {
				produced <- fmt.Errorf("emitting: %w", err)
				return
			}
			time.Sleep(60 * time.Millisecond)
		}
		produced <- nil
	}()
	syncs, midSyncs, concurrentPushes := 0, 0, 0
	drained := false
	var syncTime time.Duration
	for !drained {
		began := time.Now()
		if _, err := biller.Sync(ctx); err != nil {
			t.Fatalf("sync %d: %v", syncs, err)
		}
		syncTime += time.Since(began)
		syncs++
		var next int
		if err := e.db.Pool.QueryRow(ctx, `SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets WHERE consumer_group = 'lineage-e2e'`).Scan(&next); err != nil {
			t.Fatal(err)
		}
		if next >= records {
			drained = true
		} else if next > 0 {
			midSyncs++
		}
		if !drained {
			if err := e.db.Pool.QueryRow(ctx, `SELECT count(*) FROM billing_pushes WHERE metric = 'tokens_by_model'`).Scan(&concurrentPushes); err != nil {
				t.Fatal(err)
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("consumed %d of %d records before the deadline", next, records)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := <-produced; err != nil {
		t.Fatal(err)
	}
	if _, err := biller.Sync(ctx); err != nil { // what the last batches counted
		t.Fatal(err)
	}
	if concurrentPushes < 20 || midSyncs < 3 {
		t.Fatalf("%d pushes by %d syncs while events were consumed: the biller did not run alongside the consumer enough to test anything", concurrentPushes, midSyncs)
	}

	// Pushes planned while a batch of their tenant's events was being
	// counted (its transaction in progress in the push's snapshot): the
	// case the snapshots exist for.
	var inFlight int
	if err := e.db.Pool.QueryRow(ctx, `SELECT count(DISTINCT p.id) FROM billing_pushes p
		JOIN ledger_events l ON l.tenant = p.tenant AND l.metric = 'tokens'
		WHERE p.metric = 'tokens_by_model' AND l.counted_xid IN (SELECT pg_snapshot_xip(p.metered_snapshot))`).Scan(&inFlight); err != nil {
		t.Fatal(err)
	}

	// Where each event was first written: the record the ledger counted.
	first := map[string][2]int64{}
	for _, m := range kafkatest.ReadAll(t, e.kc.Brokers(), topics.UsageEvents) {
		var ev events.Event
		if err := ev.UnmarshalJSON(m.Value); err != nil {
			t.Fatal(err)
		}
		k := ev.Tenant + "/" + ev.ID
		if w, ok := first[k]; !ok || m.Offset < w[1] {
			first[k] = [2]int64{int64(m.Partition), m.Offset}
		}
	}
	partitions := map[int64]bool{}
	for _, w := range first {
		partitions[w[0]] = true
	}
	if len(first) != unique || len(partitions) != 4 {
		t.Fatalf("%d events on %d partitions, want %d on 4", len(first), len(partitions), unique)
	}

	// Every push of the meter.
	type pushRef struct {
		ident, tenant, group, status string
		delta                        *big.Int
	}
	var pushes []pushRef
	rows, err := e.db.Pool.Query(ctx, `SELECT identifier, tenant, group_key, status, delta::text FROM billing_pushes
		WHERE metric = 'tokens_by_model' ORDER BY tenant, group_key, cumulative_total`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var p pushRef
		var delta string
		if err := rows.Scan(&p.ident, &p.tenant, &p.group, &p.status, &delta); err != nil {
			t.Fatal(err)
		}
		var ok bool
		if p.delta, ok = new(big.Int).SetString(delta, 10); !ok {
			t.Fatalf("push %s: delta %q", p.ident, delta)
		}
		pushes = append(pushes, p)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}

	carrier := map[string]string{}  // tenant/id -> push identifier
	billed := map[string]*big.Int{} // tenant/group -> sum of sent deltas
	for _, p := range pushes {
		if p.status != "sent" {
			t.Errorf("push %s: status %s, want sent", p.ident, p.status)
		}
		if b := billed[p.tenant+"/"+p.group]; b == nil {
			billed[p.tenant+"/"+p.group] = new(big.Int).Set(p.delta)
		} else {
			b.Add(b, p.delta)
		}
		code, body := e.lineageGet(t, "/v1/lineage/pushes/"+p.ident)
		if code != 200 || !strings.Contains(body, `"complete":true`) || !strings.Contains(body, `"delta_is":"sum:`) {
			t.Errorf("push %s summary: %d %s", p.ident, code, body)
		}
		code, body = e.lineageGet(t, "/v1/lineage/pushes/"+p.ident+"/events")
		if code != 200 {
			t.Fatalf("push %s events: %d %s", p.ident, code, body)
		}
		lines := strings.Split(strings.TrimSuffix(body, "\n"), "\n")
		sum := new(big.Int)
		var end lineageRow
		for i, line := range lines {
			var r lineageRow
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				t.Fatalf("push %s: %v in %q", p.ident, err, line)
			}
			if i == len(lines)-1 {
				end = r
				break
			}
			if r.Kind != "event" {
				t.Errorf("push %s: row %+v, want events only", p.ident, r)
				continue
			}
			k := p.tenant + "/" + r.ID
			if w := first[k]; w != [2]int64{int64(r.Partition), r.Offset} {
				t.Errorf("push %s: %s at %d/%d, first written at %d/%d", p.ident, k, r.Partition, r.Offset, w[0], w[1])
			}
			if prev, dup := carrier[k]; dup {
				t.Errorf("%s carried by push %s and by push %s", k, prev, p.ident)
			}
			carrier[k] = p.ident
			sum.Add(sum, big.NewInt(r.Value))
		}
		if end.Kind != "end" || !end.Complete || end.Unreadable != 0 {
			t.Errorf("push %s: end row %+v, want complete with nothing unreadable", p.ident, end)
		}
		if sum.Cmp(p.delta) != 0 {
			t.Errorf("push %s (%s %s): its events sum to %s, its delta is %s", p.ident, p.tenant, p.group, sum, p.delta)
		}
	}

	// Every event the meter takes is in exactly one push, of its tenant
	// and group; no other event is in any; each group's pushes bill its
	// events' total.
	byIdent := map[string]pushRef{}
	for _, p := range pushes {
		byIdent[p.ident] = p
	}
	want := map[string]*big.Int{}
	for _, ev := range evs {
		k := ev.Tenant + "/" + ev.ID
		takes := ev.Metric == "tokens" && ev.Properties["region"] == "eu"
		ident, carried := carrier[k]
		switch {
		case takes && !carried:
			t.Errorf("%s (%s, %d) is in no push", k, ev.Properties["model"], ev.Value)
		case !takes && carried:
			t.Errorf("%s (%s %v) is in push %s, the meter does not take it", k, ev.Metric, ev.Properties, ident)
		case carried:
			if p, group := byIdent[ident], `["`+ev.Properties["model"]+`"]`; p.tenant != ev.Tenant || p.group != group {
				t.Errorf("%s of group %s is in push %s of %s %s", k, group, ident, p.tenant, p.group)
			}
		}
		if takes {
			g := ev.Tenant + "/" + `["` + ev.Properties["model"] + `"]`
			if want[g] == nil {
				want[g] = new(big.Int)
			}
			want[g].Add(want[g], big.NewInt(ev.Value))
		}
	}
	for g, w := range want {
		if got := billed[g]; got == nil || got.Cmp(w) != 0 {
			t.Errorf("%s: pushes bill %v, its events total %s", g, got, w)
		}
	}
	// An event's own lineage names the push that carried it.
	for _, ev := range evs[:40] {
		k := ev.Tenant + "/" + ev.ID
		code, body := e.lineageGet(t, "/v1/lineage/events/"+ev.ID+"?tenant="+ev.Tenant)
		if ident, ok := carrier[k]; code != 200 || ok && !strings.Contains(body, `"push":{"identifier":"`+ident+`"`) {
			t.Errorf("event %s lineage: %d %s, want push %s", k, code, body, ident)
		}
	}
	if len(billed) != len(want) {
		t.Errorf("%d groups billed, %d have events", len(billed), len(want))
	}
	t.Logf("%d records (%d events), %d syncs (%d while consuming, %v each on average), %d pushes (%d while consuming, %d planned while a batch of their tenant was being counted), %d events carried", records, unique, syncs, midSyncs, (syncTime / time.Duration(syncs)).Round(time.Millisecond), len(pushes), concurrentPushes, inFlight, len(carrier))
}
