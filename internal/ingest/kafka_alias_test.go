package ingest_test

import "github.com/twmb/franz-go/pkg/kmsg"

type (
	kafkaRequest  = kmsg.Request
	kafkaResponse = kmsg.Response
)
