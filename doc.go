// Package metering is usage metering for platform teams: services emit
// idempotent usage events, an aggregator rolls them exactly once into
// per-tenant windows in Postgres and flags quota breaches, and a biller
// reconciles every tenant's totals with Stripe. Producers import the
// events package; the services are under cmd/, the dev tools under tools/
// and the test harnesses under internal/testkit. See README.md.
package metering
