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
. scripts/sdkstack.sh

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

sdkstack_start sdk-python

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
