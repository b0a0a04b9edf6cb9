package stripesync

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/storage/billingdata"
	"github.com/usagemeter/metering/internal/storage/deadletters"
)

// Credit is one customer credit (billing_credits) as operators see it.
type Credit = billingdata.Credit

// CreditStatuses are the statuses `biller credits list --status` takes:
// open (intents not sent yet), dead, sent, none (nothing to send) and
// all.
var CreditStatuses = []string{"open", "dead", "sent", "none", "all"}

// Credits lists the credits with status (one of CreditStatuses; open is
// the intents), oldest first, at most limit.
func (b *Biller) Credits(ctx context.Context, status string, limit int) ([]Credit, error) {
	var statuses []string
	switch status {
	case "open":
		statuses = []string{"intent"}
	case "dead", "sent", "none":
		statuses = []string{status}
	case "all":
	default:
		return nil, fmt.Errorf("credit status %q: want one of open, dead, sent, none, all", status)
	}
	return billingdata.ListCredits(ctx, b.pool, statuses, limit)
}

// CreditResend is what a resend of dead credits did.
type CreditResend struct {
	// IDs are the dead credits resent, in id order.
	IDs []int64
	// Sent were credited (or found already credited); Dead were refused
	// again for good; Waiting failed for now (Stripe kept failing, or an
	// old credit could not be checked yet): they stay dead, to resend
	// later.
	Sent, Dead, Waiting int
}

// ResendCredits sends the dead credits ids again (every dead credit with
// all), under their own idempotency keys, and audits the action in
// audit_log (credits.resend, one row per credit) before any call. Each is sent under its own
// lock (billingdata.LockDeadCredit), so two resends never call Stripe for
// one credit at once. A credit created more than DedupHorizon ago is
// first looked for at Stripe (CreditFinder), so one whose first call did
// land is marked sent without a second. A credit
// stays dead until Stripe's answer marks it sent; the sync loop sends
// intents only, so it never sends a dead credit meanwhile. Naming no
// dead credit is ErrNotDead; all with none dead does nothing.
func (b *Biller) ResendCredits(ctx context.Context, ids []int64, all bool, actor, note string) (CreditResend, error) {
	cr, ok := b.stripe.(Crediter)
	if !ok {
		return CreditResend{}, errors.New("this Stripe client cannot create customer balance transactions")
	}
	var picked []int64
	err := pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
		var err error
		picked, err = deadletters.Apply(ctx, tx, deadletters.CreditsQueue, billingdata.PickDeadCredits,
			deadletters.Change{Action: "resend", To: "dead", IDs: ids, All: all, Actor: actor, Note: note})
		return err
	})
	if err != nil || len(picked) == 0 {
		return CreditResend{}, err
	}
	res := CreditResend{IDs: picked}
	for _, id := range picked {
		if err := b.resendCredit(ctx, cr, id, &res); err != nil {
			return res, fmt.Errorf("resending credit %d: %w", id, err)
		}
	}
	return res, nil
}

// resendCredit sends dead credit id again under its lock (two resends of
// it never call Stripe at once; one settled meanwhile is skipped) and
// counts the outcome in res.
func (b *Biller) resendCredit(ctx context.Context, cr Crediter, id int64, res *CreditResend) error {
	return pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
		c, dead, err := billingdata.LockDeadCredit(ctx, tx, id)
		if err != nil || !dead {
			return err
		}
		// The outcome is recorded on the pool, outside the lock's
		// transaction, as every send records it.
		sent, err := b.sendCredit(ctx, cr, c)
		if err != nil {
			return err
		}
		if sent {
			res.Sent++
			return nil
		}
		after, err := billingdata.CreditsByID(ctx, b.pool, []int64{id})
		if err != nil {
			return err
		}
		if len(after) == 1 && after[0].Attempts > c.Attempts {
			res.Dead++ // refused for good again
		} else {
			res.Waiting++
		}
		return nil
	})
}
