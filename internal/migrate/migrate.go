// Package migrate applies the embedded SQL migrations to Postgres.
//
// Invariant: migrations run one at a time across all processes (a Postgres
// advisory lock), each in its own transaction together with its
// schema_migrations row, so a schema is always at exactly one version. An
// applied file whose checksum changed, or a database newer than this
// binary, stops the service with an error instead of guessing.
package migrate

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"regexp"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/migrations"
)

// lockKey is the advisory lock held while migrating ("metering" in ASCII).
const lockKey int64 = 0x6d65746572696e67

// ErrSchemaTooNew means the database was migrated by a newer release.
var ErrSchemaTooNew = errors.New("database schema is newer than this binary")

// Migration is one numbered SQL file.
type Migration struct {
	Version  int
	Name     string
	SQL      string
	Checksum string
}

var fileRE = regexp.MustCompile(`^(\d{4})_([a-z0-9_]+)\.sql$`)

// Load reads the migrations in fsys, sorted by version.
func Load(fsys fs.FS) ([]Migration, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, fmt.Errorf("reading migrations: %w", err)
	}
	var ms []Migration
	for _, e := range entries {
		m := fileRE.FindStringSubmatch(e.Name())
		if m == nil {
			if path.Ext(e.Name()) == ".sql" {
				return nil, fmt.Errorf("migration file %s is not named NNNN_name.sql", e.Name())
			}
			continue
		}
		body, err := fs.ReadFile(fsys, e.Name())
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", e.Name(), err)
		}
		v, _ := strconv.Atoi(m[1])
		sum := sha256.Sum256(body)
		ms = append(ms, Migration{Version: v, Name: m[2], SQL: string(body), Checksum: hex.EncodeToString(sum[:])})
	}
	slices.SortFunc(ms, func(a, b Migration) int { return a.Version - b.Version })
	for i := range ms {
		if ms[i].Version != i+1 {
			return nil, fmt.Errorf("migration versions must run 1, 2, 3... without gaps; found %04d at position %d", ms[i].Version, i+1)
		}
	}
	return ms, nil
}

// Result says what Apply did.
type Result struct {
	From, To int
	Applied  []Migration
}

// Apply brings the database up to the newest migration in fsys. It is safe
// to call from many processes at once.
func Apply(ctx context.Context, pool *pgxpool.Pool, fsys fs.FS, log *slog.Logger) (Result, error) {
	ms, err := Load(fsys)
	if err != nil {
		return Result{}, err
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("connecting to Postgres to migrate: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", lockKey); err != nil {
		return Result{}, fmt.Errorf("taking the migration lock: %w", err)
	}
	defer func() {
		// A fresh context: unlock even when ctx ended.
		_, _ = conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", lockKey)
	}()
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    integer PRIMARY KEY,
		name       text NOT NULL,
		checksum   text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return Result{}, fmt.Errorf("creating schema_migrations: %w", err)
	}
	applied, err := appliedVersions(ctx, conn.Conn())
	if err != nil {
		return Result{}, err
	}
	res := Result{From: len(applied), To: len(applied)}
	for v, sum := range applied {
		if v > len(ms) {
			return res, fmt.Errorf("%w: the database is at version %d but this binary knows only up to %d; deploy the newer release or restore the database", ErrSchemaTooNew, maxKey(applied), len(ms))
		}
		if m := ms[v-1]; m.Checksum != sum {
			return res, fmt.Errorf("migration %04d_%s changed after it was applied (checksum %s, database has %s); released migrations must never be edited, add a new one instead", m.Version, m.Name, m.Checksum[:12], sum[:12])
		}
	}
	for _, m := range ms[len(applied):] {
		if err := applyOne(ctx, conn.Conn(), m); err != nil {
			return res, err
		}
		log.InfoContext(ctx, "applied migration", "version", m.Version, "name", m.Name)
		res.Applied = append(res.Applied, m)
		res.To = m.Version
	}
	return res, nil
}

func appliedVersions(ctx context.Context, conn *pgx.Conn) (map[int]string, error) {
	rows, err := conn.Query(ctx, "SELECT version, checksum FROM schema_migrations ORDER BY version")
	if err != nil {
		return nil, fmt.Errorf("reading schema_migrations: %w", err)
	}
	applied := map[int]string{}
	for rows.Next() {
		var v int
		var sum string
		if err := rows.Scan(&v, &sum); err != nil {
			return nil, fmt.Errorf("reading schema_migrations: %w", err)
		}
		applied[v] = sum
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading schema_migrations: %w", err)
	}
	for v := 1; v <= len(applied); v++ {
		if _, ok := applied[v]; !ok {
			return nil, fmt.Errorf("schema_migrations has a gap at version %d; the database was changed by hand", v)
		}
	}
	return applied, nil
}

func applyOne(ctx context.Context, conn *pgx.Conn, m Migration) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("migration %04d: %w", m.Version, err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, m.SQL); err != nil {
		return fmt.Errorf("migration %04d_%s: %w", m.Version, m.Name, err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
		m.Version, m.Name, m.Checksum); err != nil {
		return fmt.Errorf("recording migration %04d: %w", m.Version, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("committing migration %04d: %w", m.Version, err)
	}
	return nil
}

func maxKey(m map[int]string) int {
	n := 0
	for k := range m {
		n = max(n, k)
	}
	return n
}

// OpenPool opens a connection pool to Postgres at databaseURL (waiting up
// to wait for it to answer) and applies pending migrations on it before
// returning it: what every service does at start.
func OpenPool(ctx context.Context, databaseURL string, wait time.Duration, log *slog.Logger) (*pgxpool.Pool, error) {
	pool, err := accounts.Open(ctx, databaseURL, wait, log)
	if err != nil {
		return nil, err
	}
	res, err := Apply(ctx, pool, migrations.FS, log)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("migrating: %w", err)
	}
	log.DebugContext(ctx, "schema up to date", "from", res.From, "to", res.To)
	return pool, nil
}
