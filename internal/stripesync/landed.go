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

	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/billingdata"
	"github.com/usagemeter/metering/internal/storage/usagedata"
)

// Re-sending after Stripe forgot.
//
// A push is idempotent at Stripe only while Stripe remembers its
// identifier (and its Idempotency-Key): about 24 hours from the first
// time Stripe received it. A push that stayed open longer than that (a
// dead letter replayed days later, an intent left by a biller that was
// down for a day) may have reached Stripe on an attempt whose answer was
// lost; sending its identifier again would then count it twice.
//
// So a push created more than DedupHorizon (23 hours, an hour of margin)
// ago is never sent again as it is. Its group — every push with the same
// Stripe customer, meter event name and billed month, which is exactly
// what one Stripe event summary covers — is checked first, under the
// group's lock:
//
//	K = pushes of the group recorded as sent
//	O = pushes of the group still open (intents and dead letters), oldest first
//	S = Stripe's summary of the group's month
//	L = S - K, how much of O reached Stripe
//
// L ≥ sum(O): every open push landed; they are marked sent, with a note.
// L ≤ 0: none landed; each is cancelled in the ledger and replaced by a
// new push for the same amount under a new deterministic identifier.
// Otherwise L is attributed to the oldest open pushes first; a push fully
// covered is marked sent, the others are cancelled and replaced: by a sent
// row for the part that landed and a new push for the missing part. In
// every case the claimed total of each (tenant, metric, month) stays the
// same and Stripe receives exactly sum(O) - L more: the shortfall.
//
// Dead letters of the group are settled with it (they leave the DLQ as
// landed, or are replaced by a shortfall push that is sent at once): the
// summary cannot tell which open push of a group arrived, only how much.
//
// The summary can be trusted only when nothing of the group is in flight
// or still being aggregated: sent_at is stamped before every call to
// Stripe (and again on success), so the check waits until no push of the
// group was sent or cancelled within SummaryLag. Meanwhile new pushes of
// the group are held back (they stay intents and are settled by the
// check), or a customer with steady usage would keep its group busy for
// ever. A call that starts after
// the check finds its push no longer open (its status is read under the
// row lock the check holds) and does not happen. Planning into the group
// takes the group lock, so no push is added while the check runs.
//
// Limits: a discarded push that had in fact reached Stripe is taken as
// absent (the shortfall then bills it again: discard only pushes that
// failed permanently); Stripe events sent by anything but this biller for
// the same customer and meter make L wrong, as they make the
// reconciliation show drift.

// DedupHorizon is how long after a push's creation it may be re-sent under
// its own identifier: Stripe remembers identifiers for about 24 hours.
const DedupHorizon = 23 * time.Hour

// SendResult counts what one round of sending did.
type SendResult struct {
	// Sent were accepted by Stripe (or found there already).
	Sent int
	// Dead were dead-lettered.
	Dead int
	// Landed were open pushes older than DedupHorizon that Stripe's
	// summary showed had arrived: marked sent without a call.
	Landed int
	// Replaced were open pushes older than DedupHorizon that had not (all)
	// arrived: cancelled in the ledger, their shortfall sent as new pushes.
	Replaced int
	// Waiting were old pushes left open because their group had calls
	// within SummaryLag: the next sync checks them again.
	Waiting int
}

func (r *SendResult) add(o SendResult) {
	r.Sent += o.Sent
	r.Dead += o.Dead
	r.Landed += o.Landed
	r.Replaced += o.Replaced
	r.Waiting += o.Waiting
}

// derivedIdentifier names a row split off original: its landed part or its
// shortfall. It is deterministic, so two billers resolving the same group
// one after the other cannot add it twice.
func derivedIdentifier(kind, original, value string) string {
	h := sha256.Sum256(fmt.Appendf(nil, "%s\x00%s\x00%s", kind, original, value))
	return "mu_" + hex.EncodeToString(h[:24])
}

type groupRow struct {
	id                         int64
	tenant, metric, status     string
	groupKey                   string
	identifier, cumulative     string
	delta                      *big.Int
	period, ts                 time.Time
	sentAt                     *time.Time
	recentlyCancelled, isFinal bool
}

// errWait says a group's summary cannot be trusted yet.
var errWait = errors.New("the group had calls to Stripe within the summary lag")

