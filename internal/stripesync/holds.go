package stripesync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/storage"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/billingdata"
)

// Billing held on anomalies.
//
// A plan version with hold_on_anomaly {"factor": k, "window": n} holds a
// push whose delta is more than k times the baseline of its tenant, meter
// and group: the median of the deltas of that key's last n pushes (n
// defaults to 20; sent, intent and dead pushes of any period; held,
// discarded and cancelled ones do not count). With an even count the
// median is the mean of the two middle deltas; the comparison is exact
// (2·delta > k·(a+b), k a decimal held as a rational). A key with no such
// push has no baseline and is never held; a plan without the option never
// holds.
//
// A held push is recorded like any intent (same identifier, same
// cumulative total) with status held: it counts as claimed, so no later
// sync plans its delta again, and it is not sent. Later intents of the
// same tenant, meter, group and period are planned as usual (each judged
// on its own delta) but wait behind it: no round sends them while it is
// held. Approving moves it back to intent under its identifier and sends
// it at once (and the intents behind it); rejecting discards it as a
// dead letter is discarded: its usage stays claimed, is never sent, and
// the reconciliation shows it as drift for finance; the intents behind it
// are then sent. Both are audited (billing.hold.approve,
// billing.hold.reject) with the actor and a required note.

// DefaultHoldWindow is how many earlier pushes the baseline is the
// median of when a plan's hold_on_anomaly names no window.
const DefaultHoldWindow = 20

// holdRule is a plan's hold_on_anomaly, parsed.
type holdRule struct {
	factor *big.Rat
	window int
	text   string // the factor as the plan states it
}

