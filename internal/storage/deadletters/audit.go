package deadletters

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/storage"
)

// Queue names, as recorded in dlq_audit.queue.
const (
	UsageQueue   = "usage"
	BillingQueue = "billing"
	// CreditsQueue is the dead customer credits (billing_credits with
	// status dead), resent by `biller credits resend`.
	CreditsQueue = "credits"
)

// Change is one operator action on a dead-letter queue.
type Change struct {
	// Action is the audited verb ("replay", "discard"); To the new status.
	Action, To string
	// IDs names the records; All takes every waiting record instead.
	IDs []int64
	All bool
	// Actor and Note go to the audit trail; Actor is required.
	Actor, Note string
}

// ErrNoneWaiting is returned when none of the records named by id is
// waiting in the queue. With All, an empty queue is not an error.
var ErrNoneWaiting = errors.New("none of the named records is in the dead-letter queue")

// Mover moves the waiting records of one queue that c names to c.To, in
// q, and returns their ids in id order. The package owning the queue's
// table provides it (MoveUsage here; the billing queue's in billingdata).
type Mover func(ctx context.Context, q storage.Executor, c Change) ([]int64, error)

// Apply moves the waiting records c names with move and audits the action
// in dlq_audit under queue, both in tx, so a record never changes status
// unaudited; an action that moves nothing writes no audit row. It returns
// the ids it moved, in id order.
func Apply(ctx context.Context, tx storage.Executor, queue string, move Mover, c Change) ([]int64, error) {
	if c.Actor == "" {
		return nil, errors.New("an actor is required for the audit trail")
	}
	if !c.All && len(c.IDs) == 0 {
		return nil, errors.New("name the records by id, or use --all")
	}
	moved, err := move(ctx, tx, c)
	if err != nil {
		return nil, fmt.Errorf("%s: moving %s records: %w", c.Action, queue, err)
	}
	if len(moved) == 0 {
		if c.All {
			return nil, nil
		}
		return nil, fmt.Errorf("%s %v: %w", c.Action, c.IDs, ErrNoneWaiting)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO dlq_audit (queue, action, actor, record_ids, note) VALUES ($1, $2, $3, $4, $5)`,
		queue, c.Action, c.Actor, moved, c.Note); err != nil {
		return nil, fmt.Errorf("%s: auditing: %w", c.Action, err)
	}
	return moved, nil
}

// MoveUsage is the usage queue's Mover: pending usage_dlq records to
// c.To, stamping resolved_at.
func MoveUsage(ctx context.Context, q storage.Executor, c Change) ([]int64, error) {
	rows, err := q.Query(ctx, `WITH moved AS (
			UPDATE usage_dlq SET status = $1, resolved_at = now()
			WHERE status = 'pending' AND ($2 OR id = ANY($3)) RETURNING id)
		SELECT id FROM moved ORDER BY id`, c.To, c.All, c.IDs)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[int64])
}
