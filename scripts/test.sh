#!/usr/bin/env bash
# `make test`: installs what the tests need when it is missing (Postgres,
# Chromium, kcat, a JDK and Maven from Debian's packages; stripe-mock with
# go install; the Apache Kafka broker's jars with mvn, cached outside the
# repository; schemathesis and the Python SDK's test tools from PyPI into
# virtualenvs; the TypeScript SDK's locked dev dependencies from npm, and
# Node.js 20 from npm when the machine's is older), starts a throwaway
# Postgres when none answers, then runs vet, every Go test with the race
# detector, schemathesis against the served OpenAPI document, the Python
# and TypeScript SDKs' suites, and the real-Kafka suite on each version in
# KAFKA_SUITE_VERSIONS. A missing dependency fails; nothing is
# skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh

need chromium chromium "headless Chromium drives the customer usage page in its test"
need kcat kcat "librdkafka's producer writes to usage.events in the real-Kafka suite"
need java default-jdk-headless "the Apache Kafka brokers of the real-Kafka suite"
need mvn maven "fetching the Apache Kafka broker's jars from Maven Central"
need psql postgresql-client "checking whether a Postgres answers"
need redis-server redis-server "the Redis baseline's tests (internal/testkit/redisbaseline)"

: "${TEST_DATABASE_URL:=postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}"
if ! psql "$TEST_DATABASE_URL" -Atc 'select 1' >/dev/null 2>&1; then
  echo "test: no Postgres at $TEST_DATABASE_URL; starting a throwaway one under .dev/pgtest" >&2
  TEST_DATABASE_URL=$(scripts/postgres.sh start .dev/pgtest 55433)
  pg_started=1
fi
sdk_pids=""
cleanup() {
  # SDK suites still running (a step before them failed) stop first:
  # their stacks use this Postgres.
  for pid in $sdk_pids; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in $sdk_pids; do wait "$pid" 2>/dev/null || true; done
  if [ -n "${pg_started:-}" ]; then scripts/postgres.sh stop .dev/pgtest; fi
}
trap cleanup EXIT
export TEST_DATABASE_URL

# stripe-mock validates the shape of every Stripe request in the contract tests.
STRIPE_MOCK_VERSION=v0.190.0
if ! command -v stripe-mock >/dev/null 2>&1 && [ ! -x "$(go env GOPATH)/bin/stripe-mock" ]; then
  echo "test: installing stripe-mock $STRIPE_MOCK_VERSION" >&2
  go install "github.com/stripe/stripe-mock@$STRIPE_MOCK_VERSION"
fi
export PATH="$PATH:$(go env GOPATH)/bin"

# The Kafka releases the real-Kafka suite runs on (fetched once, cached).
: "${KAFKA_SUITE_VERSIONS:=4.1.1 3.9.1}"
export KAFKA_SUITE_VERSIONS
for v in $KAFKA_SUITE_VERSIONS; do scripts/kafka-fetch.sh "$v" >/dev/null; done

go vet ./...
# The real-Kafka suite runs alone afterwards: its three brokers per
# scenario need the machine's cores to themselves.
go test -race -count=1 -timeout 15m $(go list ./... | grep -v /internal/testkit/kafkasuite)
# The SDKs' own suites (conformance vectors, unit tests, end to end on
# tools/sdkstack) run side by side with schemathesis: each mostly waits on
# its own stack. Each one's output is shown when it ends.
sdk_logs=$(mktemp -d)
scripts/sdk-python.sh >"$sdk_logs/python" 2>&1 & py_pid=$!
scripts/sdk-typescript.sh >"$sdk_logs/typescript" 2>&1 & ts_pid=$!
sdk_pids="$py_pid $ts_pid"
# schemathesis against the served OpenAPI document, with real keys.
scripts/schemathesis.sh
sdk_failed=""
for sdk in python typescript; do
  pid=$py_pid; [ "$sdk" = typescript ] && pid=$ts_pid
  if wait "$pid"; then status=ok; else status=FAILED; sdk_failed=1; fi
  echo "--- sdk-$sdk: $status"
  cat "$sdk_logs/$sdk"
done
sdk_pids=""
rm -rf "$sdk_logs"
[ -z "$sdk_failed" ] || { echo "test: an SDK suite failed" >&2; exit 1; }
go test -race -count=1 -timeout 30m -v -run TestOnApacheKafka ./internal/testkit/kafkasuite
