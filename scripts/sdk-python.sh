#!/usr/bin/env bash
# Tests the Python SDK (sdk/python): installs it with its pinned test
# extras into a virtualenv outside the repository
# (${XDG_CACHE_HOME:-$HOME/.cache}/metering/sdk-python-venv), builds and
# starts tools/sdkstack (the pipeline with a fault proxy in front of
# ingest, on a fresh database in the Postgres of TEST_DATABASE_URL or
# DATABASE_URL, or in a throwaway cluster when neither is set), hands its
# JSON line to pytest as METERING_SDKSTACK, checks the SDK with ruff and
# mypy --strict, and runs every test of sdk/python/tests: the shared
# conformance vectors, the clients, the quota guard and middlewares, the
# example app, and the end-to-end run through fault storms.
# The stack is stopped by its PID on exit (and stops by itself if this
# script dies: it watches its standard input, a pipe this script holds).
#
#   SDK_PYTHON_PYTEST_ARGS  extra pytest arguments (such as "-k conformance")
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
. scripts/deps.sh

need python3 python3 "running the Python SDK's tests"
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "sdk-python: the Python SDK needs Python 3.10 or later; python3 is $(python3 -V 2>&1)" >&2
  exit 1
fi

cache="${XDG_CACHE_HOME:-$HOME/.cache}/metering"
venv="$cache/sdk-python-venv"
py="$venv/bin/python"
# The pinned test dependencies are installed when pyproject.toml changes;
# the SDK itself is reinstalled from this clone on every run.
stamp="$venv/.metering-deps-$(sha256sum sdk/python/pyproject.toml | cut -c1-16)"
if [ ! -e "$stamp" ] || ! "$py" -c 'import pytest, httpx, fastapi' 2>/dev/null; then
  echo "sdk-python: installing the SDK's test dependencies into $venv" >&2
  mkdir -p "$cache"
  if ! python3 -m venv --clear "$venv" >/dev/null 2>&1; then
    need_pkg python3-venv "creating the virtualenv the Python SDK is tested in"
    python3 -m venv --clear "$venv"
  fi
  "$py" -m pip install --quiet --disable-pip-version-check "hatchling==1.33.0"
  "$py" -m pip install --quiet --disable-pip-version-check "$root/sdk/python[test]"
  touch "$stamp"
fi
"$py" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation --force-reinstall \
  "$root/sdk/python"

work=$(mktemp -d)
chmod 755 "$work" # the throwaway cluster's server runs as postgres when we are root
stack_pid=""
pg_started=""
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [ -n "$stack_pid" ]; then
    kill -TERM "$stack_pid" 2>/dev/null || true
    wait "$stack_pid" 2>/dev/null || true
  fi
  exec 9>&- 2>/dev/null || true
  if [ -n "$pg_started" ]; then
    "$root/scripts/postgres.sh" stop "$work/pg" >/dev/null || echo "sdk-python: could not stop the throwaway Postgres" >&2
  fi
  if [ "$status" != 0 ] && [ -s "$work/sdkstack.log" ]; then
    echo "--- last lines of the stack's log" >&2
    tail -n 30 "$work/sdkstack.log" >&2
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "${TEST_DATABASE_URL:-}" ] && [ -z "${DATABASE_URL:-}" ]; then
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  TEST_DATABASE_URL=$("$root/scripts/postgres.sh" start "$work/pg" "$port")
  pg_started=1
  export TEST_DATABASE_URL
fi

echo "sdk-python: building tools/sdkstack" >&2
mkdir -p .dev/bin
go build -o .dev/bin/sdkstack ./tools/sdkstack

mkfifo "$work/stdin"
.dev/bin/sdkstack <"$work/stdin" >"$work/sdkstack.json" 2>"$work/sdkstack.log" &
stack_pid=$!
exec 9>"$work/stdin" # held open until this script ends
for _ in $(seq 1 1200); do
  [ -s "$work/sdkstack.json" ] && break
  if ! kill -0 "$stack_pid" 2>/dev/null; then
    echo "sdk-python: tools/sdkstack exited before it was ready" >&2
    exit 1
  fi
  sleep 0.1
done
if [ ! -s "$work/sdkstack.json" ]; then
  echo "sdk-python: tools/sdkstack was not ready within 120s" >&2
  exit 1
fi
METERING_SDKSTACK=$(head -n 1 "$work/sdkstack.json")
export METERING_SDKSTACK
echo "sdk-python: stack ready" >&2

# Lint and types first (ruff and mypy --strict, pinned in the test extras).
(
  cd sdk/python
  "$venv/bin/ruff" check --no-cache --quiet src tests examples
  "$venv/bin/ruff" format --no-cache --check --quiet src tests examples
  "$venv/bin/mypy" --cache-dir "$work/mypy-cache" --no-error-summary
)

# pytest keeps no cache in the repository; the tests read the shared
# vectors from testdata/conformance through their own path.
PYTHONDONTWRITEBYTECODE=1 "$py" -m pytest -p no:cacheprovider -q sdk/python/tests ${SDK_PYTHON_PYTEST_ARGS:-}
