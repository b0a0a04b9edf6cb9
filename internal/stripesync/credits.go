package stripesync

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/price"
	"github.com/usagemeter/metering/internal/storage/billingdata"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/stripeapi"
)

// Crediter is the Stripe call that credits a customer: one customer
// balance transaction of amount (minor units, negative for a credit)
// under an idempotency key, returning its id. stripeapi.Client is one; a
// Stripe without it gives no credits (the decreases wait, and reconcile
// shows them as drift).
type Crediter interface {
	CreditCustomer(ctx context.Context, customer string, amount int64, currency, description, idempotencyKey string) (string, error)
}

// CreditFinder finds the balance transaction an earlier call made under
// an idempotency key (stripeapi.Client is one): a credit intent older
// than Stripe's 24-hour memory of keys is looked for before it is sent
// again, so even then it credits once.
type CreditFinder interface {
	FindCredit(ctx context.Context, customer, idempotencyKey string) (id string, found bool, err error)
}

// CreditKey is the idempotency key of the credit that settles (tenant,
// metric, group, period) from claimed down to metered, generation counting
// the pair's earlier cancellations and credits: the same decrease is the
// same key whichever biller plans it and however often.
func CreditKey(tenant, metric, groupKey string, period time.Time, claimed, metered string, generation int) string {
	h := sha256.Sum256(fmt.Appendf(nil, "credit\x00%s\x00%s\x00%s\x00%s\x00%s\x00%s\x00%d",
		tenant, metric, groupKey, period.UTC().Format(time.RFC3339), claimed, metered, generation))
	return "mc_" + hex.EncodeToString(h[:24])
}

// CreditAmount is what a decrease from claimed to metered is worth under
// p, in the minor unit (cents) of its currency, as a credit (<= 0): the
// price of claimed minus the price of metered, rounded half up to cents
// once (for per_unit, the decrease times the unit price). A nil price is
// worth 0.
func CreditAmount(p *price.Price, claimed, metered *big.Int) (int64, error) {
	if p == nil {
		return 0, nil
	}
	rates, err := p.Rates()
	if err != nil {
		return 0, fmt.Errorf("the quota's price: %w", err)
	}
	diff := new(big.Rat).Sub(rates.Amount(claimed), rates.Amount(metered))
	cents := new(big.Rat).Mul(price.RoundCents(diff), big.NewRat(100, 1))
	if !cents.IsInt() || !cents.Num().IsInt64() {
		return 0, fmt.Errorf("a credit of %s cents is out of range", cents.FloatString(2))
	}
	return -cents.Num().Int64(), nil
}

// creditDecreases gives a customer credit for every month whose claimed
// total exceeds its metered one when cancelling pushes can no longer take
// the excess back (FindOverClaimed: the latest push is older than
// DedupHorizon, or the invoice is final), then sends every credit
// intent. It returns how many credits it sent. Each credit is recorded,
// under the pair's lock after re-reading its totals, as an intent with a
// deterministic idempotency key before the call and marked after it, so a
// crash or a retry never credits twice.
func (b *Biller) creditDecreases(ctx context.Context) (int, error) {
	cr, ok := b.stripe.(Crediter)
	if !ok {
		return 0, nil
	}
	now := b.cfg.Now().UTC()
	periods, err := b.periods(ctx)
	if err != nil {
		return 0, err
	}
	rows, err := billingdata.FindOverClaimed(ctx, b.pool, oldestPeriod(periods, now), now.Add(-DedupHorizon))
	if err != nil {
		return 0, err
	}
	for _, o := range rows {
		if err := b.planCredit(ctx, o); err != nil {
			return 0, fmt.Errorf("planning the credit of %s/%s %s: %w", o.Tenant, o.Metric, o.Period.Format("2006-01"), err)
		}
	}
	return b.sendCredits(ctx, cr, false)
}

