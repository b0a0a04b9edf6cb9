package usagedata_test

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/migrate"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/windows"
	"github.com/usagemeter/metering/migrations"
)

// primaryKey returns the columns of table's primary key, in order.
func primaryKey(t *testing.T, db *pgtest.DB, table string) []string {
	t.Helper()
	var key []string
	if err := db.Pool.QueryRow(context.Background(), `SELECT array_agg(a.attname::text ORDER BY k.i)
		FROM pg_index x CROSS JOIN unnest(x.indkey) WITH ORDINALITY AS k(attnum, i)
		JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
		WHERE x.indrelid = $1::regclass AND x.indisprimary`, table).Scan(&key); err != nil {
		t.Fatal(err)
	}
	return key
}

// A database holding meter windows and unique values under the keys
// before 0033 upgrades in place: the keys are reordered by period before
// group, usage_windows_meter_period is gone, no row changes, and windows
// added after the upgrade fold into the same rows: every aggregation's
// grouped read matches the events, half counted before the upgrade and
// half after.
func TestUpgradeOrdersMeterKeysByPeriod(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	quiet := slog.New(slog.DiscardHandler)
	db := pgtest.NewEmpty(t)
	if _, err := migrate.Apply(ctx, db.Pool, migrationsThrough(t, 32), quiet); err != nil {
		t.Fatalf("applying migrations through 0032: %v", err)
	}
	evs := groupedEvents(rand.New(rand.NewPCG(5, 9)), 300)
	var defs []meter.Definition
	for _, agg := range meter.Aggregations {
		d := meter.Definition{Name: "tokens_" + string(agg), Metric: "tokens", Aggregation: agg, GroupBy: []string{"model", "region"}}
		if agg == meter.UniqueCount {
			d.Property = "user"
		}
		defs = append(defs, d)
		addEvents(t, db, d, evs[:150])
	}
	before := readWindows(t, db)
	var uniques int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM meter_uniques`).Scan(&uniques); err != nil {
		t.Fatal(err)
	}

	res, err := migrate.Apply(ctx, db.Pool, migrations.FS, quiet)
	if err != nil {
		t.Fatalf("upgrading: %v", err)
	}
	if res.From != 32 || res.To < 33 {
		t.Fatalf("upgrade went from %d to %d, want from 32 to at least 33", res.From, res.To)
	}
	if got := readWindows(t, db); !slices.Equal(got, before) {
		t.Fatalf("windows changed by the upgrade:\n got %+v\nwant %+v", got, before)
	}
	var after int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM meter_uniques`).Scan(&after); err != nil || after != uniques {
		t.Fatalf("%d unique values after the upgrade (%v), want %d", after, err, uniques)
	}
	for table, want := range map[string][]string{
		"usage_windows": {"tenant", "meter", "granularity", "window_start", "group_key"},
		"meter_uniques": {"tenant", "meter", "granularity", "window_start", "group_key", "value"},
	} {
		if got := primaryKey(t, db, table); !slices.Equal(got, want) {
			t.Errorf("primary key of %s = %v, want %v", table, got, want)
		}
	}
	var gone bool
	if err := db.Pool.QueryRow(ctx, `SELECT to_regclass('usage_windows_meter_period') IS NULL`).Scan(&gone); err != nil || !gone {
		t.Errorf("usage_windows_meter_period still exists (%v)", err)
	}

	reader := usagedata.NewReader(db.Pool)
	day := time.Date(2026, 11, 3, 0, 0, 0, 0, time.UTC)
	for _, d := range defs {
		addEvents(t, db, d, evs[150:])
		for _, groupBy := range [][]string{nil, {"model"}, {"region", "model"}} {
			for _, g := range []windows.Granularity{windows.Hour, windows.Day} {
				q := usagedata.MeterQuery{Tenant: "acme", Meter: d, Granularity: g, From: day, To: day.Add(72 * time.Hour), GroupBy: groupBy}
				t.Run(fmt.Sprintf("%s/%v/%s", d.Aggregation, groupBy, g), func(t *testing.T) {
					u, err := reader.MeterUsage(ctx, q)
					if err != nil {
						t.Fatal(err)
					}
					got, want := gotUsage(t, u), expectUsage(evs, q)
					for _, k := range slices.Sorted(maps.Keys(want)) {
						if got[k] != want[k] {
							t.Errorf("%s: got %q, want %q", k, got[k], want[k])
						}
					}
					if len(got) != len(want) {
						t.Errorf("%d entries, want %d", len(got), len(want))
					}
				})
			}
		}
	}
}
