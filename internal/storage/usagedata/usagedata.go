// Package usagedata owns what counting writes: the dedup ledger and its
// conflicts, the usage windows with the unique values and long group keys
// of defined meters, corrections of closed months, quota breaches and the
// consumer's stored offsets. The rollup writes them in a batch's
// transaction; the API, the biller and rebuild read them here. Rebuild's
// shadow schema (scratch copies of these tables that a replay fills) is
// created, compared and swapped in here too (shadow.go).
//
// Invariant: usage only grows through these operations, except by a
// verified rebuild, which replaces windows (with their unique values)
// wholesale, of every meter or of the meters named. A window's events
// only ever increase (AddWindows, AddMeterWindows); its value increases for
// sum, count, max and unique_count, and for latest follows the event with
// the greatest (time, id), raised only by a resend of that same event; the
// ledger's key is what makes a resent event count once: one row per
// (tenant, event id), decided on the full id and tenant, never on its
// 16-byte key alone (TestLedgerIDsAreExact,
// TestLedgerDigestCollisionKeptApart). AddWindows refuses a negative amount (TestAddWindowsOnlyGrows),
// AddMeterWindows matches a ground truth whatever the batches and their
// order (TestAddMeterWindowsMatchesGroundTruth), whatever the length of
// group keys and unique values (TestAddMeterWindowsLongKeys), and after a
// swap continues from the rebuilt windows exactly
// (TestShadowSwapMeterWindows); DeleteExpired forgets ledger ids only of
// event days before the cutoff its caller chooses, one before every event
// time the rollup can still accept (TestDeleteExpired). A quota's usage
// over a meter's groups (MeterValue) is what the aggregation would give
// for those groups' events alone (TestMeterValueOverMatchingGroups), and a
// breach is recorded once per (tenant, meter, group key, period,
// threshold), before and after the upgrade that keyed breaches by meter
// (TestUpgradeKeepsQuotasAndBreachesAsImplicitMeters).
package usagedata
