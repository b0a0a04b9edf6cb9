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
// dlq_audit (queue credits) before any call. A credit created more than
// DedupHorizon ago is first looked for at Stripe (CreditFinder), so one
// whose first call did land is marked sent without a second. A credit
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
	credits, err := billingdata.CreditsByID(ctx, b.pool, picked)
	if err != nil {
		return CreditResend{IDs: picked}, err
	}
	res := CreditResend{IDs: picked}
	for _, c := range credits {
		if c.Status != "dead" {
			continue // settled by another resend meanwhile
		}
		sent, err := b.sendCredit(ctx, cr, c)
		if err != nil {
			return res, fmt.Errorf("resending credit %d: %w", c.ID, err)
		}
		if sent {
			res.Sent++
			continue
		}
		after, err := billingdata.CreditsByID(ctx, b.pool, []int64{c.ID})
		if err != nil {
			return res, err
		}
		if len(after) == 1 && after[0].Attempts > c.Attempts {
			res.Dead++ // refused for good again
		} else {
			res.Waiting++
		}
	}
	return res, nil
}
