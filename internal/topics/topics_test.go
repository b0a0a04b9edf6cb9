package topics_test

import (
	"slices"
	"testing"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/topics"
)

// TestNames pins the topic names: they are the contract with consumers
// outside the product, and the SDK's Producer writes to the topic the
// pipeline reads.
func TestNames(t *testing.T) {
	want := []string{"usage.events", "usage.events.dlq", "quota.breaches", "billing.dlq", "billing.events", "usage.anomalies"}
	if !slices.Equal(topics.All, want) {
		t.Errorf("topics.All = %q, want %q", topics.All, want)
	}
	if topics.UsageEvents != events.Topic {
		t.Errorf("topics.UsageEvents = %q, events.Topic = %q", topics.UsageEvents, events.Topic)
	}
}