// parseHold parses a plan version's hold_on_anomaly JSON (nil: none).
func parseHold(raw []byte) (*holdRule, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var v struct {
		Factor json.Number `json:"factor"`
		Window int         `json:"window"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, fmt.Errorf("hold_on_anomaly: %w", err)
	}
	rule := accounts.HoldOnAnomaly{Factor: v.Factor, Window: v.Window}
	if err := rule.Check(); err != nil {
		return nil, err
	}
	f, err := rule.Rat()
	if err != nil {
		return nil, err
	}
	if v.Window == 0 {
		v.Window = DefaultHoldWindow
	}
	return &holdRule{factor: f, window: v.Window, text: string(v.Factor)}, nil
}

// CheckHoldOnAnomaly reports whether raw is a valid hold_on_anomaly
// (nil is: no hold).
func CheckHoldOnAnomaly(raw []byte) error {
	_, err := parseHold(raw)
	return err
}

// holdReason returns why delta is held against the earlier deltas
// (newest first), or "" when it is not: there is no history, or delta is
// at most factor times their median.
func (h *holdRule) holdReason(delta *big.Int, history []string) (string, error) {
	if h == nil || len(history) == 0 {
		return "", nil
	}
	ds := make([]*big.Int, len(history))
	for i, s := range history {
		d, ok := new(big.Int).SetString(s, 10)
		if !ok {
			return "", fmt.Errorf("push delta %q is not an integer", s)
		}
		ds[i] = d
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i].Cmp(ds[j]) < 0 })
	n := len(ds)
	// median·2 as an integer: the middle one twice, or the two middles.
	twice := new(big.Int).Add(ds[(n-1)/2], ds[n/2])
	lhs := new(big.Rat).SetInt(new(big.Int).Lsh(delta, 1))
	rhs := new(big.Rat).Mul(h.factor, new(big.Rat).SetInt(twice))
	if lhs.Cmp(rhs) <= 0 {
		return "", nil
	}
	median := new(big.Rat).SetFrac(twice, big.NewInt(2))
	baseline := median.RatString()
	if !median.IsInt() {
		baseline = median.FloatString(1) // a half: exact
	}
	return fmt.Sprintf("delta %s is more than %s × the baseline %s (median delta of the last %d push(es))",
		delta, h.text, baseline, n), nil
}

// holdIfUnusual decides, in the planning transaction tx, whether the
// intent identifier (just recorded, with delta) of p is held, and holds
// it.
func (b *Biller) holdIfUnusual(ctx context.Context, tx storage.Executor, p delta, delta *big.Int, identifier string) (bool, error) {
	if p.hold == nil {
		return false, nil
	}
	hist, err := billingdata.ReadHoldHistory(ctx, tx, p.tenant, p.metric, p.groupKey, p.period, p.hold.window, identifier)
	if err != nil {
		return false, fmt.Errorf("reading the pushes' baseline: %w", err)
	}
	reason, err := p.hold.holdReason(delta, hist.Deltas)
	if err != nil || reason == "" {
		return false, err
	}
	if err := billingdata.Hold(ctx, tx, identifier, reason); err != nil {
		return false, fmt.Errorf("holding the push: %w", err)
	}
	return true, nil
}

// HeldPush is a push held for approval.
type HeldPush = billingdata.HeldPush

// ErrNotHeld is returned for a push that is not held; ErrNoHeldPush for
// one that does not exist.
var (
	ErrNotHeld    = billingdata.ErrNotHeld
	ErrNoHeldPush = billingdata.ErrNoPush
)

// Holds lists the held pushes, oldest first.
func (b *Biller) Holds(ctx context.Context) ([]HeldPush, error) {
	hs, err := billingdata.HeldPushes(ctx, b.pool)
	if err != nil {
		return nil, fmt.Errorf("listing held pushes: %w", err)
	}
	return hs, nil
}

// Hold reads push id as the holds show it, whatever its status.
func (b *Biller) Hold(ctx context.Context, id int64) (HeldPush, error) {
	h, err := billingdata.HeldPushByID(ctx, b.pool, id)
	if err != nil {
		return HeldPush{}, fmt.Errorf("reading push %d: %w", id, err)
	}
	return h, nil
}

// ApproveHold releases the held push id (audited billing.hold.approve by
// actor with note) and sends it at once under its identifier, with the
// intents of its period that waited behind it; what cannot be sent now
// is sent by the next sync.
func (b *Biller) ApproveHold(ctx context.Context, id int64, actor, note string) (SendResult, error) {
	if err := b.decideHold(ctx, id, billingdata.StatusIntent, billingdata.AuditHoldApprove, actor, note); err != nil {
		return SendResult{}, err
	}
	return b.sendReleased(ctx, id)
}

// RejectHold discards the held push id (audited billing.hold.reject by
// actor with note): its usage stays claimed and is never sent, and the
// reconciliation shows it as drift. The intents that waited behind it are
// sent at once.
func (b *Biller) RejectHold(ctx context.Context, id int64, actor, note string) (SendResult, error) {
	if err := b.decideHold(ctx, id, billingdata.StatusDiscarded, billingdata.AuditHoldReject, actor, note); err != nil {
		return SendResult{}, err
	}
	return b.sendReleased(ctx, id)
}

func (b *Biller) decideHold(ctx context.Context, id int64, to, action, actor, note string) error {
	if actor == "" {
		return errors.New("an actor is required for the audit trail")
	}
	if strings.TrimSpace(note) == "" {
		return errors.New("a note is required: it goes to the audit trail")
	}
	err := pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
		return billingdata.DecideHold(ctx, tx, id, to, action, actor, strings.TrimSpace(note))
	})
	if err != nil {
		return fmt.Errorf("%s of push %d: %w", action, id, err)
	}
	return nil
}

// sendReleased sends the intents of push id's tenant, meter and group
// from id on that no held push precedes any more (the push itself when
// approved, and the intents that waited behind it).
func (b *Biller) sendReleased(ctx context.Context, id int64) (SendResult, error) {
	h, err := billingdata.HeldPushByID(ctx, b.pool, id)
	if err != nil {
		return SendResult{}, fmt.Errorf("reading push %d: %w", id, err)
	}
	return b.send(ctx, nil, func(ctx context.Context, q storage.Executor) ([]billingdata.Push, error) {
		ps, err := billingdata.Intents(ctx, q)
		if err != nil {
			return nil, err
		}
		kept := ps[:0]
		for _, p := range ps {
			if p.Tenant == h.Tenant && p.Metric == h.Metric && p.GroupKey == h.GroupKey && p.ID >= id {
				kept = append(kept, p)
			}
		}
		return kept, nil
	})
}
