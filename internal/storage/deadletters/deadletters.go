// Package deadletters owns the usage dead-letter queue (usage_dlq: records
// that could not be counted, bytes kept) and the audit of every operator
// action on a dead-letter queue (dlq_audit), for both queues.
//
// Invariant: a record of either queue changes status only through Apply,
// which writes its dlq_audit row in the same transaction, so no record
// changes status unaudited; an action that moves nothing audits nothing
// (TestApply, TestApplyAllOnEmptyQueue).
package deadletters
