// Package deadletters owns the usage dead-letter queue (usage_dlq: records
// that could not be counted, bytes kept) and the audit of every operator
// action on a dead-letter queue (dlq_audit), for both queues.
//
// Invariant: a dead letter is never deleted: replay and discard move it to
// a final status and write one audit row in the same statement.
package deadletters
