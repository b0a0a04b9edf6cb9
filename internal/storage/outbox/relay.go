package outbox

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/usagemeter/metering/internal/record"
	"github.com/usagemeter/metering/internal/storage"
)

// The relays' round lock: a two-key transaction-level advisory lock
// ("outb", 1).
const (
	relayLockSpace int32 = 0x6f757462
	relayRoundLock int32 = 1
)

// Pending is an outbox row waiting to be published.
type Pending struct {
	ID int64
	// Attempts is how many failed rounds counted against the row so far.
	Attempts int
	// Record is the message: topic, key, value, and headers sorted by name.
	Record record.Record
}

// Failed is a row a round could not publish, as RecordFailures or Park
// left it.
type Failed struct {
	ID    int64
	Topic string
	Key   []byte
	// Bytes is the size of the value.
	Bytes    int
	Attempts int
	// Reason is the error of the last attempt.
	Reason string
}

// LockRound takes the relays' round lock for the transaction tx and
// reports whether it got it; false means another relay is in a round. The
// lock ends with the transaction, so tx must be one.
func LockRound(ctx context.Context, tx storage.Executor) (bool, error) {
	var mine bool
	if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock($1, $2)`, relayLockSpace, relayRoundLock).Scan(&mine); err != nil {
		return false, fmt.Errorf("taking the outbox round lock: %w", err)
	}
	return mine, nil
}

// Eligible locks (FOR UPDATE, until tx ends) and returns up to limit rows
// to send now, in id order: pending, not parked, not waiting for a retry,
// and with no earlier row of their topic and key waiting. Held rows are
// left out in SQL, so that a failing key never fills the batch and hides
// the other keys.
func Eligible(ctx context.Context, tx storage.Executor, limit int) ([]Pending, error) {
	rows, err := tx.Query(ctx, `SELECT o.id, o.topic, o.msg_key, o.msg_value, o.headers, o.attempts
		FROM outbox o
		WHERE o.published_at IS NULL AND o.parked_at IS NULL
		AND NOT EXISTS (SELECT 1 FROM outbox w
			WHERE w.published_at IS NULL AND w.parked_at IS NULL AND w.retry_at > now()
			AND w.topic = o.topic AND w.msg_key IS NOT DISTINCT FROM o.msg_key AND w.id <= o.id)
		ORDER BY o.id LIMIT $1 FOR UPDATE OF o`, limit)
	if err != nil {
		return nil, fmt.Errorf("reading outbox: %w", err)
	}
	defer rows.Close()
	var out []Pending
	for rows.Next() {
		var p Pending
		var headers []byte
		if err := rows.Scan(&p.ID, &p.Record.Topic, &p.Record.Key, &p.Record.Value, &headers, &p.Attempts); err != nil {
			return nil, fmt.Errorf("reading outbox: %w", err)
		}
		var hs map[string]string
		if err := json.Unmarshal(headers, &hs); err != nil {
			return nil, fmt.Errorf("outbox row %d headers: %w", p.ID, err)
		}
		for _, k := range slices.Sorted(maps.Keys(hs)) {
			p.Record.Headers = append(p.Record.Headers, record.Header{Key: k, Value: []byte(hs[k])})
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading outbox: %w", err)
	}
	return out, nil
}

// MarkPublished marks the rows ids published; they are never sent again.
func MarkPublished(ctx context.Context, q storage.Executor, ids []int64) error {
	if _, err := q.Exec(ctx, `UPDATE outbox SET published_at = now() WHERE id = ANY($1)`, ids); err != nil {
		return fmt.Errorf("marking outbox rows published: %w", err)
	}
	return nil
}

// Park sets the row id aside with reason, counting the attempt that failed:
// no round takes it again until Unpark.
func Park(ctx context.Context, q storage.Executor, id int64, reason string) error {
	if _, err := q.Exec(ctx, `UPDATE outbox SET attempts = attempts + 1, last_error = $2, parked_at = now() WHERE id = $1`,
		id, reason); err != nil {
		return fmt.Errorf("parking outbox row %d: %w", id, err)
	}
	return nil
}

// RecordFailures makes each row of ids (reasons[i] the error of ids[i]),
// and so the later rows of its topic and key, wait delay before the next
// attempt. When count is set it also counts a failed attempt and parks the
// rows that reached maxAttempts, which it returns, their Reason saying how
// many attempts failed; rows it did not park are not returned. One
// statement, whatever the number of rows.
func RecordFailures(ctx context.Context, q storage.Executor, ids []int64, reasons []string, delay time.Duration, maxAttempts int, count bool) ([]Failed, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	rows, err := q.Query(ctx, `UPDATE outbox o SET attempts = o.attempts + $5::int, last_error = f.reason,
			retry_at = now() + make_interval(secs => $3),
			parked_at = CASE WHEN $5::int = 1 AND o.attempts + 1 >= $4 THEN now() END
		FROM unnest($1::bigint[], $2::text[]) AS f(id, reason)
		WHERE o.id = f.id
		RETURNING o.id, o.topic, o.msg_key, octet_length(o.msg_value), o.attempts, f.reason, o.parked_at IS NOT NULL`,
		ids, reasons, delay.Seconds(), maxAttempts, relayBoolInt(count))
	if err != nil {
		return nil, fmt.Errorf("recording failed outbox attempts: %w", err)
	}
	defer rows.Close()
	var parked []Failed
	for rows.Next() {
		var f Failed
		var isParked bool
		if err := rows.Scan(&f.ID, &f.Topic, &f.Key, &f.Bytes, &f.Attempts, &f.Reason, &isParked); err != nil {
			return nil, fmt.Errorf("recording failed outbox attempts: %w", err)
		}
		if isParked {
			f.Reason = fmt.Sprintf("failed %d attempts, the last: %s", f.Attempts, f.Reason)
			parked = append(parked, f)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("recording failed outbox attempts: %w", err)
	}
	return parked, nil
}

func relayBoolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Counts returns how many rows wait to be published (parked ones
// excluded) and how many are parked.
func Counts(ctx context.Context, q storage.Executor) (pending, parked int64, err error) {
	if err := q.QueryRow(ctx, `SELECT count(*) FILTER (WHERE parked_at IS NULL), count(*) FILTER (WHERE parked_at IS NOT NULL)
		FROM outbox WHERE published_at IS NULL`).Scan(&pending, &parked); err != nil {
		return 0, 0, fmt.Errorf("counting outbox rows: %w", err)
	}
	return pending, parked, nil
}

// Prune deletes the rows published more than keep ago and returns how
// many. Pending and parked rows are never deleted.
func Prune(ctx context.Context, q storage.Executor, keep time.Duration) (int64, error) {
	tag, err := q.Exec(ctx, `DELETE FROM outbox WHERE published_at < now() - make_interval(secs => $1)`, keep.Seconds())
	if err != nil {
		return 0, fmt.Errorf("pruning outbox: %w", err)
	}
	return tag.RowsAffected(), nil
}

// Listen subscribes the connection conn to Channel; conn's
// WaitForNotification then returns when a transaction that enqueued (or
// woke) commits. Unlisten ends it.
func Listen(ctx context.Context, conn storage.Executor) error {
	if _, err := conn.Exec(ctx, "LISTEN "+Channel); err != nil {
		return fmt.Errorf("listening on %s: %w", Channel, err)
	}
	return nil
}

// Unlisten ends Listen on conn.
func Unlisten(ctx context.Context, conn storage.Executor) error {
	if _, err := conn.Exec(ctx, "UNLISTEN "+Channel); err != nil {
		return fmt.Errorf("unlistening on %s: %w", Channel, err)
	}
	return nil
}
