// Package kafkalog is the product's one boundary with Kafka: reading a
// partition from an offset (the consumer and rebuild share one loop),
// writing records (the outbox relay), the group membership, offsets of
// the log, and topics, each over a Cluster: the brokers and the client's
// security settings, which internal/kafkaauth builds from the config.
// Outside it, the product speaks in record.Record, events.Event and small
// interfaces; only this package, internal/kafkaauth (whose Security yields
// kafka-go's dialer and transport) and the public events.Producer import
// kafka-go (TestKafkaStaysBehindKafkalog).
package kafkalog
