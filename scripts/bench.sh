#!/usr/bin/env bash
# `make bench` and `make bench-quick`: runs tools/benchreport (every
# benchmark in one run, each figure beside its baseline) with the
# Postgres of TEST_DATABASE_URL, or, when none answers, a throwaway one
# under .dev/pgbench that is stopped on exit, as `make test` does. The
# pipeline steps start their own private cluster; the Redis baseline
# starts its own private redis-server. Arguments go to benchreport
# (-quick).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh

need psql postgresql-client "checking whether a Postgres answers"
need redis-server redis-server "the Redis baseline measured beside the aggregator"

: "${TEST_DATABASE_URL:=postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}"
if ! psql "$TEST_DATABASE_URL" -Atc 'select 1' >/dev/null 2>&1; then
  echo "bench: no Postgres at $TEST_DATABASE_URL; starting a throwaway one under .dev/pgbench" >&2
  TEST_DATABASE_URL=$(scripts/postgres.sh start .dev/pgbench 55434)
  trap 'scripts/postgres.sh stop .dev/pgbench' EXIT
fi
export TEST_DATABASE_URL
go run ./tools/benchreport "$@"
