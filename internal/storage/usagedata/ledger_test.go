package usagedata_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// The ledger's key of an event id, computed in Go for each batch, is the
// schema's (ledger_key, ledger_id_text), which the migration and readers
// by id use.
func TestLedgerKeyMatchesSchema(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	ids := []string{
		"0190f4c4-7d3e-7a1b-8c2d-3e4f5a6b7c8d", "0190F4C4-7D3E-7A1B-8C2D-3E4F5A6B7C8D", "0190f4c4-7d3e-7a1b-8c2d-3e4f5a6b7c8D",
		"00000000-0000-0000-0000-000000000000", "{0190f4c4-7d3e-7a1b-8c2d-3e4f5a6b7c8d}", "0190f4c47d3e7a1b8c2d3e4f5a6b7c8d",
		"0190f4c4-7d3e-7a1b-8c2d-3e4f5a6b7c8", "0190f4c4-7d3e-7a1b-8c2d-3e4f5a6b7c8dd", "0190f4c4_7d3e-7a1b-8c2d-3e4f5a6b7c8d",
		"order-1", "Order-1", "x", usagedata.AdjustmentLedgerPrefix + "a1", "héllo wörld", strings.Repeat("z", 200),
	}
	for _, id := range ids {
		key, text := usagedata.LedgerKey("acme", id)
		if other, _ := usagedata.LedgerKey("acm", "e"+id); other == key {
			t.Errorf("id %q: tenant and id run together in the key", id)
		}
		var sqlKey [16]byte
		var sqlText, back string
		if err := db.Pool.QueryRow(ctx, `SELECT ledger_key('acme', $1), ledger_id_text($1), ledger_event_id(ledger_key('acme', $1), ledger_id_text($1))`, id).
			Scan(&sqlKey, &sqlText, &back); err != nil {
			t.Fatal(err)
		}
		if key != sqlKey || text != sqlText || back != id {
			t.Errorf("id %q: Go key %x %q, schema's %x %q, given back as %q", id, key, text, sqlKey, sqlText, back)
		}
		if canonical := text == ""; canonical != (id == strings.ToLower(id) && len(id) == 36 && strings.Count(id, "-") == 4 && id[8] == '-') {
			t.Errorf("id %q: stored as a UUID = %v", id, canonical)
		}
	}
}

func ledgerBatch(tenant string, at time.Time, ids ...string) *usagedata.LedgerInsert {
	b := &usagedata.LedgerInsert{}
	for i, id := range ids {
		b.Tenants, b.IDs, b.Metrics = append(b.Tenants, tenant), append(b.IDs, id), append(b.Metrics, "calls")
		b.Hashes, b.Values, b.Times = append(b.Hashes, []byte("hash-of-"+id)), append(b.Values, int64(10+i)), append(b.Times, at)
		b.Partitions, b.Offsets = append(b.Partitions, 3), append(b.Offsets, int64(i))
	}
	return b
}

