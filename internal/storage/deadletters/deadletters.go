// Package deadletters owns the usage dead-letter queue (usage_dlq: records
// that could not be counted, bytes kept) and Apply, through which every
// operator action on a dead-letter queue (usage, billing, credits) is
// made and audited in audit_log (through internal/storage/auditlog).
//
// Invariant: a record of any queue changes status only through Apply,
// which appends one audit_log row per record in the same transaction, so
// no record changes status unaudited; an action that moves nothing audits
// nothing (TestApply, TestApplyAllOnEmptyQueue).
package deadletters
