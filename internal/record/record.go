// Package record is the product's word for one Kafka record, read from a
// partition or to be written to a topic. The product's packages speak in
// records and events.Event; kafka-go's types stay behind internal/kafkalog
// (and the public events.Producer).
//
// Invariant: a Record holds its bytes as the broker gave them (key, value,
// headers in order), so a dead letter or a replay reproduces it exactly.
package record

import "time"

// Record is one Kafka record.
type Record struct {
	// Topic is empty where it is implied (a reader of one topic).
	Topic     string
	Partition int
	Offset    int64
	Key       []byte
	Value     []byte
	Headers   []Header
	// Time is the broker's timestamp of the record.
	Time time.Time
}

// Header is one record header, kept byte for byte.
type Header struct {
	Key   string
	Value []byte
}
