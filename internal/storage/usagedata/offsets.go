package usagedata

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/storage"
)

// Offsets returns the stored next offset of every partition of a group's
// topic.
func Offsets(ctx context.Context, q storage.Executor, group, topic string) (map[int]int64, error) {
	return offsetsRead(ctx, q, "reading stored offsets", `SELECT partition, next_offset FROM consumer_offsets
		WHERE consumer_group = $1 AND topic = $2`, group, topic)
}

// offsetsRead runs a (partition, next_offset) query; what names it in
// errors.
func offsetsRead(ctx context.Context, q storage.Executor, what, sql string, args ...any) (map[int]int64, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer rows.Close()
	out := map[int]int64{}
	for rows.Next() {
		var p int
		var next int64
		if err := rows.Scan(&p, &next); err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		out[p] = next
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return out, nil
}

// NextOffset returns where a partition resumes: its stored offset, or -1
// when the group has never committed one.
func NextOffset(ctx context.Context, q storage.Executor, group, topic string, partition int) (int64, error) {
	var next int64
	err := q.QueryRow(ctx, `SELECT next_offset FROM consumer_offsets
		WHERE consumer_group = $1 AND topic = $2 AND partition = $3`, group, topic, partition).Scan(&next)
	if errors.Is(err, pgx.ErrNoRows) {
		return -1, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading offset of partition %d: %w", partition, err)
	}
	return next, nil
}
