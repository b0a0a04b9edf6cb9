// Package dlqaudit moves records of a dead-letter queue from one status to
// another on an operator's command and records who did it, for both the
// usage and the billing queues.
//
// Invariant: a status change and its dlq_audit row are written in the
// caller's transaction, so a record never changes status unaudited; an
// action that touches nothing writes no audit row.
package dlqaudit

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Queue describes one dead-letter table. Its fields are SQL identifiers
// and literals fixed in code, never user input.
type Queue struct {
	// Name is the dlq_audit.queue value: "usage" or "billing".
	Name string
	// Table holds the records; Stamp is its column set to now() on change.
	Table, Stamp string
	// Dead is the status of a record waiting in the queue.
	Dead string
}

// Change is one operator action on a queue.
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

// Apply moves the waiting records c names to c.To and audits the action,
// all in tx. It returns the ids it moved, in id order.
func (q Queue) Apply(ctx context.Context, tx pgx.Tx, c Change) ([]int64, error) {
	if c.Actor == "" {
		return nil, errors.New("an actor is required for the audit trail")
	}
	if !c.All && len(c.IDs) == 0 {
		return nil, errors.New("name the records by id, or use --all")
	}
	rows, err := tx.Query(ctx, `WITH moved AS (
			UPDATE `+q.Table+` SET status = $1, `+q.Stamp+` = now()
			WHERE status = $2 AND ($3 OR id = ANY($4)) RETURNING id)
		SELECT id FROM moved ORDER BY id`, c.To, q.Dead, c.All, c.IDs)
	if err != nil {
		return nil, fmt.Errorf("%s: moving %s records: %w", c.Action, q.Name, err)
	}
	moved, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("%s: moving %s records: %w", c.Action, q.Name, err)
	}
	if len(moved) == 0 {
		if c.All {
			return nil, nil
		}
		return nil, fmt.Errorf("%s %v: %w", c.Action, c.IDs, ErrNoneWaiting)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO dlq_audit (queue, action, actor, record_ids, note) VALUES ($1, $2, $3, $4, $5)`,
		q.Name, c.Action, c.Actor, moved, c.Note); err != nil {
		return nil, fmt.Errorf("%s: auditing: %w", c.Action, err)
	}
	return moved, nil
}
