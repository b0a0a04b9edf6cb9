package billing

// SkipLandedCheck makes b send pushes older than DedupHorizon as they are,
// as the biller did before the check existed: tests use it to show the
// double count the check prevents.
func SkipLandedCheck(b *Biller) { b.skipLandedCheck = true }
