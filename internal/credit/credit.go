// Package credit burns a quota period's usage down through the plan's
// included limit and a tenant's credit grants, hour by hour, and says
// what each grant has burnt, what it has left and the period's
// allowance. It holds no SQL and reads no clock: everything it uses is
// passed in.
//
// Invariant: for an input with a limit, an hour's usage is taken first
// from what the plan's limit has left, then from the grants active in
// that hour in burn order (Less), never more than a grant's amount; so
// Σ burnt ≤ Σ usage, each grant's burnt + remaining ≤ amount (equal
// while it is active), and a grant that has ended has remaining 0
// (TestBurn, TestBurnInvariants). The arithmetic is exact (big.Int).
package credit

import (
	"math/big"
	"slices"
	"strings"
	"time"
)

// Grant is one credit grant as the burn-down needs it.
type Grant struct {
	ID     string
	Amount int64
	// EffectiveAt is the first hour the grant is active; ExpiresAt (nil:
	// never) and VoidedAt (nil: not voided) end it.
	EffectiveAt time.Time
	ExpiresAt   *time.Time
	VoidedAt    *time.Time
	Priority    int
	CreatedAt   time.Time
}

// End returns when the grant stops being active: the earlier of its
// expiry and its void, and false when it has neither.
func (g Grant) End() (time.Time, bool) {
	switch {
	case g.ExpiresAt == nil && g.VoidedAt == nil:
		return time.Time{}, false
	case g.ExpiresAt == nil:
		return *g.VoidedAt, true
	case g.VoidedAt == nil || g.ExpiresAt.Before(*g.VoidedAt):
		return *g.ExpiresAt, true
	}
	return *g.VoidedAt, true
}

// ActiveAt reports whether the grant is active at t: EffectiveAt ≤ t <
// End.
func (g Grant) ActiveAt(t time.Time) bool {
	if t.Before(g.EffectiveAt) {
		return false
	}
	end, ok := g.End()
	return !ok || t.Before(end)
}

// Overlaps reports whether the grant is active at some time in [from, to).
func (g Grant) Overlaps(from, to time.Time) bool {
	if !g.EffectiveAt.Before(to) {
		return false
	}
	end, ok := g.End()
	return !ok || end.After(from)
}

// Less orders grants as usage burns them: lower priority first, then the
// earliest expiry (a grant that never expires last), then the earliest
// creation, then the id byte by byte.
func Less(a, b Grant) int {
	if a.Priority != b.Priority {
		if a.Priority < b.Priority {
			return -1
		}
		return 1
	}
	switch {
	case a.ExpiresAt == nil && b.ExpiresAt != nil:
		return 1
	case a.ExpiresAt != nil && b.ExpiresAt == nil:
		return -1
	case a.ExpiresAt != nil && !a.ExpiresAt.Equal(*b.ExpiresAt):
		return a.ExpiresAt.Compare(*b.ExpiresAt)
	}
	if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
		return c
	}
	return strings.Compare(a.ID, b.ID)
}

// Hour is the usage of one hour of the period, by the hour's start.
type Hour struct {
	Start time.Time
	Usage *big.Int
}

// Period is what one quota period's burn-down reads.
type Period struct {
	// Start and End bound the quota period [Start, End).
	Start, End time.Time
	// Limit is the plan's included usage; nil is unlimited, for which
	// grants change nothing.
	Limit *int64
	// Hours is the usage of the period's hours so far, in any order;
	// hours outside the period are ignored.
	Hours []Hour
	// Grants are the tenant's grants on the quota's meter, in any order.
	Grants []Grant
	// Now is the time the answer is for: hours starting after it are not
	// burnt (the hour containing it is), and the allowance counts the
	// grants active at it.
	Now time.Time
}

// GrantState is one grant's burn-down in the period.
type GrantState struct {
	Grant Grant
	// Burnt is what the period's usage took from the grant; Remaining is
	// Amount − Burnt while the grant is active or scheduled, 0 once it
	// has ended.
	Burnt, Remaining *big.Int
	// Ended: the grant ended (expired or was voided) in the period, at
	// or before Now. Unused is what it had left then (0 when used up or
	// not ended): lost, not carried over.
	Ended  bool
	Unused *big.Int
}

// Result is a period's burn-down.
type Result struct {
	// Allowance is Limit + Σ Amount of the grants active at Now + Σ Burnt
	// of the grants that ended in the period at or before Now (what they
	// covered stays covered); nil when the limit is unlimited. For a
	// period that is over, "at Now" is at the period's last instant.
	Allowance *big.Int
	// Grants are the input grants that overlap the period, in burn order.
	Grants []GrantState
}

// Burn runs the burn-down of p.
func Burn(p Period) Result {
	var gs []GrantState
	for _, g := range p.Grants {
		if g.Overlaps(p.Start, p.End) {
			gs = append(gs, GrantState{Grant: g, Burnt: new(big.Int), Remaining: big.NewInt(g.Amount), Unused: new(big.Int)})
		}
	}
	slices.SortStableFunc(gs, func(a, b GrantState) int { return Less(a.Grant, b.Grant) })
	if p.Limit == nil {
		for i := range gs {
			gs[i].finish(p)
		}
		return Result{Grants: gs}
	}
	hours := slices.Clone(p.Hours)
	slices.SortStableFunc(hours, func(a, b Hour) int { return a.Start.Compare(b.Start) })
	planLeft := big.NewInt(*p.Limit)
	if planLeft.Sign() < 0 {
		planLeft.SetInt64(0)
	}
	take := new(big.Int)
	for _, h := range hours {
		if h.Start.Before(p.Start) || !h.Start.Before(p.End) || h.Start.After(p.Now) || h.Usage == nil || h.Usage.Sign() <= 0 {
			continue
		}
		left := new(big.Int).Set(h.Usage)
		take.Set(minInt(left, planLeft))
		planLeft.Sub(planLeft, take)
		left.Sub(left, take)
		for i := range gs {
			if left.Sign() == 0 {
				break
			}
			if !gs[i].Grant.ActiveAt(h.Start) || gs[i].Remaining.Sign() == 0 {
				continue
			}
			take.Set(minInt(left, gs[i].Remaining))
			gs[i].Burnt.Add(gs[i].Burnt, take)
			gs[i].Remaining.Sub(gs[i].Remaining, take)
			left.Sub(left, take)
		}
	}
	// The allowance is for Now, or for the period's last instant when the
	// period is over.
	ref := p.Now
	if !ref.Before(p.End) {
		ref = p.End.Add(-time.Nanosecond)
	}
	allowance := big.NewInt(*p.Limit)
	for i := range gs {
		gs[i].finish(p)
		switch {
		case gs[i].Ended:
			allowance.Add(allowance, gs[i].Burnt)
		case gs[i].Grant.ActiveAt(ref):
			allowance.Add(allowance, big.NewInt(gs[i].Grant.Amount))
		}
	}
	return Result{Allowance: allowance, Grants: gs}
}

// finish settles a grant's state at p.Now: a grant that has ended keeps
// nothing, and what it had left is Unused when it ended in the period.
func (s *GrantState) finish(p Period) {
	end, ok := s.Grant.End()
	if !ok || end.After(p.Now) {
		return
	}
	if end.After(p.Start) && !end.After(p.End) {
		s.Ended = true
		s.Unused.Set(s.Remaining)
	}
	s.Remaining.SetInt64(0)
}

func minInt(a, b *big.Int) *big.Int {
	if a.Cmp(b) <= 0 {
		return a
	}
	return b
}