// resolveGroup checks the open pushes of g against Stripe's summary, as
// described above, and returns the ids of the pushes it created to send
// the shortfall; it returns errWait when the group is not quiet.
func (b *Biller) resolveGroup(ctx context.Context, g group, meterID string, res *SendResult) ([]int64, error) {
	now := b.cfg.Now().UTC()
	var created []int64
	var landed, replaced int
	err := pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
		created, landed, replaced = nil, 0, 0
		if err := lockGroup(ctx, tx, g); err != nil {
			return err
		}
		all, err := b.readGroup(ctx, tx, g)
		if err != nil {
			return err
		}
		known, open, opens, err := b.splitGroup(all, now)
		if err != nil {
			return err
		}
		if len(opens) == 0 {
			return nil // another biller resolved it
		}
		// The billed period's summary window, by the schedule of the
		// group's tenant (the tenants of a customer share its cycle).
		sched, err := accounts.TenantSchedule(ctx, tx, opens[0].tenant)
		if err != nil {
			return err
		}
		from, to := summaryWindow(g.billed, sched.End(g.billed))
		var summary int64
		err = b.call(ctx, func() error {
			var err error
			summary, err = b.stripe.Summary(ctx, meterID, g.customer, from, to)
			return err
		})
		if err != nil {
			return fmt.Errorf("reading Stripe's summary for %s: %w", g, err)
		}
		arrived := new(big.Int).Sub(big.NewInt(summary), known)
		logArgs := []any{"group", g.String(), "stripe", summary, "sent", known.String(), "open", open.String(), "open_pushes", len(opens)}
		switch {
		case arrived.Sign() < 0:
			b.cfg.Logger.WarnContext(ctx, "Stripe shows less than the pushes recorded as sent; re-sending every open push", logArgs...)
			arrived.SetInt64(0)
		case arrived.Cmp(open) > 0:
			b.cfg.Logger.WarnContext(ctx, "Stripe shows more than the ledger expects; the reconciliation will show it as drift", logArgs...)
		}
		b.cfg.Logger.InfoContext(ctx, "checked old open pushes against Stripe's summary", append(logArgs, "arrived", arrived.String())...)
		ids, l, r, err := b.settleOpens(ctx, tx, g, opens, arrived, summary, known, now)
		if err != nil {
			return err
		}
		created, landed, replaced = ids, l, r
		return nil
	})
	if err != nil {
		return nil, err
	}
	res.Landed += landed
	res.Replaced += replaced
	b.cfg.Metrics.resolved(landed, replaced)
	return created, nil
}

// splitGroup sums what g's pushes sent (known) and hold open (open, the
// pushes opens), or returns errWait when one of them was sent or
// cancelled within the summary lag, so Stripe's summary may not show it.
func (b *Biller) splitGroup(all []groupRow, now time.Time) (known, open *big.Int, opens []groupRow, err error) {
	known, open = new(big.Int), new(big.Int)
	for _, x := range all {
		if x.recentlyCancelled || (x.sentAt != nil && x.sentAt.After(now.Add(-b.cfg.SummaryLag))) {
			return nil, nil, nil, errWait
		}
		switch x.status {
		case "sent":
			known.Add(known, x.delta)
		case "intent", "dead":
			open.Add(open, x.delta)
			opens = append(opens, x)
		}
	}
	return known, open, opens, nil
}

// readGroup reads and locks every push of g that may count towards its
// summary: open, sent, and cancelled ones.
func (b *Biller) readGroup(ctx context.Context, tx pgx.Tx, g group) ([]groupRow, error) {
	rows, err := billingdata.LockGroupPushes(ctx, tx, g.customer, g.eventName, g.billed, b.cfg.SummaryLag)
	if err != nil {
		return nil, fmt.Errorf("reading the group's pushes: %w", err)
	}
	all := make([]groupRow, len(rows))
	for i, r := range rows {
		all[i] = groupRow{id: r.ID, tenant: r.Tenant, metric: r.Metric, groupKey: r.GroupKey, status: r.Status, identifier: r.Identifier, cumulative: r.Cumulative,
			delta: usagedata.NumericInt(r.Delta), period: r.Period, ts: r.EventTime, sentAt: r.SentAt,
			recentlyCancelled: r.RecentlyCancelled, isFinal: r.PeriodIsClosed}
	}
	return all, nil
}

