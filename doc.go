// Package metering is usage metering for platform teams: services emit
// idempotent usage events, an aggregator rolls them exactly once into
// per-tenant windows in Postgres and flags quota breaches, and a biller
// reconciles every tenant's totals with Stripe. Producers import the
// events package; the binaries are under cmd/. See README.md.
package metering
