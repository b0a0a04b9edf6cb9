package billingdata

import (
	"context"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/storage"
)

// Advisory locks of the biller's planning and checks. Three spaces of
// transaction-level advisory locks, each keyed by a hash:
//
//   - pair (tenant, metric, group key, month): what one intent claims
//     (metric is the meter: the metric itself for its implicit meter);
//   - group (Stripe customer, meter event name, billed month): what one
//     Stripe event summary covers;
//   - credit (a billing_credits id): one resend of a dead credit at a
//     time, taken alone.
//
// Callers take them pair first, then group, never the reverse.
const (
	pairLockSpace   int32 = 0x62706169 // "bpai"
	groupLockSpace  int32 = 0x62677270 // "bgrp"
	creditLockSpace int32 = 0x62637264 // "bcrd"
)

// lockPairKey is the pair lock's key of (tenant, metric, groupKey,
// period); the empty group key's is the key of before groups.
func lockPairKey(tenant, metric, groupKey string, period time.Time) int32 {
	if groupKey == "" {
		return lockKey(tenant + "\x00" + metric + "\x00" + period.UTC().Format(time.RFC3339))
	}
	return lockKey(tenant + "\x00" + metric + "\x00" + period.UTC().Format(time.RFC3339) + "\x00" + groupKey)
}

// lockGroupKey is the group lock's key of (customer, eventName, billed).
func lockGroupKey(customer, eventName string, billed time.Time) int32 {
	return lockKey(customer + "\x00" + eventName + "\x00" + billed.UTC().Format(time.RFC3339))
}

// lockQueuePair queues onto b the transaction-level lock of (tenant,
// metric, groupKey, month period); b must be sent on a transaction.
func lockQueuePair(b *pgx.Batch, tenant, metric, groupKey string, period time.Time) {
	b.Queue(`SELECT pg_advisory_xact_lock($1, $2)`, pairLockSpace, lockPairKey(tenant, metric, groupKey, period))
}

// lockQueueGroup queues onto b the transaction-level lock of the Stripe
// group (customer, eventName, billed month); b must be sent on a
// transaction.
func lockQueueGroup(b *pgx.Batch, customer, eventName string, billed time.Time) {
	b.Queue(`SELECT pg_advisory_xact_lock($1, $2)`, groupLockSpace, lockGroupKey(customer, eventName, billed))
}

// LockGroup takes the transaction-level lock of the Stripe group
// (customer, eventName, billed month), waiting for it; q must be a
// transaction, which holds the lock until it ends.
func LockGroup(ctx context.Context, q storage.Executor, customer, eventName string, billed time.Time) error {
	if _, err := q.Exec(ctx, `SELECT pg_advisory_xact_lock($1, $2)`, groupLockSpace, lockGroupKey(customer, eventName, billed)); err != nil {
		return fmt.Errorf("locking Stripe group %s/%s/%s: %w", customer, eventName, billed.UTC().Format("2006-01"), err)
	}
	return nil
}

// LockDeadCredit takes the transaction-level lock of credit id, waiting
// for it, and reads the credit; dead is false when it is no longer dead
// (another resend settled it) or does not exist. q must be a
// transaction, which holds the lock until it ends: two resends of one
// credit never call Stripe at once.
func LockDeadCredit(ctx context.Context, q storage.Executor, id int64) (c Credit, dead bool, err error) {
	if _, err := q.Exec(ctx, `SELECT pg_advisory_xact_lock($1, $2)`, creditLockSpace, int32(id)); err != nil {
		return Credit{}, false, fmt.Errorf("locking credit %d: %w", id, err)
	}
	cs, err := CreditsByID(ctx, q, []int64{id})
	if err != nil || len(cs) == 0 {
		return Credit{}, false, err
	}
	return cs[0], cs[0].Status == "dead", nil
}

// lockKey hashes key into the second half of a two-key advisory lock; a
// collision only makes two unrelated pairs or groups wait for each other.
func lockKey(key string) int32 {
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	return int32(h.Sum32())
}
