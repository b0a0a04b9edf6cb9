// Package billingdata owns the biller's state: the pushes sent (or to be
// sent) to Stripe, and what Stripe told us through webhooks (closed
// periods, the events seen, the objects' versions, meter errors).
//
// Invariant: a push row is recorded, with its deterministic identifier,
// before the call that sends it, and only moves forward: intent → sent,
// dead or cancelled (a dead push may be replayed, becoming an intent).
package billingdata
