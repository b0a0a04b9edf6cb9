package credit

import (
	"math/big"

	"github.com/usagemeter/metering/internal/quota"
)

// AppliesTo reports whether grants raise the allowance of a quota on a
// meter of this aggregation: sum and count meters, whose usage adds up
// hour by hour ("" is a metric's implicit meter, a sum). Grants on max,
// latest and unique_count meters are refused.
func AppliesTo(aggregation string) bool {
	return aggregation == "" || aggregation == "sum" || aggregation == "count"
}

// State is quota.Rule.Evaluate against allowance instead of the rule's
// limit: warning at 80 % of it, exceeded at 100 %, blocked (hard quotas)
// beyond allowance × (1 + burst). A nil allowance is unlimited.
func State(r quota.Rule, allowance, used *big.Int) quota.State {
	if allowance == nil {
		return quota.OK
	}
	used100 := new(big.Int).Mul(used, big.NewInt(100))
	if r.Hard && used100.Cmp(new(big.Int).Mul(allowance, big.NewInt(int64(100+r.BurstPercent)))) > 0 {
		return quota.Blocked
	}
	if used.Cmp(allowance) >= 0 {
		return quota.Exceeded
	}
	if used100.Cmp(new(big.Int).Mul(allowance, big.NewInt(quota.WarningPercent))) >= 0 {
		return quota.Warning
	}
	return quota.OK
}
