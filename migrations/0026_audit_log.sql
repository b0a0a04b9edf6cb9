-- One audit log: every mutation made through the admin API or an operator
-- command appends one row to audit_log, dead-letter actions included.
--
-- note   why, as the actor said it (--note, a void's reason); '' for none.
-- The filters of GET /v1/admin/audit (actor, action and target, each
-- exact or by prefix, newest first) are served by the indexes below.
ALTER TABLE audit_log ADD COLUMN note text NOT NULL DEFAULT '';

DROP INDEX audit_log_target;
CREATE INDEX audit_log_target ON audit_log (target text_pattern_ops, id);
CREATE INDEX audit_log_action ON audit_log (action text_pattern_ops, id);
CREATE INDEX audit_log_actor ON audit_log (actor text_pattern_ops, id);
CREATE INDEX audit_log_at ON audit_log (at, id);

-- dlq_audit's rows become audit_log rows, one per record acted on, in
-- the order they were made: actions dlq.usage.replay, dlq.usage.discard,
-- dlq.billing.replay, dlq.billing.discard, credits.resend; targets
-- usage_dlq:<id>, billing_push:<id>, billing_credit:<id>; the actor (an
-- operator command's) as cli:<actor>. Then dlq_audit goes.
INSERT INTO audit_log (at, actor, action, target, before, after, note)
SELECT d.at,
       'cli:' || d.actor,
       CASE d.queue WHEN 'credits' THEN 'credits.' || d.action ELSE 'dlq.' || d.queue || '.' || d.action END,
       CASE d.queue WHEN 'usage' THEN 'usage_dlq:' WHEN 'billing' THEN 'billing_push:' ELSE 'billing_credit:' END || r.id,
       jsonb_build_object('status', CASE d.queue WHEN 'usage' THEN 'pending' ELSE 'dead' END),
       CASE
           WHEN d.queue = 'credits' THEN jsonb_build_object('status', 'dead', 'resend', true)
           WHEN d.action = 'replay' AND d.queue = 'usage' THEN jsonb_build_object('status', 'replayed')
           WHEN d.action = 'replay' THEN jsonb_build_object('status', 'intent')
           ELSE jsonb_build_object('status', 'discarded')
       END,
       d.note
FROM dlq_audit d, unnest(d.record_ids) WITH ORDINALITY AS r (id, n)
ORDER BY d.at, d.id, r.n;

DROP TABLE dlq_audit;