// settleOpens splits arrived, what Stripe's summary shows of g's open
// pushes, over opens in id order: a push that arrived whole is marked
// sent (landed), any other is replaced by what arrived of it and a new
// intent for the rest. It returns the new intents' ids and how many
// landed and were replaced.
func (b *Biller) settleOpens(ctx context.Context, tx pgx.Tx, g group, opens []groupRow, arrived *big.Int, summary int64, known *big.Int, now time.Time) (created []int64, landed, replaced int, err error) {
	remaining := arrived
	for _, x := range opens {
		part := new(big.Int).Set(x.delta)
		if remaining.Cmp(part) < 0 {
			part.Set(remaining)
		}
		remaining.Sub(remaining, part)
		if part.Cmp(x.delta) == 0 {
			if err := billingdata.MarkLanded(ctx, tx, x.id, now,
				fmt.Sprintf("landed: not sent again; Stripe's summary of %s at %s showed it had arrived (summary %d, sent before %s)",
					g, now.Format(time.RFC3339), summary, known)); err != nil {
				return nil, 0, 0, fmt.Errorf("marking push %d landed: %w", x.id, err)
			}
			landed++
			continue
		}
		ids, err := b.replace(ctx, tx, x, part, g, summary, now)
		if err != nil {
			return nil, 0, 0, err
		}
		created = append(created, ids...)
		replaced++
	}
	return created, landed, replaced, nil
}

// replace cancels open push x in the ledger, records the part of it that
// reached Stripe (if any) as a sent row, and records the shortfall as a new
// intent; it returns the new intent's id.
func (b *Biller) replace(ctx context.Context, tx pgx.Tx, x groupRow, arrived *big.Int, g group, summary int64, now time.Time) ([]int64, error) {
	short := new(big.Int).Sub(x.delta, arrived)
	shortID := derivedIdentifier("shortfall", x.identifier, short.String())
	if err := billingdata.CancelReplaced(ctx, tx, x.id,
		fmt.Sprintf("replaced: first attempted more than %s ago, so Stripe may have forgotten its identifier; its summary of %s at %s "+
			"showed %s of its %s had arrived; the missing %s goes as push %s", DedupHorizon, g, now.Format(time.RFC3339), arrived, x.delta, short, shortID)); err != nil {
		return nil, fmt.Errorf("cancelling push %d: %w", x.id, err)
	}
	if arrived.Sign() > 0 {
		if err := billingdata.InsertLandedPart(ctx, tx, x.id, arrived.String(), derivedIdentifier("landed", x.identifier, arrived.String()), now,
			fmt.Sprintf("landed: the part of push %s that Stripe's summary showed had arrived", x.identifier)); err != nil {
			return nil, fmt.Errorf("recording the landed part of push %d: %w", x.id, err)
		}
	}
	// The shortfall keeps the original timestamp while Stripe still takes
	// it and the month's invoice is open; otherwise it is carried into the
	// current month, as planning would.
	ts, billed, carried := x.ts, g.billed, false
	if x.isFinal || x.ts.Before(now.Add(-35*24*time.Hour+time.Hour)) {
		sched, err := accounts.TenantSchedule(ctx, tx, x.tenant)
		if err != nil {
			return nil, err
		}
		cs, ce := sched.Span(now)
		cf, ct := summaryWindow(cs, ce)
		ts, billed, carried = stampIn(now, cf, ct), cs, true
	}
	id, inserted, err := billingdata.InsertShortfall(ctx, tx, billingdata.Intent{Tenant: x.tenant, Metric: x.metric, GroupKey: x.groupKey, Period: x.period, Billed: billed,
		Customer: g.customer, EventName: g.eventName, Cumulative: x.cumulative, Delta: short.String(), Identifier: shortID,
		EventTime: ts, Carried: carried, CreatedAt: now},
		fmt.Sprintf("shortfall of push %s (%s of %s missing from Stripe's summary %d)", x.identifier, short, x.delta, summary))
	if err != nil {
		return nil, fmt.Errorf("recording the shortfall of push %d: %w", x.id, err)
	}
	if !inserted {
		return nil, nil // recorded by an earlier resolution
	}
	return []int64{id}, nil
}
