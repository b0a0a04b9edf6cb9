package stripesync

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/storage/billingdata"
	"github.com/usagemeter/metering/internal/storage/deadletters"
)

// DeadPush is a push in the billing dead-letter queue.
type DeadPush = billingdata.DeadPush

// DeadLetters lists the pushes waiting in the billing DLQ, oldest first.
func (b *Biller) DeadLetters(ctx context.Context) ([]DeadPush, error) {
	ds, err := billingdata.DeadPushes(ctx, b.pool)
	if err != nil {
		return nil, fmt.Errorf("listing the billing DLQ: %w", err)
	}
	return ds, nil
}

// ErrNotDead is returned for a push that is not in the DLQ.
var ErrNotDead = deadletters.ErrNoneWaiting

// DeadLetter returns one push of the DLQ (or one that left it).
func (b *Biller) DeadLetter(ctx context.Context, id int64) (DeadPush, error) {
	d, err := billingdata.DeadPushByID(ctx, b.pool, id)
	if errors.Is(err, billingdata.ErrNoPush) {
		return DeadPush{}, fmt.Errorf("push %d: %w", id, ErrNotDead)
	}
	if err != nil {
		return DeadPush{}, fmt.Errorf("reading push %d: %w", id, err)
	}
	return d, nil
}

// Replay re-sends the dead pushes ids (every one with all) and audits it
// (dlq.billing.replay, one audit_log row per push).
// A push created less than DedupHorizon ago goes out with its original
// identifier, so one that had in fact reached Stripe comes back as a
// duplicate and counts nothing more. An older one is first checked
// against Stripe's summary (landed.go): marked sent if it had arrived,
// otherwise only its shortfall is sent, under a new identifier; if its
// group had calls within SummaryLag it waits as an intent for the next
// sync.
func (b *Biller) Replay(ctx context.Context, ids []int64, all bool, actor string) (SendResult, error) {
	return b.ReplayWithNote(ctx, ids, all, actor, "")
}

// ReplayWithNote is Replay with why, kept as the note of each push's
// audit_log row (dlq.billing.replay).
func (b *Biller) ReplayWithNote(ctx context.Context, ids []int64, all bool, actor, note string) (SendResult, error) {
	picked, err := b.resolveDead(ctx, ids, all, "replay", actor, note, "intent")
	if err != nil || len(picked) == 0 {
		return SendResult{}, err
	}
	return b.send(ctx, nil, intentsByID(picked))
}

// Discard closes dead pushes without sending them: their usage stays
// claimed (it will not be re-sent) and the reconciliation shows it as
// drift for finance. It is audited (dlq.billing.discard, one audit_log
// row per push).
func (b *Biller) Discard(ctx context.Context, ids []int64, actor, note string) (int, error) {
	picked, err := b.resolveDead(ctx, ids, false, "discard", actor, note, "discarded")
	return len(picked), err
}

func (b *Biller) resolveDead(ctx context.Context, ids []int64, all bool, action, actor, note, status string) ([]int64, error) {
	var picked []int64
	err := pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
		var err error
		picked, err = deadletters.Apply(ctx, tx, deadletters.BillingQueue, billingdata.MoveDead, deadletters.Change{Action: action, To: status, IDs: ids, All: all, Actor: actor, Note: note})
		return err
	})
	return picked, err
}
