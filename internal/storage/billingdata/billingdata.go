// Package billingdata owns the biller's state: the pushes sent (or to be
// sent) to Stripe, and what Stripe told us through webhooks (closed
// periods, the events seen, the objects' versions, meter errors), and
// the advisory locks under which billers plan and check pushes (locks.go).
//
// Invariant: a push row is recorded, with its deterministic identifier,
// before any call that sends it (a landed part, InsertLandedPart, is
// recorded as sent and never sent), and its status only moves along:
// intent → sent, dead or cancelled; dead → intent (replayed), discarded,
// sent or cancelled; sent → cancelled (cancelled in Stripe); cancelled and
// discarded are final. Each move of a push is conditional on the status
// it was read with, or made under its row lock (LockGroupPushes,
// LockStatus).
package billingdata
