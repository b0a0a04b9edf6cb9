#!/usr/bin/env bash
# `make test`: makes sure the tests' dependencies are there, then runs vet
# and every test with the race detector. A missing dependency fails.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${TEST_DATABASE_URL:=postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}"
if ! psql "$TEST_DATABASE_URL" -Atc 'select 1' >/dev/null 2>&1 && ! go run ./scripts/pgping "$TEST_DATABASE_URL" 2>/dev/null; then
  echo "test: no Postgres at $TEST_DATABASE_URL; starting a throwaway one under .dev/pgtest" >&2
  TEST_DATABASE_URL=$(scripts/postgres.sh start .dev/pgtest 55433)
  trap 'scripts/postgres.sh stop .dev/pgtest' EXIT
fi
export TEST_DATABASE_URL

# stripe-mock validates the shape of every Stripe request in the contract tests.
STRIPE_MOCK_VERSION=v0.190.0
if ! command -v stripe-mock >/dev/null 2>&1 && [ ! -x "$(go env GOPATH)/bin/stripe-mock" ]; then
  echo "test: installing stripe-mock $STRIPE_MOCK_VERSION" >&2
  go install "github.com/stripe/stripe-mock@$STRIPE_MOCK_VERSION"
fi
export PATH="$PATH:$(go env GOPATH)/bin"

# Headless Chromium drives the customer usage page in its test.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test: installing Debian's chromium" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "test: Chromium is missing; install Debian's chromium (sudo apt-get install chromium)" >&2
    exit 1
  fi
fi

go vet ./...
go test -race -count=1 -timeout 15m ./...
