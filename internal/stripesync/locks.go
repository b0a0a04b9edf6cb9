package stripesync

import (
	"context"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/jackc/pgx/v5"
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
const (
	pairLockSpace  int32 = 0x62706169 // "bpai"
	groupLockSpace int32 = 0x62677270 // "bgrp"
)

func pairKey(tenant, metric string, period time.Time) int32 {
	return lockKey(tenant + "\x00" + metric + "\x00" + period.UTC().Format(time.RFC3339))
}

// group is what one Stripe event summary covers.
type group struct {
	customer, eventName string
	billed              time.Time // start of the billed month
}

func (g group) String() string {
	return fmt.Sprintf("%s/%s/%s", g.customer, g.eventName, g.billed.UTC().Format("2006-01"))
}

func (g group) key() int32 {
	return lockKey(g.customer + "\x00" + g.eventName + "\x00" + g.billed.UTC().Format(time.RFC3339))
}

func lockGroup(ctx context.Context, tx pgx.Tx, g group) error {
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, $2)`, groupLockSpace, g.key()); err != nil {
		return fmt.Errorf("locking Stripe group %s: %w", g, err)
	}
	return nil
}

// lockKey hashes key into the second half of a two-key advisory lock; a
// collision only makes two unrelated pairs or groups wait for each other.
func lockKey(key string) int32 {
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	return int32(h.Sum32())
}
