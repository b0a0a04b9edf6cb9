// Package topics names the Kafka topics of the pipeline; creating them and
// checking that the brokers answer is internal/kafkalog's (Cluster.Ensure,
// Cluster.Ping).
//
// Invariant: the product names a topic only through these constants, and
// they are the contract with consumers outside the product (TestNames).
package topics

import "github.com/usagemeter/metering/events"

// Topic names (contract): the product names a topic only through these.
// UsageEvents is the public SDK's events.Topic, the topic its Producer
// writes to, so the two cannot drift apart.
const (
	UsageEvents    = events.Topic
	UsageEventsDLQ = "usage.events.dlq"
	QuotaBreaches  = "quota.breaches"
	BillingDLQ     = "billing.dlq"
	// BillingEvents carries billing facts (plan changes, grants,
	// adjustments, overages, closed periods) keyed by tenant, each with a
	// stable event id (internal/billingevents).
	BillingEvents = "billing.events"
	// UsageAnomalies carries the spikes and drops of tenants' hourly
	// usage (internal/anomaly), keyed by tenant, one message per episode
	// under its stable id.
	UsageAnomalies = "usage.anomalies"
)

// All lists every topic of the pipeline.
var All = []string{UsageEvents, UsageEventsDLQ, QuotaBreaches, BillingDLQ, BillingEvents, UsageAnomalies}
