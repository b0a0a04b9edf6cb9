package billingdata

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/storage"
	"github.com/usagemeter/metering/internal/storage/deadletters"
)

// MoveDead is the billing queue's deadletters.Mover: dead pushes to c.To
// ("intent" to replay, "discarded"), stamping updated_at.
func MoveDead(ctx context.Context, q storage.Executor, c deadletters.Change) ([]int64, error) {
	rows, err := q.Query(ctx, `WITH moved AS (
			UPDATE billing_pushes SET status = $1, updated_at = now()
			WHERE status = 'dead' AND ($2 OR id = ANY($3)) RETURNING id)
		SELECT id FROM moved ORDER BY id`, c.To, c.All, c.IDs)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[int64])
}
