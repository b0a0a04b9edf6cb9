package credit

import (
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/quota"
)

var t0 = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC) // a month period's start

func h(n int) time.Time { return t0.Add(time.Duration(n) * time.Hour) }

func hp(n int) *time.Time { t := h(n); return &t }

func lim(n int64) *int64 { return &n }

func hours(usage ...int64) []Hour {
	out := make([]Hour, len(usage))
	for i, u := range usage {
		out[i] = Hour{Start: h(i), Usage: big.NewInt(u)}
	}
	return out
}

// show writes each grant as id:burnt/remaining, with !unused when it
// ended in the period, and the allowance.
func show(r Result) string {
	var parts []string
	for _, g := range r.Grants {
		s := fmt.Sprintf("%s:%s/%s", g.Grant.ID, g.Burnt, g.Remaining)
		if g.Ended {
			s += "!" + g.Unused.String()
		}
		parts = append(parts, s)
	}
	a := "unlimited"
	if r.Allowance != nil {
		a = r.Allowance.String()
	}
	return strings.Join(parts, " ") + " = " + a
}

func TestBurn(t *testing.T) {
	t.Parallel()
	end := t0.AddDate(0, 1, 0)
	tests := []struct {
		name   string
		limit  *int64
		hours  []Hour
		grants []Grant
		now    time.Time
		want   string
	}{
		{"plan first, then nothing to burn", lim(100), hours(30, 40), []Grant{{ID: "a", Amount: 50, EffectiveAt: t0}}, h(5),
			"a:0/50 = 150"},
		{"priority order", lim(10), hours(10, 30), []Grant{
			{ID: "p2", Amount: 50, EffectiveAt: t0, Priority: 2},
			{ID: "p1", Amount: 20, EffectiveAt: t0, Priority: 1}}, h(5),
			"p1:20/0 p2:10/40 = 80"},
		{"same priority: earliest expiry, never last, then creation, then id", lim(0), hours(25), []Grant{
			{ID: "never", Amount: 10, EffectiveAt: t0, CreatedAt: h(1)},
			{ID: "late", Amount: 10, EffectiveAt: t0, ExpiresAt: hp(100)},
			{ID: "soon", Amount: 10, EffectiveAt: t0, ExpiresAt: hp(50)},
			{ID: "b", Amount: 3, EffectiveAt: t0, CreatedAt: t0},
			{ID: "a", Amount: 3, EffectiveAt: t0, CreatedAt: t0}}, h(5),
			"soon:10/0 late:10/0 a:3/0 b:2/1 never:0/10 = 36"},
		{"expiry mid-period loses the remainder, keeps what it covered", lim(10), hours(10, 5, 0, 20), []Grant{
			{ID: "x", Amount: 50, EffectiveAt: t0, ExpiresAt: hp(2)}}, h(5),
			"x:5/0!45 = 15"},
		{"usage after the expiry is not covered", lim(10), hours(10, 5, 0, 20), []Grant{
			{ID: "x", Amount: 50, EffectiveAt: t0, ExpiresAt: hp(2)},
			{ID: "y", Amount: 8, EffectiveAt: h(3)}}, h(5),
			"x:5/0!45 y:8/0 = 23"},
		{"void ends the grant in the hour it happens", lim(0), hours(4, 4, 4), []Grant{
			{ID: "v", Amount: 100, EffectiveAt: t0, VoidedAt: func() *time.Time { t := h(1).Add(30 * time.Minute); return &t }()}}, h(3),
			"v:8/0!92 = 8"},
		{"scheduled grant: not in the allowance yet", lim(10), hours(20), []Grant{
			{ID: "s", Amount: 5, EffectiveAt: h(10)}}, h(3),
			"s:0/5 = 10"},
		{"grants beyond the period are left out", lim(10), hours(20), []Grant{
			{ID: "next", Amount: 5, EffectiveAt: end},
			{ID: "before", Amount: 5, EffectiveAt: t0.Add(-48 * time.Hour), ExpiresAt: &t0}}, h(3),
			" = 10"},
		{"unlimited: grants change nothing", nil, hours(1000), []Grant{{ID: "u", Amount: 5, EffectiveAt: t0}}, h(3),
			"u:0/5 = unlimited"},
		{"usage exactly at the effective hour burns it", lim(0), []Hour{{Start: h(2), Usage: big.NewInt(7)}}, []Grant{
			{ID: "e", Amount: 10, EffectiveAt: h(2)}}, h(3),
			"e:7/3 = 10"},
		{"usage of the hour before the effective hour does not", lim(0), []Hour{{Start: h(1), Usage: big.NewInt(7)}}, []Grant{
			{ID: "e", Amount: 10, EffectiveAt: h(2)}}, h(3),
			"e:0/10 = 10"},
		{"usage exactly at the expiry hour does not burn it", lim(0), []Hour{{Start: h(2), Usage: big.NewInt(7)}}, []Grant{
			{ID: "e", Amount: 10, EffectiveAt: t0, ExpiresAt: hp(2)}}, h(3),
			"e:0/0!10 = 0"},
		{"hours after now are not burnt yet, the hour of now is", lim(0), hours(1, 1, 1, 1), []Grant{
			{ID: "g", Amount: 10, EffectiveAt: t0}}, h(2),
			"g:3/7 = 10"},
		{"a period over: the allowance at its last instant", lim(5), hours(10), []Grant{
			{ID: "g", Amount: 10, EffectiveAt: t0, ExpiresAt: func() *time.Time { t := end.Add(time.Hour); return &t }()}}, end.Add(48 * time.Hour),
			"g:5/0 = 15"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := Burn(Period{Start: t0, End: end, Limit: tt.limit, Hours: tt.hours, Grants: tt.grants, Now: tt.now})
			if got := show(r); got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

// TestBurnInvariants: whatever the usage, grants burn no more than the
// usage beyond the limit, no grant burns more than its amount, and an
// active grant's burnt and remaining add up to its amount.
func TestBurnInvariants(t *testing.T) {
	t.Parallel()
	end := t0.AddDate(0, 1, 0)
	big1 := int64(1) << 62
	for seed := range 200 {
		usage := make([]int64, 24)
		total := new(big.Int)
		for i := range usage {
			usage[i] = int64((seed*7919 + i*104729) % 97)
			if seed%10 == 0 {
				usage[i] = big1 // sums beyond int64
			}
			total.Add(total, big.NewInt(usage[i]))
		}
		grants := []Grant{
			{ID: "a", Amount: int64(seed%50 + 1), EffectiveAt: h(seed % 5), ExpiresAt: hp(seed%20 + 6), Priority: seed % 3},
			{ID: "b", Amount: big1, EffectiveAt: t0, Priority: 1},
			{ID: "c", Amount: 30, EffectiveAt: h(3), VoidedAt: hp(seed%24 + 4)},
		}
		r := Burn(Period{Start: t0, End: end, Limit: lim(int64(seed)), Hours: hours(usage...), Grants: grants, Now: h(24)})
		burnt := new(big.Int)
		for _, g := range r.Grants {
			burnt.Add(burnt, g.Burnt)
			amount := big.NewInt(g.Grant.Amount)
			if g.Burnt.Cmp(amount) > 0 || g.Burnt.Sign() < 0 {
				t.Fatalf("seed %d: grant %s burnt %s of %s", seed, g.Grant.ID, g.Burnt, amount)
			}
			sum := new(big.Int).Add(g.Burnt, g.Remaining)
			if _, ended := g.Grant.End(); !ended || g.Grant.ActiveAt(h(24)) {
				if sum.Cmp(amount) != 0 {
					t.Fatalf("seed %d: active grant %s: %s + %s ≠ %s", seed, g.Grant.ID, g.Burnt, g.Remaining, amount)
				}
			} else if g.Remaining.Sign() != 0 {
				t.Fatalf("seed %d: ended grant %s keeps %s", seed, g.Grant.ID, g.Remaining)
			}
		}
		over := new(big.Int).Sub(total, big.NewInt(int64(seed)))
		if over.Sign() < 0 {
			over.SetInt64(0)
		}
		if burnt.Cmp(over) > 0 {
			t.Fatalf("seed %d: grants burnt %s of usage beyond the limit %s", seed, burnt, over)
		}
	}
}

func TestLess(t *testing.T) {
	t.Parallel()
	a := Grant{ID: "a", Priority: 1, ExpiresAt: hp(5)}
	b := Grant{ID: "b", Priority: 1}
	if Less(a, b) >= 0 || Less(b, a) <= 0 || Less(a, a) != 0 {
		t.Fatal("an expiring grant burns before a never-expiring one of the same priority")
	}
}

// TestStateMatchesEvaluate: against an allowance equal to the limit,
// State is quota.Rule.Evaluate.
func TestStateMatchesEvaluate(t *testing.T) {
	t.Parallel()
	for _, hard := range []bool{false, true} {
		r := quota.Rule{Limit: lim(100), BurstPercent: 10, Hard: hard}
		for used := range int64(130) {
			if got, want := State(r, big.NewInt(100), big.NewInt(used)), r.Evaluate(big.NewInt(used)); got != want {
				t.Fatalf("hard %v used %d: %s, want %s", hard, used, got, want)
			}
		}
	}
	if State(quota.Rule{Hard: true}, nil, big.NewInt(1<<40)) != quota.OK {
		t.Fatal("unlimited is not ok")
	}
}
