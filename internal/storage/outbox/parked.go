package outbox

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/storage"
)

// ParkedMessage is a row the relay set aside.
type ParkedMessage struct {
	ID        int64
	Topic     string
	Key       []byte
	Bytes     int
	Attempts  int
	LastError string
	ParkedAt  time.Time
}

// ListParked lists the parked rows, oldest first.
func ListParked(ctx context.Context, q storage.Executor) ([]ParkedMessage, error) {
	rows, err := q.Query(ctx, `SELECT id, topic, msg_key, octet_length(msg_value), attempts, coalesce(last_error, ''), parked_at
		FROM outbox WHERE published_at IS NULL AND parked_at IS NOT NULL ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("listing parked outbox rows: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (ParkedMessage, error) {
		var p ParkedMessage
		err := row.Scan(&p.ID, &p.Topic, &p.Key, &p.Bytes, &p.Attempts, &p.LastError, &p.ParkedAt)
		return p, err
	})
	if err != nil {
		return nil, fmt.Errorf("listing parked outbox rows: %w", err)
	}
	return out, nil
}

// Unpark puts the parked rows ids (every parked row when ids is empty)
// back in line with no attempts counted and no retry delay, and returns
// how many it put back; they go out ahead of later rows of their key. It
// does not wake the relays: call Wake in the same transaction.
func Unpark(ctx context.Context, q storage.Executor, ids ...int64) (int64, error) {
	tag, err := q.Exec(ctx, `UPDATE outbox SET parked_at = NULL, attempts = 0, retry_at = NULL
			WHERE published_at IS NULL AND parked_at IS NOT NULL AND (coalesce(cardinality($1::bigint[]), 0) = 0 OR id = ANY($1))`, ids)
	if err != nil {
		return 0, fmt.Errorf("unparking outbox rows: %w", err)
	}
	return tag.RowsAffected(), nil
}
