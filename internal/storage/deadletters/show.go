package deadletters

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/storage"
)

// ErrNoLetter is returned by UsageLetterByID for an id no usage dead
// letter has.
var ErrNoLetter = errors.New("no such dead letter")

// UsageLetterByID returns the usage dead letter id, whatever its status,
// or ErrNoLetter.
func UsageLetterByID(ctx context.Context, q storage.Executor, id int64) (UsageLetter, error) {
	var l UsageLetter
	var hkeys, hvals [][]byte
	err := q.QueryRow(ctx, `SELECT id, tenant, error, error_class, source_topic, source_partition, source_offset,
		msg_key, payload, header_keys, header_values, failed_at, status, resolved_at
		FROM usage_dlq WHERE id = $1`, id).Scan(&l.ID, &l.Tenant, &l.Error, &l.ErrorClass, &l.SourceTopic, &l.SourcePartition,
		&l.SourceOffset, &l.Key, &l.Payload, &hkeys, &hvals, &l.FailedAt, &l.Status, &l.ResolvedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return UsageLetter{}, fmt.Errorf("dead letter %d: %w", id, ErrNoLetter)
	}
	if err != nil {
		return UsageLetter{}, fmt.Errorf("reading dead letter %d: %w", id, err)
	}
	l.Headers = zipHeaders(hkeys, hvals)
	return l, nil
}
