// Package testkit holds nothing itself: its subpackages are the project's
// test and dev tooling, kept apart from the product under internal/. The
// dev binaries built from them are under tools/; cmd/ holds only the three
// services.
//
//   - test helpers, which take a testing.TB and may import testing: pgtest
//     (a fresh database per test), metertruth (meter windows folded in
//     plain Go), kafkatest (an in-process broker),
//     stripemock, testpki, stack/stacktest;
//   - tooling the dev binaries link, which must not import testing:
//     stack, chaos, loadgen, benchreport, stripefake, kafkacluster,
//     redisbaseline;
//   - suites that hold only tests: kafkasuite, postgrestls.
//
// Invariant: no product package imports a testkit package, only tests and
// test helpers import testing, and no binary under cmd/ or tools/ links it
// (TestToolingStaysApart).
package testkit
