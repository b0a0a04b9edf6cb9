// Package kafkalog is the product's one boundary with Kafka: reading a
// partition from an offset (the consumer and rebuild share one loop),
// writing records (the outbox relay), the group membership, offsets of
// the log, topics, and the client's security settings. Outside it, the
// product speaks in record.Record, events.Event and small interfaces; only
// this package and the public events.Producer import kafka-go.
package kafkalog
