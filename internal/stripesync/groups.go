package stripesync

import (
	"fmt"

	"github.com/usagemeter/metering/internal/meter"
)

// mapping is where a group of a defined meter is billed: its Stripe event
// name; or skip, when the quota's filter leaves the group out; or
// unmapped, the reason the group cannot be billed.
type mapping struct {
	eventName, unmapped string
	skip                bool
}

// groupMapping maps the group whose key is key, of a meter with
// aggregation and groupBy, under a billed quota with Stripe event name
// template tmpl and filter. A latest meter is never billed (Stripe sums
// the deltas it receives, and a latest value can fall); a group whose
// values cannot fill the template's placeholders (a missing property, a
// value Stripe's names cannot hold) is unmapped with the reason.
func groupMapping(tmpl, aggregation string, groupBy []string, filter map[string]string, key string) mapping {
	g, err := meter.ParseGroupKey(groupBy, key)
	if err != nil {
		return mapping{unmapped: fmt.Sprintf("group key does not fit the meter's group_by (changed since?): %v", err)}
	}
	for k, want := range filter {
		at := -1
		for i := range groupBy {
			if groupBy[i] == k {
				at = i
			}
		}
		if at < 0 {
			return mapping{skip: true}
		}
		if v, ok := g.Value(at); !ok || v != want {
			return mapping{skip: true}
		}
	}
	if aggregation == string(meter.Latest) {
		return mapping{unmapped: "a latest meter is not billed: latest is not additive, and Stripe sums the deltas it receives"}
	}
	name, err := g.EventName(tmpl)
	if err != nil {
		return mapping{unmapped: fmt.Sprintf("no Stripe event name for the group: %v", err)}
	}
	return mapping{eventName: name}
}
