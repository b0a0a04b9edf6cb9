// Package events is the public SDK for services that produce usage events.
//
// It defines the Event type (the wire contract of the usage.events topic),
// its validation, the codecs the ingest API accepts (a JSON object, a JSON
// array, NDJSON and CloudEvents 1.0 in structured, batch and HTTP binary
// content mode), UUIDv7 idempotency ids, and a Kafka Producer that returns
// only once every event was acknowledged by all in-sync replicas.
//
// Invariant: an Event that passes Validate encodes to exactly one canonical
// byte sequence (see Event.AppendJSON), whichever path produced it, and
// decoding those bytes yields the same Event. The pair (Tenant, ID) is the
// idempotency key: the pipeline counts it once, however often it is sent.
//
// Every body the Decoder reads, and every record Event.UnmarshalJSON
// reads, is first checked by one pass without recursion (package
// jsonscan) within Limits, so no input can exhaust the stack or memory
// (TestDecodeFiveMillionBrackets, TestDecodeMemoryPerByte); keys are
// matched exactly as the contract spells them, and a key sent twice,
// compared after unescaping and in any case, is refused
// (TestDecodeDuplicateKeysInAnyCase, testdata/conformance/decode.json).
//
// This package does not import anything under internal/, so producing
// services can depend on it alone.
package events
