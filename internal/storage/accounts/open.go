package accounts

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Open connects to Postgres at databaseURL, waiting up to wait for it to
// answer (services may start before the database does); 0 tries once.
func Open(ctx context.Context, databaseURL string, wait time.Duration, log *slog.Logger) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to Postgres: %w", err)
	}
	bo := backoff.NewExponentialBackOff()
	bo.MaxInterval = 2 * time.Second
	_, err = backoff.Retry(ctx, func() (struct{}, error) {
		err := pool.Ping(ctx)
		if err != nil {
			log.WarnContext(ctx, "waiting for Postgres", "url", Redact(databaseURL), "err", err)
		}
		return struct{}{}, err
	}, backoff.WithBackOff(bo), backoff.WithMaxElapsedTime(wait), backoff.WithMaxTries(maxTries(wait)))
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres at %s did not answer within %s: %w", Redact(databaseURL), wait, err)
	}
	return pool, nil
}

// maxTries makes a zero wait mean one try rather than no limit.
func maxTries(wait time.Duration) uint {
	if wait <= 0 {
		return 1
	}
	return 0
}

// Redact hides the password of a database URL for logs.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable URL)"
	}
	return u.Redacted()
}
