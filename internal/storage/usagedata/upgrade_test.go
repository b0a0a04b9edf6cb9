package usagedata_test

import (
	"context"
	"io/fs"
	"log/slog"
	"math/big"
	"slices"
	"strconv"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/migrate"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/windows"
	"github.com/usagemeter/metering/migrations"
)

// migrationsThrough returns the files of migrations.FS up to and
// including version last: the schema a release of that version made.
func migrationsThrough(t *testing.T, last int) fstest.MapFS {
	t.Helper()
	entries, err := fs.ReadDir(migrations.FS, ".")
	if err != nil {
		t.Fatal(err)
	}
	sub := fstest.MapFS{}
	for _, e := range entries {
		v, err := strconv.Atoi(e.Name()[:min(4, len(e.Name()))])
		if err != nil || v > last {
			continue
		}
		body, err := fs.ReadFile(migrations.FS, e.Name())
		if err != nil {
			t.Fatal(err)
		}
		sub[e.Name()] = &fstest.MapFile{Data: body}
	}
	if len(sub) != last {
		t.Fatalf("found %d migrations through %04d, want %d", len(sub), last, last)
	}
	return sub
}

// upgradedWindow is one row of usage_windows as the new schema reads it.
type upgradedWindow struct {
	tenant, meter, group, granularity string
	start                             time.Time
	value                             string
	events                            int64
	updated                           time.Time
}

func readWindows(t *testing.T, db *pgtest.DB) []upgradedWindow {
	t.Helper()
	rows, err := db.Pool.Query(context.Background(), `SELECT tenant, meter, group_key, granularity, window_start, value::text, events, updated_at
		FROM usage_windows ORDER BY tenant, meter, group_key, granularity, window_start`)
	if err != nil {
		t.Fatal(err)
	}
	ws, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (upgradedWindow, error) {
		var w upgradedWindow
		err := r.Scan(&w.tenant, &w.meter, &w.group, &w.granularity, &w.start, &w.value, &w.events, &w.updated)
		w.start, w.updated = w.start.UTC(), w.updated.UTC()
		return w, err
	})
	if err != nil {
		t.Fatal(err)
	}
	return ws
}

