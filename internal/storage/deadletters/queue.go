package deadletters

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/record"
	"github.com/usagemeter/metering/internal/storage"
)

// UsageLetter is one usage dead letter as stored: Key and Payload are the
// record's raw bytes, nil when the record's were null.
type UsageLetter struct {
	ID              int64
	Tenant          string
	Error           string
	ErrorClass      string
	SourceTopic     string
	SourcePartition int
	SourceOffset    int64
	Key, Payload    []byte
	// Headers are the record's headers, byte for byte, in order.
	Headers    []record.Header
	FailedAt   time.Time
	Status     string
	ResolvedAt *time.Time
}

// ListUsage returns the usage dead letters with status ("" for all),
// oldest first, at most limit.
func ListUsage(ctx context.Context, q storage.Executor, status string, limit int) ([]UsageLetter, error) {
	rows, err := q.Query(ctx, `SELECT id, tenant, error, error_class, source_topic, source_partition, source_offset,
		msg_key, payload, header_keys, header_values, failed_at, status, resolved_at
		FROM usage_dlq WHERE $1 = '' OR status = $1 ORDER BY id LIMIT $2`, status, limit)
	if err != nil {
		return nil, fmt.Errorf("listing dead letters: %w", err)
	}
	letters, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (UsageLetter, error) {
		var l UsageLetter
		var hkeys, hvals [][]byte
		err := r.Scan(&l.ID, &l.Tenant, &l.Error, &l.ErrorClass, &l.SourceTopic, &l.SourcePartition,
			&l.SourceOffset, &l.Key, &l.Payload, &hkeys, &hvals, &l.FailedAt, &l.Status, &l.ResolvedAt)
		l.Headers = zipHeaders(hkeys, hvals)
		return l, err
	})
	if err != nil {
		return nil, fmt.Errorf("listing dead letters: %w", err)
	}
	return letters, nil
}

// UsagePayload is the key, value and header bytes of one usage dead
// letter.
type UsagePayload struct {
	ID         int64
	Key, Value []byte
	// Headers are the record's headers, in order, byte for byte.
	Headers []record.Header
}

// UsagePayloads returns the key, value and header bytes of the usage dead letters
// ids, in id order, whatever their status (a null value, a tombstone, is
// nil).
func UsagePayloads(ctx context.Context, q storage.Executor, ids []int64) ([]UsagePayload, error) {
	rows, err := q.Query(ctx, `SELECT id, msg_key, payload, header_keys, header_values FROM usage_dlq WHERE id = ANY($1) ORDER BY id`, ids)
	if err != nil {
		return nil, fmt.Errorf("reading dead letters: %w", err)
	}
	ps, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (UsagePayload, error) {
		var p UsagePayload
		var hkeys, hvals [][]byte
		if err := r.Scan(&p.ID, &p.Key, &p.Value, &hkeys, &hvals); err != nil {
			return p, err
		}
		if len(hkeys) != len(hvals) {
			return p, fmt.Errorf("dead letter %d: %d header names for %d values", p.ID, len(hkeys), len(hvals))
		}
		for i := range hkeys {
			p.Headers = append(p.Headers, record.Header{Key: string(hkeys[i]), Value: hvals[i]})
		}
		return p, nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading dead letters: %w", err)
	}
	return ps, nil
}

// zipHeaders pairs the stored header keys and values (parallel arrays;
// a shorter values array leaves the rest empty).
func zipHeaders(keys, values [][]byte) []record.Header {
	if len(keys) == 0 {
		return nil
	}
	hs := make([]record.Header, len(keys))
	for i, k := range keys {
		hs[i].Key = string(k)
		if i < len(values) {
			hs[i].Value = values[i]
		}
	}
	return hs
}
