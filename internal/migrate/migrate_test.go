package migrate_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/fstest"

	"github.com/usagemeter/metering/internal/migrate"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/migrations"
)

var quiet = slog.New(slog.DiscardHandler)

func TestApplyIsIdempotentAndConcurrent(t *testing.T) {
	db := pgtest.NewEmpty(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	results := make([]migrate.Result, 4)
	errs := make([]error, 4)
	for i := range 4 {
		wg.Go(func() { results[i], errs[i] = migrate.Apply(ctx, db.Pool, migrations.FS, quiet) })
	}
	wg.Wait()
	all, _ := migrate.Load(migrations.FS)
	applied := 0
	for i := range 4 {
		if errs[i] != nil {
			t.Fatalf("Apply %d: %v", i, errs[i])
		}
		applied += len(results[i].Applied)
	}
	if applied != len(all) {
		t.Fatalf("migrations applied %d times in all, want %d (each once)", applied, len(all))
	}
	res, err := migrate.Apply(ctx, db.Pool, migrations.FS, quiet)
	if err != nil || len(res.Applied) != 0 || res.To != len(all) {
		t.Fatalf("second Apply = %+v, %v", res, err)
	}
}

func TestApplyRefusesChangedAndNewer(t *testing.T) {
	ctx := context.Background()
	v1 := fstest.MapFS{"0001_a.sql": {Data: []byte("CREATE TABLE a (x int);")}}
	v2 := fstest.MapFS{
		"0001_a.sql": {Data: []byte("CREATE TABLE a (x int);")},
		"0002_b.sql": {Data: []byte("CREATE TABLE b (x int);")},
	}
	edited := fstest.MapFS{"0001_a.sql": {Data: []byte("CREATE TABLE a (x bigint);")}}

	tests := []struct {
		name    string
		first   fstest.MapFS
		then    fstest.MapFS
		wantErr string
		is      error
	}{
		{"upgrade", v1, v2, "", nil},
		{"older binary", v2, v1, "knows only up to 1", migrate.ErrSchemaTooNew},
		{"edited migration", v1, edited, "changed after it was applied", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := pgtest.NewEmpty(t)
			if _, err := migrate.Apply(ctx, db.Pool, tt.first, quiet); err != nil {
				t.Fatal(err)
			}
			_, err := migrate.Apply(ctx, db.Pool, tt.then, quiet)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Apply: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Apply = %v, want error containing %q", err, tt.wantErr)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Fatalf("Apply = %v, want errors.Is %v", err, tt.is)
			}
		})
	}
}

func TestLoadRejectsBadNames(t *testing.T) {
	tests := []fstest.MapFS{
		{"1_a.sql": {Data: []byte("")}},
		{"0001_a.sql": {Data: []byte("")}, "0003_c.sql": {Data: []byte("")}},
	}
	for _, fsys := range tests {
		if _, err := migrate.Load(fsys); err == nil {
			t.Errorf("Load(%v) succeeded", fsys)
		}
	}
}

func TestFailedMigrationRollsBack(t *testing.T) {
	db := pgtest.NewEmpty(t)
	bad := fstest.MapFS{"0001_a.sql": {Data: []byte("CREATE TABLE a (x int); SELECT 1/0;")}}
	if _, err := migrate.Apply(context.Background(), db.Pool, bad, quiet); err == nil {
		t.Fatal("Apply of a failing migration succeeded")
	}
	var n int
	if err := db.Pool.QueryRow(context.Background(), "SELECT count(*) FROM pg_tables WHERE tablename = 'a'").Scan(&n); err != nil || n != 0 {
		t.Fatalf("table a exists after a failed migration (n=%d, err=%v)", n, err)
	}
}
