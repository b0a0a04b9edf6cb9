package meter

import (
	"fmt"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/events/fieldcheck"
)

// A meter's names, property keys and values follow the event contract's
// rules, with its messages (package events/fieldcheck, which events
// checks events with); TestChecksAgreeWithEvents holds each field of a
// definition to the rule of the event field it stands for.

// checkPropertyKey is the rule of an event property's key, for a name in
// group_by or the unique_count property.
func checkPropertyKey(k string) string {
	switch {
	case k == "":
		return "must not be empty (a property name)"
	case len(k) > events.MaxPropertyKeyLen:
		return fmt.Sprintf("must be at most %d bytes, got %d", events.MaxPropertyKeyLen, len(k))
	}
	return fieldcheck.Text(k)
}
