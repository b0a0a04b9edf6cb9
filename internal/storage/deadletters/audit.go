package deadletters

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"strconv"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/storage"
	"github.com/usagemeter/metering/internal/storage/auditlog"
)

// Queue names.
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
	// Actor and Note go to the audit log; Actor is required.
	Actor, Note string
}

// queueAudit is how a queue's actions are audited: the action's prefix,
// the target's prefix (before the record id) and the status a record
// leaves.
var queueAudit = map[string]struct{ action, target, from string }{
	UsageQueue:   {"dlq.usage.", "usage_dlq:", "pending"},
	BillingQueue: {"dlq.billing.", "billing_push:", "dead"},
	CreditsQueue: {"credits.", "billing_credit:", "dead"},
}

// AuditTarget is the audit_log target of record id of queue, such as
// usage_dlq:42.
func AuditTarget(queue string, id int64) string {
	return queueAudit[queue].target + strconv.FormatInt(id, 10)
}

// ErrNoneWaiting is returned when none of the records named by id is
// waiting in the queue. With All, an empty queue is not an error.
var ErrNoneWaiting = errors.New("none of the named records is in the dead-letter queue")

// Mover moves the waiting records of one queue that c names to c.To, in
// q, and returns their ids in id order. The package owning the queue's
// table provides it (MoveUsage here; the billing queue's in billingdata).
type Mover func(ctx context.Context, q storage.Executor, c Change) ([]int64, error)

// Apply moves the waiting records c names with move and appends one
// audit_log row per record moved (action AuditAction, target AuditTarget,
// before and after its status, c's actor and note), all in tx, so a record
// never changes status unaudited; an action that moves nothing writes no
// audit row. It returns the ids it moved, in id order.
func Apply(ctx context.Context, tx storage.Executor, queue string, move Mover, c Change) ([]int64, error) {
	qa, ok := queueAudit[queue]
	if !ok {
		return nil, fmt.Errorf("no dead-letter queue %q", queue)
	}
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
	before := json.RawMessage(`{"status":` + strconv.Quote(qa.from) + `}`)
	after := json.RawMessage(`{"status":` + strconv.Quote(c.To) + `}`)
	if c.To == qa.from { // picked to act on (a resend), not moved
		after = json.RawMessage(`{"status":` + strconv.Quote(c.To) + `,"` + c.Action + `":true}`)
	}
	entries := make([]auditlog.Entry, len(moved))
	for i, id := range moved {
		entries[i] = auditlog.Entry{Actor: c.Actor, Action: qa.action + c.Action, Target: AuditTarget(queue, id),
			Before: before, After: after, Note: c.Note}
	}
	if err := auditlog.AppendAll(ctx, tx, entries); err != nil {
		return nil, fmt.Errorf("%s: %w", c.Action, err)
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
