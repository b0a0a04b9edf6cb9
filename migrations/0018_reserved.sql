-- Reserved: this version belongs to a change developed alongside credit grants
-- (0019). It changes nothing here, so that the migrator, which wants
-- versions without gaps, can apply 0019; the change that owns this
-- number replaces this file with its own.
SELECT 1;
