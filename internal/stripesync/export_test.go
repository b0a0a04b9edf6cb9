package stripesync

// SkipLandedCheck makes b send pushes older than DedupHorizon as they are,
// as the biller did before the check existed: tests use it to show the
// double count the check prevents.
func SkipLandedCheck(b *Biller) { b.skipLandedCheck = true }

// WithoutPlanningLocks makes b plan without the pair and group locks.
func WithoutPlanningLocks(b *Biller) { b.noPlanningLocks = true }

// AfterPlanningRead runs fn in b's planning of each pair, after the pair's
// claimed and metered totals were read and before its intent is recorded.
func AfterPlanningRead(b *Biller, fn func()) { b.afterPlanningRead = fn }