// planCredit records the credit intent of o under its pair's lock.
func (b *Biller) planCredit(ctx context.Context, o billingdata.OverClaimed) error {
	return pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
		totals, err := billingdata.LockAndReadPair(ctx, tx, billingdata.Pair{Tenant: o.Tenant, Metric: o.Metric, GroupKey: o.GroupKey, Period: o.Period,
			Customer: o.Customer, EventName: o.EventName, Billed: o.Billed}, !b.noPlanningLocks)
		if err != nil {
			return err
		}
		m, c := usagedata.NumericInt(totals.Metered), usagedata.NumericInt(totals.Claimed)
		if c.Cmp(m) <= 0 {
			return nil // settled meanwhile
		}
		amount, err := CreditAmount(o.Price, c, m)
		if err != nil {
			return err
		}
		credit := billingdata.Credit{Tenant: o.Tenant, Metric: o.Metric, GroupKey: o.GroupKey, Period: o.Period, Customer: o.Customer,
			Claimed: c.String(), Metered: m.String(), Quantity: new(big.Int).Sub(c, m).String(), Amount: amount, Currency: o.Currency,
			IdempotencyKey: CreditKey(o.Tenant, o.Metric, o.GroupKey, o.Period, c.String(), m.String(), totals.Cancelled)}
		if amount == 0 {
			credit.Status = "none"
			credit.LastError = "nothing to credit: the quota has no price, or the decrease costs nothing under it"
		}
		_, err = billingdata.InsertCredit(ctx, tx, credit)
		return err
	})
}

// SendCredits sends every credit intent (and, with dead, every dead
// credit) and returns how many were sent.
func (b *Biller) SendCredits(ctx context.Context, dead bool) (int, error) {
	cr, ok := b.stripe.(Crediter)
	if !ok {
		return 0, errors.New("this Stripe client cannot create customer balance transactions")
	}
	return b.sendCredits(ctx, cr, dead)
}

func (b *Biller) sendCredits(ctx context.Context, cr Crediter, dead bool) (int, error) {
	open, err := billingdata.OpenCredits(ctx, b.pool, dead)
	if err != nil {
		return 0, err
	}
	sent := 0
	for _, c := range open {
		ok, err := b.sendCredit(ctx, cr, c)
		if err != nil {
			return sent, err
		}
		if ok {
			sent++
		}
	}
	return sent, nil
}

// sendCredit makes c's balance transaction, with retries, and records the
// outcome. An error that is not Stripe's (the call's fate unknown, or
// Postgres failing) leaves c an intent: the next round sends it again
// under the same idempotency key.
func (b *Biller) sendCredit(ctx context.Context, cr Crediter, c billingdata.Credit) (bool, error) {
	attempts := 0
	var txn string
	if f, ok := cr.(CreditFinder); ok && c.Created.Before(b.cfg.Now().Add(-DedupHorizon)) {
		// Stripe no longer remembers the key: ask whether the first call
		// landed before making another.
		var found bool
		err := b.call(ctx, func() error {
			var err error
			txn, found, err = f.FindCredit(ctx, c.Customer, c.IdempotencyKey)
			return err
		})
		if err != nil {
			b.cfg.Logger.WarnContext(ctx, "old credit not checked yet", "key", c.IdempotencyKey, "err", err)
			return false, nil
		}
		if found {
			return true, billingdata.MarkCreditSent(context.WithoutCancel(ctx), b.pool, c.ID, c.Status, txn, b.cfg.Now().UTC(), 0)
		}
	}
	desc := fmt.Sprintf("usage adjustment: %s %s%s, %s units", c.Period.Format("2006-01"), c.Metric, c.GroupKey, c.Quantity)
	err := b.call(ctx, func() error {
		attempts++
		var err error
		txn, err = cr.CreditCustomer(ctx, c.Customer, c.Amount, c.Currency, desc, c.IdempotencyKey)
		return err
	})
	var se *stripeapi.Error
	if err != nil && !errors.As(err, &se) {
		return false, fmt.Errorf("crediting %s for %s/%s: %w", c.Customer, c.Tenant, c.Metric, err)
	}
	if err != nil && se.Retriable {
		// Stripe kept failing: the credit stays an intent for the next round.
		b.cfg.Logger.WarnContext(ctx, "credit not sent yet", "tenant", c.Tenant, "metric", c.Metric, "key", c.IdempotencyKey, "err", err)
		return false, nil
	}
	out := context.WithoutCancel(ctx)
	if err != nil {
		b.cfg.Logger.WarnContext(ctx, "credit dead-lettered", "tenant", c.Tenant, "metric", c.Metric, "key", c.IdempotencyKey, "err", err)
		return false, billingdata.MarkCreditDead(out, b.pool, c.ID, c.Status, attempts, err.Error())
	}
	return true, billingdata.MarkCreditSent(out, b.pool, c.ID, c.Status, txn, b.cfg.Now().UTC(), attempts)
}
