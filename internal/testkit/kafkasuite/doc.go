// Package kafkasuite proves the pipeline on real Apache Kafka: KRaft
// clusters of three brokers started from the broker's own jars
// (internal/testkit/kafkacluster), with topics replicated three times and
// min.insync.replicas=2, and the services running as processes
// (internal/testkit/stack); then a one-broker cluster whose clients must
// speak SASL_SSL (a CA the test makes, client certificates, SCRAM), on which
// the services run with KAFKA_TLS* and KAFKA_SASL_* and wrong settings
// must be refused with their reason, fast. It holds only tests; `make
// test` runs it on every Kafka version in KAFKA_SUITE_VERSIONS.
//
// Invariant: every scenario ends by comparing each usage window with a
// ground truth the test keeps itself (unique events only) and requires
// every partition's stored offset to have reached the log's end; a
// scenario that cannot show both fails.
//
// Test tooling, not product (see internal/testkit).
package kafkasuite
