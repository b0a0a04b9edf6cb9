package credit

import (
	"math/big"
	"time"

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
// limit: warning at its lowest threshold (80 % by default) of it, exceeded at 100 %, blocked (hard quotas)
// beyond allowance × (1 + burst). A nil allowance is unlimited.
func State(r quota.Rule, allowance, used *big.Int) quota.State {
	return r.Assess(allowance, used, time.Time{}, time.Time{}).State
}
