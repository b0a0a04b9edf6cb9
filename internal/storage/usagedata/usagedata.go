// Package usagedata owns what counting writes: the dedup ledger and its
// conflicts, the usage windows, corrections of closed months, quota
// breaches and the consumer's stored offsets. The rollup writes them in a
// batch's transaction; the API, the biller and rebuild read them here.
// Rebuild's shadow schema (scratch copies of these tables that a replay
// fills) is created, compared and swapped in here too (shadow.go).
//
// Invariant: usage only grows through these operations. A window's value
// and events are only ever increased (AddWindows) or replaced wholesale by
// a verified rebuild; the ledger's key on (tenant, event_id) is what makes
// a resent event count once. AddWindows refuses a negative amount
// (TestAddWindowsOnlyGrows), and DeleteExpired forgets ledger ids only
// of event days before the cutoff its caller chooses, one before every
// event time the rollup can still accept (TestDeleteExpired).
package usagedata