// A database made by the schema before meters (through 0010) upgrades in
// place: every window it holds becomes its metric's implicit meter's
// window (meter = the metric, the empty group key), with the same value, events
// and updated_at (no row rewritten, nothing recounted), under the new
// primary key; AddWindows then adds to those very rows (no duplicate) and
// creates the windows that follow (no gap), and the readers see both.
func TestUpgradeKeepsWindowsAsImplicitMeters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	quiet := slog.New(slog.DiscardHandler)
	db := pgtest.NewEmpty(t)
	if _, err := migrate.Apply(ctx, db.Pool, migrationsThrough(t, 10), quiet); err != nil {
		t.Fatalf("applying migrations through 0010: %v", err)
	}

	hour := time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)
	old := []struct {
		tenant, metric string
		g              windows.Granularity
		value          string
		events         int64
	}{
		{"acme", "api_calls", windows.Hour, "5", 5},
		{"acme", "api_calls", windows.Day, "5", 5},
		{"acme", "api_calls", windows.Month, "5", 5},
		{"acme", "tokens", windows.Hour, "18446744073709551614", 2},
		{"globex", "api_calls", windows.Hour, "7", 3},
		{"globex", "api_calls", windows.Minute, "7", 3},
	}
	for _, o := range old {
		db.Exec(t, `INSERT INTO usage_windows (tenant, metric, granularity, window_start, value, events, updated_at)
			VALUES ($1, $2, $3, $4, $5::numeric, $6, '2026-11-03T10:30:00Z')`, o.tenant, o.metric, string(o.g), o.g.Start(hour), o.value, o.events)
	}
	stamp := time.Date(2026, 11, 3, 10, 30, 0, 0, time.UTC)

	res, err := migrate.Apply(ctx, db.Pool, migrations.FS, quiet)
	if err != nil {
		t.Fatalf("upgrading: %v", err)
	}
	if res.From != 10 || res.To < 12 {
		t.Fatalf("upgrade went from %d to %d, want from 10 to at least 12", res.From, res.To)
	}

	var want []upgradedWindow
	for _, o := range old {
		want = append(want, upgradedWindow{o.tenant, o.metric, "", string(o.g), o.g.Start(hour), o.value, o.events, stamp})
	}
	slices.SortFunc(want, cmpWindows)
	if got := readWindows(t, db); !slices.Equal(got, want) {
		t.Fatalf("windows after the upgrade:\n got %+v\nwant %+v", got, want)
	}

	var key []string
	if err := db.Pool.QueryRow(ctx, `SELECT array_agg(a.attname::text ORDER BY k.i)
		FROM pg_index x CROSS JOIN unnest(x.indkey) WITH ORDINALITY AS k(attnum, i)
		JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
		WHERE x.indrelid = 'usage_windows'::regclass AND x.indisprimary`).Scan(&key); err != nil {
		t.Fatal(err)
	}
	// Migration 0033 orders the key by period before group.
	if wantKey := []string{"tenant", "meter", "granularity", "window_start", "group_key"}; !slices.Equal(key, wantKey) {
		t.Fatalf("primary key of usage_windows = %v, want %v", key, wantKey)
	}

	// The rollup's next batch: the same windows, and the hour after.
	next := hour.Add(time.Hour)
	adds := []struct {
		tenant, metric string
		g              windows.Granularity
		at             time.Time
	}{
		{"acme", "api_calls", windows.Hour, hour},
		{"acme", "api_calls", windows.Day, hour},
		{"acme", "api_calls", windows.Month, hour},
		{"acme", "api_calls", windows.Hour, next},
		{"acme", "tokens", windows.Hour, hour},
	}
	w := &usagedata.WindowAdds{}
	for _, a := range adds {
		w.Tenants, w.Meters, w.Granularities = append(w.Tenants, a.tenant), append(w.Meters, a.metric), append(w.Granularities, string(a.g))
		w.Starts, w.Values, w.Events = append(w.Starts, a.g.Start(a.at)), append(w.Values, "10"), append(w.Events, 1)
	}
	if err := usagedata.AddWindows(ctx, db.Pool, w); err != nil {
		t.Fatal(err)
	}
	if got := len(readWindows(t, db)); got != len(old)+1 {
		t.Fatalf("%d windows after adding, want %d (the old ones and one new hour)", got, len(old)+1)
	}

	r := usagedata.NewReader(db.Pool)
	tests := []struct {
		name, tenant, metric string
		g                    windows.Granularity
		wantTotal            string
		wantWindows          int
		wantEvents           int64
	}{
		{"hours span the upgrade", "acme", "api_calls", windows.Hour, "25", 2, 7},
		{"day added to", "acme", "api_calls", windows.Day, "15", 1, 6},
		{"month added to", "acme", "api_calls", windows.Month, "15", 1, 6},
		{"beyond int64", "acme", "tokens", windows.Hour, "18446744073709551624", 1, 3},
		{"untouched", "globex", "api_calls", windows.Minute, "7", 1, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ws, total, err := r.Usage(ctx, tt.tenant, tt.metric, tt.g, windows.Month.Start(hour), windows.Month.Start(hour).AddDate(0, 1, 0))
			if err != nil {
				t.Fatal(err)
			}
			var events int64
			for _, w := range ws {
				events += w.Events
			}
			if total.String() != tt.wantTotal || len(ws) != tt.wantWindows || events != tt.wantEvents {
				t.Fatalf("Usage = %d windows totalling %s in %d events, want %d totalling %s in %d", len(ws), total, events, tt.wantWindows, tt.wantTotal, tt.wantEvents)
			}
		})
	}
	v, err := usagedata.WindowValue(ctx, db.Pool, "acme", "api_calls", windows.Month, windows.Month.Start(hour))
	if err != nil || v.Cmp(big.NewInt(15)) != 0 {
		t.Fatalf("WindowValue of the upgraded month = %v, %v; want 15", v, err)
	}
}

func cmpWindows(a, b upgradedWindow) int {
	for _, c := range [][2]string{{a.tenant, b.tenant}, {a.meter, b.meter}, {a.group, b.group}, {a.granularity, b.granularity}} {
		if c[0] != c[1] {
			if c[0] < c[1] {
				return -1
			}
			return 1
		}
	}
	return a.start.Compare(b.start)
}
