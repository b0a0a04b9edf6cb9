package quota_test

import (
	"math/big"
	"slices"
	"testing"

	"github.com/usagemeter/metering/internal/quota"
)

func ptr(n int64) *int64 { return &n }

func TestEvaluate(t *testing.T) {
	hard := quota.Rule{Limit: ptr(1000), BurstPercent: 20, Hard: true}
	soft := quota.Rule{Limit: ptr(1000), BurstPercent: 20}
	tests := []struct {
		name string
		r    quota.Rule
		used int64
		want quota.State
	}{
		{"unlimited", quota.Rule{}, 1 << 60, quota.OK},
		{"zero limit, zero use", quota.Rule{Limit: ptr(0)}, 0, quota.Exceeded},
		{"just below warning", hard, 799, quota.OK},
		{"warning at 80%", hard, 800, quota.Warning},
		{"just below limit", hard, 999, quota.Warning},
		{"exceeded at 100%", hard, 1000, quota.Exceeded},
		{"hard at limit × (1+burst) is not yet blocked", hard, 1200, quota.Exceeded},
		{"hard beyond limit × (1+burst) is blocked", hard, 1201, quota.Blocked},
		{"soft is never blocked", soft, 1_000_000, quota.Exceeded},
		{"hard with no burst blocks right past the limit", quota.Rule{Limit: ptr(10), Hard: true}, 11, quota.Blocked},
		{"fractional 80%: 80% of 7 is 5.6", quota.Rule{Limit: ptr(7)}, 5, quota.OK},
		{"fractional 80%: 6 ≥ 5.6", quota.Rule{Limit: ptr(7)}, 6, quota.Warning},
		{"huge limit", quota.Rule{Limit: ptr(1 << 62), Hard: true}, 1<<62 + 1, quota.Blocked},
	}
	for _, tt := range tests {
		if got := tt.r.Evaluate(big.NewInt(tt.used)); got != tt.want {
			t.Errorf("%s: Evaluate(%d) = %s, want %s", tt.name, tt.used, got, tt.want)
		}
	}
}

func TestReached(t *testing.T) {
	if got := quota.Reached(quota.Blocked); !slices.Equal(got, []quota.State{quota.Warning, quota.Exceeded, quota.Blocked}) {
		t.Fatalf("Reached(blocked) = %v", got)
	}
	if got := quota.Reached(quota.OK); got != nil {
		t.Fatalf("Reached(ok) = %v", got)
	}
}