// Ids differing only in case are different events; a resend of either is
// refused, whatever the tenant.
func TestLedgerIDsAreExact(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	at := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	const u = "0190f4c4-7d3e-7a1b-8c2d-3e4f5a6b7c8d"
	ids := []string{u, strings.ToUpper(u), "order-1", "Order-1", "ORDER-1"}
	for _, tenant := range []string{"acme", "globex"} {
		for round, want := range []int{len(ids), 0} {
			var got []string
			if err := usagedata.InsertLedger(ctx, db.Pool, ledgerBatch(tenant, at, ids...), func(_, id string) { got = append(got, id) }); err != nil {
				t.Fatal(err)
			}
			if len(got) != want {
				t.Errorf("tenant %s round %d: inserted %v, want %d", tenant, round, got, want)
			}
		}
	}
	var rows []string
	err := usagedata.ReadLedger(ctx, db.Pool, slices.Repeat([]string{"globex"}, len(ids)), ids, true, func(tenant, id string, r usagedata.LedgerRow) {
		rows = append(rows, fmt.Sprintf("%s/%s=%d/%x", tenant, id, r.Value, r.Hash))
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(rows)
	want := []string{}
	for i, id := range ids {
		want = append(want, fmt.Sprintf("globex/%s=%d/%x", id, 10+i, []byte("hash-of-" + id)[:usagedata.LedgerHashSize]))
	}
	slices.Sort(want)
	if !slices.Equal(rows, want) {
		t.Errorf("ReadLedger:\n%v\nwant\n%v", rows, want)
	}
}

// An id whose key another id of its tenant holds (a digest collision,
// made here by hand) is never merged with it: it is counted once, kept
// whole in ledger_overflow, read, raised and expired like any other, and
// the id holding the key is untouched.
func TestLedgerDigestCollisionKeptApart(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	at := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	// "impostor" holds the key of order-9.
	if err := usagedata.InsertLedger(ctx, db.Pool, ledgerBatch("acme", at, "impostor"), func(string, string) {}); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `UPDATE ledger SET id = ledger_key('acme', 'order-9')`)
	for round, want := range []string{"[order-10 order-9]", "[]"} {
		var got []string
		if err := usagedata.InsertLedger(ctx, db.Pool, ledgerBatch("acme", at, "order-9", "order-10"), func(_, id string) { got = append(got, id) }); err != nil {
			t.Fatal(err)
		}
		if slices.Sort(got); fmt.Sprint(got) != want {
			t.Errorf("round %d inserted %v, want %s", round, got, want)
		}
	}
	var overflow int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM ledger_overflow WHERE tenant = 'acme' AND event_id = 'order-9'`).Scan(&overflow); err != nil || overflow != 1 {
		t.Fatalf("order-9 in ledger_overflow: %d rows, %v", overflow, err)
	}
	err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		values := map[string]int64{}
		if err := usagedata.ReadLedger(ctx, tx, []string{"acme", "acme"}, []string{"order-9", "order-10"}, true, func(_, id string, r usagedata.LedgerRow) {
			values[id] = r.Value
		}); err != nil {
			return err
		}
		if fmt.Sprint(values) != "map[order-10:11 order-9:10]" {
			t.Errorf("read %v", values)
		}
		if err := usagedata.RaiseLedger(ctx, tx, []string{"acme"}, []string{"order-9"}, []int64{99}, [][]byte{[]byte("raised!!")}); err != nil {
			return err
		}
		r, ok, err := usagedata.LockLedgerRow(ctx, tx, "acme", "order-9")
		if err != nil || !ok || r.Value != 99 || string(r.Hash) != "raised!!" {
			t.Errorf("LockLedgerRow(order-9) = %+v, %v, %v; want the raise", r, ok, err)
		}
		// The impostor's row is found by its own key, which the hand-made
		// collision moved: read it from the table.
		var impostor int64
		if err := tx.QueryRow(ctx, `SELECT value FROM ledger WHERE id_text = 'impostor' AND id = ledger_key('acme', 'order-9')`).Scan(&impostor); err != nil || impostor != 10 {
			t.Errorf("the impostor's row: value %d, %v; want it untouched (10)", impostor, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var events string
	if err := db.Pool.QueryRow(ctx, `SELECT string_agg(event_id || '=' || value, ' ' ORDER BY event_id) FROM ledger_events`).Scan(&events); err != nil {
		t.Fatal(err)
	}
	if events != "impostor=10 order-10=11 order-9=99" {
		t.Errorf("ledger_events: %s", events)
	}
	if n, err := usagedata.DeleteExpired(ctx, db.Pool, at.AddDate(0, 0, 1)); err != nil || n != 3 {
		t.Errorf("DeleteExpired = %d, %v; want 3 (the overflow's row included)", n, err)
	}
}

// Batches of new tenants committing concurrently, each adding names the
// others add too, lose no event: every (tenant, id) is inserted exactly
// once, whatever the interleaving.
func TestLedgerNewNamesConcurrently(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	at := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	const workers, tenants = 6, 40
	var mu sync.Mutex
	inserted := map[string]int{}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := &usagedata.LedgerInsert{}
			for i := range tenants {
				// Every worker names every tenant, in its own order, with
				// ids of its own and ids all workers share.
				tenant := fmt.Sprintf("t%02d", (i*7+w*5)%tenants)
				for _, id := range []string{fmt.Sprintf("w%d", w), "shared"} {
					b.Tenants, b.IDs, b.Metrics = append(b.Tenants, tenant), append(b.IDs, id), append(b.Metrics, "m-"+tenant)
					b.Hashes, b.Values, b.Times = append(b.Hashes, []byte{1}), append(b.Values, 1), append(b.Times, at)
					b.Partitions, b.Offsets = append(b.Partitions, int32(w)), append(b.Offsets, int64(i))
				}
			}
			err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
				got := map[string]int{}
				if err := usagedata.InsertLedger(ctx, tx, b, func(tenant, id string) { got[tenant+"/"+id]++ }); err != nil {
					return err
				}
				time.Sleep(20 * time.Millisecond) // hold the names uncommitted a while
				mu.Lock()
				defer mu.Unlock()
				for k, n := range got {
					inserted[k] += n
				}
				return nil
			})
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if want := tenants * (workers + 1); len(inserted) != want {
		t.Errorf("%d keys inserted, want %d", len(inserted), want)
	}
	for k, n := range inserted {
		if n != 1 {
			t.Errorf("%s inserted %d times", k, n)
		}
	}
	var rows, names int
	if err := db.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM ledger_events), (SELECT count(*) FROM ledger_names)`).Scan(&rows, &names); err != nil {
		t.Fatal(err)
	}
	if rows != tenants*(workers+1) || names != tenants {
		t.Errorf("%d ledger rows and %d names, want %d and %d", rows, names, tenants*(workers+1), tenants)
	}
}
