// Package outbox owns the outbox table: Kafka messages queued in the
// transaction that decided them, for the relay (internal/relay) to
// publish once it commits.
//
// Invariant: Enqueue is the only way in. It writes the rows and notifies
// Channel in the caller's transaction, so a message is published if and
// only if the transaction that queued it commits.
//
// Invariant: after Enqueue a row changes only through the relay's
// operations here: Eligible locks a round's rows (under LockRound),
// MarkPublished, Park and RecordFailures settle them, Unpark puts parked
// rows back in line, and Prune deletes only rows published long enough
// ago. Nothing here publishes: the relay (internal/relay) calls
// MarkPublished after Kafka acknowledged the rows, in the transaction
// that locked them.
package outbox

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
)

// Channel is the Postgres NOTIFY channel that wakes the relays.
const Channel = "outbox"

// Message is a Kafka message to publish once the transaction that queued
// it commits.
type Message struct {
	Topic string
	// Key nil is a null Kafka key.
	Key []byte
	// Value nil is stored, and goes out, empty: the outbox holds a value.
	Value []byte
	// Headers go out sorted by name; nil is none.
	Headers map[string]string
}

// Execer runs a statement: a pgx.Tx, whether a batch's transaction or one
// begun on a pool.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Enqueue writes msgs to the outbox, in order and in one statement, and
// notifies Channel, so that the relays wake when the transaction commits.
// Called with no message it does nothing: no row, no notification. tx
// should be a transaction: the messages are published only if it commits,
// and together with whatever else it wrote. Postgres folds the
// notifications of one transaction into one, so calling Enqueue several
// times in a transaction wakes the relays once.
func Enqueue(ctx context.Context, tx Execer, msgs ...Message) error {
	if len(msgs) == 0 {
		return nil
	}
	ts, ks, vs, hs := make([]string, len(msgs)), make([][]byte, len(msgs)), make([][]byte, len(msgs)), make([]string, len(msgs))
	for i, m := range msgs {
		h := []byte("{}")
		if len(m.Headers) > 0 {
			var err error
			if h, err = json.Marshal(m.Headers); err != nil {
				return fmt.Errorf("encoding outbox headers: %w", err)
			}
		}
		ts[i], ks[i], vs[i], hs[i] = m.Topic, m.Key, m.Value, string(h)
	}
	// A data-modifying WITH runs to completion whatever the outer query
	// reads, so the insert and the notification take one round trip.
	if _, err := tx.Exec(ctx, `WITH queued AS (
			INSERT INTO outbox (topic, msg_key, msg_value, headers)
			SELECT t, k, coalesce(v, ''::bytea), h::jsonb
			FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::text[]) WITH ORDINALITY AS b(t, k, v, h, n) ORDER BY n)
		SELECT pg_notify($5, '')`,
		ts, ks, vs, hs, Channel); err != nil {
		return fmt.Errorf("writing outbox: %w", err)
	}
	return nil
}

// Wake notifies Channel when tx commits, without queueing anything: the
// relays look again at rows made eligible some other way (unparked).
func Wake(ctx context.Context, tx Execer) error {
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, '')`, Channel); err != nil {
		return fmt.Errorf("waking the outbox relays: %w", err)
	}
	return nil
}
