package billingdata

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/storage"
	"github.com/usagemeter/metering/internal/storage/auditlog"
)

// StatusHeld is a push held for an operator's approval (migration 0031):
// it is claimed, so no sync plans its delta again, but it is not sent
// until approved (back to intent, same identifier) or rejected
// (discarded). Later intents of its tenant, meter, group and period wait
// behind it (notBehindHeld).
const StatusHeld = "held"

// Hold audit actions.
const (
	AuditHoldApprove = "billing.hold.approve"
	AuditHoldReject  = "billing.hold.reject"
)

// notBehindHeld is the SQL condition, on billing_pushes p, that no held
// push of p's tenant, meter, group and period precedes p: an intent
// planned after a held push waits for its decision.
const notBehindHeld = `NOT EXISTS (SELECT 1 FROM billing_pushes h WHERE h.status = 'held' AND h.tenant = p.tenant AND h.metric = p.metric
	AND h.group_key = p.group_key AND h.period_start = p.period_start AND h.id < p.id)`

// HoldHistory is what deciding a hold for one (tenant, meter, group,
// period) needs: the deltas of the key's latest pushes (sent, intent or
// dead, of any period, newest first, at most the window asked for) and
// whether the period has a held push already.
type HoldHistory struct {
	Deltas []string // decimal integers
	HeldID int64    // 0 when none is held
}

// ReadHoldHistory reads the hold history of (tenant, metric, groupKey,
// period) over the last window pushes but the one with identifier (the
// intent being judged); q is the planning transaction.
func ReadHoldHistory(ctx context.Context, q storage.Executor, tenant, metric, groupKey string, period time.Time, window int, identifier string) (HoldHistory, error) {
	var h HoldHistory
	b := &pgx.Batch{}
	b.Queue(`SELECT delta::text FROM billing_pushes WHERE tenant = $1 AND metric = $2 AND group_key = $3 AND status IN ('sent', 'intent', 'dead')
			AND identifier <> $5 ORDER BY id DESC LIMIT $4`, tenant, metric, groupKey, window, identifier).Query(func(rows pgx.Rows) error {
		var err error
		h.Deltas, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	b.Queue(`SELECT coalesce(min(id), 0) FROM billing_pushes WHERE tenant = $1 AND metric = $2 AND group_key = $3 AND period_start = $4 AND status = 'held'`,
		tenant, metric, groupKey, period).QueryRow(func(row pgx.Row) error {
		return row.Scan(&h.HeldID)
	})
	if err := q.SendBatch(ctx, b).Close(); err != nil {
		return HoldHistory{}, err
	}
	return h, nil
}

// Hold marks the intent identifier, just inserted in the transaction q, as held
// with reason.
func Hold(ctx context.Context, q storage.Executor, identifier, reason string) error {
	_, err := q.Exec(ctx, `UPDATE billing_pushes SET status = 'held', hold_reason = $2, updated_at = now() WHERE identifier = $1 AND status = 'intent'`,
		identifier, reason)
	return err
}

// HeldPush is a held push as operators see it.
type HeldPush struct {
	ID         int64     `json:"id"`
	Tenant     string    `json:"tenant"`
	Metric     string    `json:"meter"`
	GroupKey   string    `json:"group_key"`
	Period     string    `json:"period"`
	Value      string    `json:"value"`
	Cumulative string    `json:"cumulative_total"`
	Identifier string    `json:"identifier"`
	EventName  string    `json:"event_name"`
	Customer   string    `json:"stripe_customer_id"`
	Status     string    `json:"status"`
	Reason     string    `json:"reason"`
	Note       string    `json:"note"`
	HeldSince  time.Time `json:"held_since"`
	// Waiting counts the intents of the same period waiting behind it.
	Waiting int `json:"waiting"`
}

const heldColumns = `p.id, p.tenant, p.metric, p.group_key, to_char(p.period_start AT TIME ZONE 'UTC', 'YYYY-MM'), p.delta::text, p.cumulative_total::text,
	p.identifier, p.event_name, p.stripe_customer_id, p.status, p.hold_reason, p.hold_note, p.created_at,
	(SELECT count(*) FROM billing_pushes w WHERE w.status = 'intent' AND w.tenant = p.tenant AND w.metric = p.metric AND w.group_key = p.group_key
		AND w.period_start = p.period_start AND w.id > p.id)`

func heldScan(r pgx.CollectableRow) (HeldPush, error) {
	var h HeldPush
	err := r.Scan(&h.ID, &h.Tenant, &h.Metric, &h.GroupKey, &h.Period, &h.Value, &h.Cumulative, &h.Identifier, &h.EventName, &h.Customer,
		&h.Status, &h.Reason, &h.Note, &h.HeldSince, &h.Waiting)
	return h, err
}

// HeldPushes lists the held pushes, oldest first.
func HeldPushes(ctx context.Context, q storage.Executor) ([]HeldPush, error) {
	rows, err := q.Query(ctx, `SELECT `+heldColumns+` FROM billing_pushes p WHERE p.status = 'held' ORDER BY p.id`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, heldScan)
}

// HeldPushByID reads push id as the holds show it, whatever its status,
// or returns ErrNoPush.
func HeldPushByID(ctx context.Context, q storage.Executor, id int64) (HeldPush, error) {
	rows, err := q.Query(ctx, `SELECT `+heldColumns+` FROM billing_pushes p WHERE p.id = $1`, id)
	if err != nil {
		return HeldPush{}, err
	}
	h, err := pgx.CollectExactlyOneRow(rows, heldScan)
	if errors.Is(err, pgx.ErrNoRows) {
		return HeldPush{}, ErrNoPush
	}
	return h, err
}

// ErrNotHeld is returned by DecideHold for a push that is not held.
var ErrNotHeld = errors.New("the push is not held")

// HoldTarget is the audit_log target of push id.
func HoldTarget(id int64) string { return "billing_push:" + strconv.FormatInt(id, 10) }

// DecideHold moves the held push id to to (StatusIntent to approve,
// StatusDiscarded to reject), keeping note, and audits it (action, actor,
// note) in q, which must be a transaction. It returns ErrNoPush or
// ErrNotHeld when the push does not exist or is not held.
func DecideHold(ctx context.Context, q storage.Executor, id int64, to, action, actor, note string) error {
	tag, err := q.Exec(ctx, `UPDATE billing_pushes SET status = $2, hold_note = $3, updated_at = now() WHERE id = $1 AND status = 'held'`, id, to, note)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		var status string
		err := q.QueryRow(ctx, `SELECT status FROM billing_pushes WHERE id = $1`, id).Scan(&status)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrNoPush
		}
		if err != nil {
			return err
		}
		return ErrNotHeld
	}
	before, _ := json.Marshal(map[string]string{"status": StatusHeld})
	after, _ := json.Marshal(map[string]string{"status": to})
	_, err = auditlog.Append(ctx, q, auditlog.Entry{Actor: actor, Action: action, Target: HoldTarget(id), Before: before, After: after, Note: note})
	return err
}
