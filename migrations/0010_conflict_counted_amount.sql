-- What counting a held conflict added to its windows. The copies of one
-- (tenant, id) counted in one metric and event time count their maximum
-- once, like a raise: the first adds its value and an event, a later one
-- only what it adds over the largest already counted there (the counted
-- event's value when it has that metric and time), and no event.
--   counted_amount  the value added to the conflict's windows
--   counted_events  the events added to them (0 or 1)
-- Both are set exactly when the resolution is counted.
ALTER TABLE ledger_conflicts ADD COLUMN counted_amount bigint;
ALTER TABLE ledger_conflicts ADD COLUMN counted_events integer;
-- Conflicts counted before this file added their whole value and an event.
UPDATE ledger_conflicts SET counted_amount = coalesce(value, 0), counted_events = 1 WHERE resolution = 'counted';
ALTER TABLE ledger_conflicts ADD CONSTRAINT ledger_conflicts_counted_amount CHECK (
    (resolution = 'counted') = (counted_amount IS NOT NULL AND counted_events IS NOT NULL)
    AND counted_amount >= 0 AND counted_events IN (0, 1));
