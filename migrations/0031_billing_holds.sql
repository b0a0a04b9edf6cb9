-- Billing held on anomalies.
--
-- plan_versions.hold_on_anomaly
--   NULL (the default): the plan's pushes are never held. Otherwise
--   {"factor": "10", "window": 20}: a push whose delta is more than factor
--   times the baseline of its (tenant, meter, group) is held until an
--   operator approves or rejects it. The baseline is the median of the
--   deltas of that key's last `window` pushes (sent, intent or dead, of any
--   period); a key with no such push is never held.
ALTER TABLE plan_versions ADD COLUMN hold_on_anomaly jsonb;

-- billing_pushes.status 'held': planned and claimed (it counts in the
-- claimed total, so no later sync plans its delta again) but not sent
-- until approved (back to 'intent', same identifier) or rejected
-- ('discarded', drift for finance). hold_reason says why it was held,
-- hold_note the operator's note of the decision.
ALTER TABLE billing_pushes DROP CONSTRAINT billing_pushes_status_check;
ALTER TABLE billing_pushes ADD CONSTRAINT billing_pushes_status_check
    CHECK (status IN ('intent', 'sent', 'dead', 'discarded', 'cancelled', 'held'));
ALTER TABLE billing_pushes
    ADD COLUMN hold_reason text NOT NULL DEFAULT '',
    ADD COLUMN hold_note   text NOT NULL DEFAULT '';
CREATE INDEX billing_pushes_held ON billing_pushes (tenant, metric, group_key, period_start) WHERE status = 'held';
