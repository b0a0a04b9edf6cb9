-- Lineage: which counted events a Stripe push carried, exactly, even when
-- batches commit out of their order.
--
-- ledger.counted_xid, usage_adjustments.counted_xid
--   The transaction that counted the event (or applied the adjustment):
--   the aggregator's batch transaction, set by the column default. NULL
--   for rows counted before this migration (their lineage is unknown).
-- billing_pushes.metered_snapshot
--   The snapshot of the statement that read the metered total the push
--   brings Stripe to (its cumulative_total). The events a push carried are
--   those of its (tenant, meter, group, month) whose counted_xid is
--   visible in its snapshot and not in the snapshot of the pair's previous
--   push: a transaction's rows are visible in a snapshot exactly when it
--   had committed when the snapshot was taken, whatever order batches
--   started in. NULL for pushes planned before this migration.
--
-- Adding nullable columns and then their defaults rewrites no table.
ALTER TABLE ledger ADD COLUMN counted_xid xid8;
ALTER TABLE ledger ALTER COLUMN counted_xid SET DEFAULT pg_current_xact_id();
ALTER TABLE usage_adjustments ADD COLUMN counted_xid xid8;
ALTER TABLE usage_adjustments ALTER COLUMN counted_xid SET DEFAULT pg_current_xact_id();
ALTER TABLE billing_pushes ADD COLUMN metered_snapshot pg_snapshot;
