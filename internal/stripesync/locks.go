package stripesync

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/storage/billingdata"
)

// Replicas. Several billers may run against one database (replicas, a
// deposed leader whose loop has not stopped yet, `biller dlq replay` from a
// shell), so every decision that claims usage or interprets Stripe's
// summaries is taken under a transaction-level advisory lock, and every
// change of a push's status is conditional on the status it was read with:
//
//   - pair lock (tenant, metric, month): planning re-reads the claimed
//     total under it, so two billers cannot claim the same delta twice;
//   - group lock (Stripe customer, meter event name, billed month), what one
//     Stripe summary covers: planning a push into the group, cancelling a
//     push of the group and checking the group's summary (landed.go) take
//     it, so the summary is never read while the ledger of the group moves.
//
// Locks are always taken pair first, then group, never the reverse, so
// two billers cannot deadlock. Sends need no lock: a push is sent under
// its deterministic identifier, which Stripe dedups for 24 hours, and its
// sent_at is stamped before each call (see landed.go for why).
//
// The locks themselves, their spaces and keys, are billingdata's
// (LockAndReadPair, LockGroup).

// group is what one Stripe event summary covers.
type group struct {
	customer, eventName string
	billed              time.Time // start of the billed month
}

func (g group) String() string {
	return fmt.Sprintf("%s/%s/%s", g.customer, g.eventName, g.billed.UTC().Format("2006-01"))
}

// lockGroup takes g's lock in tx, until tx ends.
func lockGroup(ctx context.Context, tx pgx.Tx, g group) error {
	return billingdata.LockGroup(ctx, tx, g.customer, g.eventName, g.billed)
}
