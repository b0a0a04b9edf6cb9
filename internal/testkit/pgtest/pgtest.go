// Package pgtest gives each test a fresh, migrated Postgres database and
// drops it when the test ends.
//
// Invariant: tests never share a database and never depend on leftovers;
// nothing here skips when Postgres is missing, it fails with what to do.
//
// Test and dev tooling, not product (see internal/testkit): a test helper,
// which may import testing; only tests import it.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/usagemeter/metering/internal/billingevents"
	"github.com/usagemeter/metering/internal/migrate"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/topics"
	"github.com/usagemeter/metering/migrations"
)

// DefaultURL is the server tests use unless TEST_DATABASE_URL names another.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// AdminURL returns the URL of the maintenance database tests create
// their databases from.
func AdminURL() string {
	if u := os.Getenv("TEST_DATABASE_URL"); u != "" {
		return u
	}
	return DefaultURL
}

// DB is a fresh database for one test.
type DB struct {
	// URL connects to the database, for subprocesses.
	URL string
	// Pool is connected to it.
	Pool *pgxpool.Pool
}

// New creates a migrated database for tb and drops it in tb's cleanup.
func New(tb testing.TB) *DB {
	tb.Helper()
	db := NewEmpty(tb)
	if _, err := migrate.Apply(context.Background(), db.Pool, migrations.FS, slog.New(slog.DiscardHandler)); err != nil {
		tb.Fatalf("pgtest: migrating: %v", err)
	}
	return db
}

// NewEmpty creates a database with no schema at all.
func NewEmpty(tb testing.TB) *DB {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, AdminURL())
	if err != nil {
		tb.Fatalf("pgtest: cannot reach Postgres at %s (set TEST_DATABASE_URL, or run `make test`, which starts one): %v", accounts.Redact(AdminURL()), err)
	}
	defer admin.Close(ctx)
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "metering_test_" + hex.EncodeToString(b[:])
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		tb.Fatalf("pgtest: creating database: %v", err)
	}
	u, err := url.Parse(AdminURL())
	if err != nil {
		tb.Fatalf("pgtest: TEST_DATABASE_URL: %v", err)
	}
	u.Path = "/" + name
	db := &DB{URL: u.String()}
	db.Pool, err = pgxpool.New(ctx, db.URL)
	if err != nil {
		tb.Fatalf("pgtest: connecting to %s: %v", name, err)
	}
	tb.Cleanup(func() {
		db.Pool.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		admin, err := pgx.Connect(ctx, AdminURL())
		if err != nil {
			tb.Errorf("pgtest: dropping %s: %v", name, err)
			return
		}
		defer admin.Close(ctx)
		if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			tb.Errorf("pgtest: dropping %s: %v", name, err)
		}
	})
	return db
}

// Exec runs sql on db, failing tb on error. For test setup.
func (db *DB) Exec(tb testing.TB, sql string, args ...any) {
	tb.Helper()
	if _, err := db.Pool.Exec(context.Background(), sql, args...); err != nil {
		tb.Fatalf("pgtest: %s: %v", sql, err)
	}
}

// Outbox returns the values of the messages queued in the outbox for
// topic, in queue order.
func (db *DB) Outbox(tb testing.TB, topic string) [][]byte {
	tb.Helper()
	rows, err := db.Pool.Query(context.Background(), `SELECT msg_value FROM outbox WHERE topic = $1 ORDER BY id`, topic)
	if err != nil {
		tb.Fatalf("pgtest: reading the outbox of %s: %v", topic, err)
	}
	values, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	if err != nil {
		tb.Fatalf("pgtest: reading the outbox of %s: %v", topic, err)
	}
	return values
}

// BillingEvents returns the billing.events queued in the outbox, decoded,
// oldest first; of the given types only, when any are given.
func (db *DB) BillingEvents(tb testing.TB, types ...billingevents.Type) []billingevents.Event {
	tb.Helper()
	var out []billingevents.Event
	for _, v := range db.Outbox(tb, topics.BillingEvents) {
		ev, err := billingevents.Decode(v)
		if err != nil {
			tb.Fatalf("pgtest: a billing event in the outbox: %v", err)
		}
		if len(types) == 0 || slices.Contains(types, ev.Type) {
			out = append(out, ev)
		}
	}
	return out
}

// String names the database in test output.
func (db *DB) String() string { return fmt.Sprintf("pgtest.DB(%s)", accounts.Redact(db.URL)) }

// LedgerEventsWritable lets tests seed the dedup ledger in its readable
// shape: an INSERT into the view ledger_events (tenant, event_id,
// payload_hash, metric, value, event_time, src_partition, src_offset,
// recorded_at, counted_xid; event_day is ignored, it is event_time's)
// writes the compact row, adding the names it needs, as the product's
// ledger operations would: the transaction's batch row comes from the
// ledger's trigger; a row of another xid or another time gets a
// ledger_recorded row keeping its recorded_at. A row whose (tenant, id) the ledger holds is
// skipped, and not counted in the statement's rows. For test setup only:
// the product writes the ledger through internal/storage/usagedata.
func (db *DB) LedgerEventsWritable(tb testing.TB) {
	tb.Helper()
	db.Exec(tb, `CREATE FUNCTION pgtest_ledger_events_insert() RETURNS trigger LANGUAGE plpgsql AS $$
		DECLARE
			r integer;
			k uuid;
			x xid8 := coalesce(NEW.counted_xid, pg_current_xact_id());
			at timestamptz := coalesce(NEW.recorded_at, now());
		BEGIN
			INSERT INTO ledger_names (tenant, metric) VALUES (NEW.tenant, NEW.metric) ON CONFLICT (tenant, metric) DO NOTHING;
			SELECT ref INTO r FROM ledger_names WHERE tenant = NEW.tenant AND metric = NEW.metric;
			INSERT INTO ledger (id, id_text, ref, payload_hash, value, event_time, src_partition, src_offset, counted_xid)
			VALUES (ledger_key(NEW.tenant, NEW.event_id), ledger_id_text(NEW.event_id), r, coalesce(NEW.payload_hash, 0), NEW.value, NEW.event_time,
				NEW.src_partition, NEW.src_offset, x)
			ON CONFLICT (id) DO NOTHING
			RETURNING id INTO k;
			IF NOT FOUND THEN
				RETURN NULL;
			END IF;
			IF (SELECT recorded_at FROM ledger_batches WHERE counted_xid = x) IS DISTINCT FROM at THEN
				INSERT INTO ledger_recorded (id, recorded_at) VALUES (k, at)
				ON CONFLICT (id) DO UPDATE SET recorded_at = excluded.recorded_at;
			END IF;
			RETURN NEW;
		END
		$$`)
	db.Exec(tb, `CREATE TRIGGER pgtest_ledger_events_insert INSTEAD OF INSERT ON ledger_events
		FOR EACH ROW EXECUTE FUNCTION pgtest_ledger_events_insert()`)
}
