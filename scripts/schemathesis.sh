#!/usr/bin/env bash
# Runs schemathesis against the OpenAPI document that ingest serves at
# /openapi.yaml, with real keys, and fails unless it finds nothing:
#
#   1. every ingest operation with an admin key (ADMIN_API_KEY),
#   2. the events and usage operations with a tenant key made through
#      POST /v1/admin/keys,
#   3. the biller's operations (reconciliation, Stripe webhooks) with the
#      admin key, the biller talking to the project's Stripe test server.
#
# It builds and starts what it needs on free ports: the embedded Kafka
# broker, ingest, the Stripe test server and the biller, on a fresh
# database in the Postgres of TEST_DATABASE_URL or DATABASE_URL, or in a
# throwaway cluster when neither is set. Everything it started is stopped
# on exit. schemathesis is installed once into a virtualenv outside the
# repository (${XDG_CACHE_HOME:-$HOME/.cache}/metering/schemathesis-venv);
# a failed install fails the run.
#
#   SCHEMATHESIS_EXAMPLES  test cases per operation and phase (default 30)
#   SCHEMATHESIS_SEED      the seed, so a run can be repeated (default 1)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
. scripts/deps.sh

SCHEMATHESIS_VERSION=4.32.5
examples=${SCHEMATHESIS_EXAMPLES:-30}
seed=${SCHEMATHESIS_SEED:-1}

need python3 python3 "running schemathesis"
need curl curl "waiting for the services and creating the tenant key"
need psql postgresql-client "creating the database of the run"

venv="${XDG_CACHE_HOME:-$HOME/.cache}/metering/schemathesis-venv"
st="$venv/bin/schemathesis"
if ! "$st" --version 2>/dev/null | grep -qx "schemathesis, version $SCHEMATHESIS_VERSION"; then
  echo "schemathesis: installing schemathesis $SCHEMATHESIS_VERSION into $venv" >&2
  mkdir -p "$(dirname "$venv")"
  if ! python3 -m venv --clear "$venv" >/dev/null 2>&1; then
    need_pkg python3-venv "creating the virtualenv schemathesis runs in"
    python3 -m venv --clear "$venv"
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
  "$st" --version | grep -qx "schemathesis, version $SCHEMATHESIS_VERSION"
fi

work=$(mktemp -d)
chmod 755 "$work" # the throwaway cluster's server runs as postgres when we are root
pids=()
pg_started=""
admin_db=""
db=""
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$db" ] && [ -z "$pg_started" ]; then
    psql "$admin_db" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  if [ -n "$pg_started" ]; then
    "$root/scripts/postgres.sh" stop "$work/pg" >/dev/null || echo "schemathesis: could not stop the throwaway Postgres" >&2
  fi
  if [ "$status" != 0 ]; then
    for log in "$work"/*.log; do
      [ -s "$log" ] && { echo "--- last lines of $(basename "$log")" >&2; tail -n 20 "$log" >&2; }
    done
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_tcp() { # port name
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "schemathesis: $2 did not listen on port $1" >&2
  return 1
}
wait_http() { # url name
  for _ in $(seq 1 300); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "schemathesis: $2 did not become ready at $1" >&2
  return 1
}

echo "schemathesis: building the services" >&2
go build -o "$work/bin/" ./cmd/ingest ./tools/devbroker ./cmd/biller ./tools/stripefake

admin_db=${TEST_DATABASE_URL:-${DATABASE_URL:-}}
if [ -z "$admin_db" ]; then
  admin_db=$("$root/scripts/postgres.sh" start "$work/pg" "$(free_port)")
  pg_started=1
fi
db="metering_schemathesis_$$_$RANDOM"
psql "$admin_db" -qc "CREATE DATABASE $db" >/dev/null
export DATABASE_URL
DATABASE_URL=$(python3 - "$admin_db" "$db" <<'EOF'
import sys, urllib.parse
u = urllib.parse.urlsplit(sys.argv[1])
print(urllib.parse.urlunsplit(u._replace(path="/" + sys.argv[2])))
EOF
)

kafka_port=$(free_port)
KAFKA_ADDR=127.0.0.1:$kafka_port DATA_DIR="$work/kafka" "$work/bin/devbroker" >"$work/kafka.log" 2>&1 &
pids+=($!)
wait_tcp "$kafka_port" "the Kafka broker"
export KAFKA_BROKERS=127.0.0.1:$kafka_port

admin_key="mk_schemathesis_$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
ingest="http://127.0.0.1:$(free_port)"
# A signing key, so that POST /v1/admin/adjustments is exercised past 503.
HTTP_ADDR=${ingest#http://} ADMIN_API_KEY=$admin_key \
  ADJUSTMENT_SIGNING_KEYS="schemathesis=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')" \
  "$work/bin/ingest" >"$work/ingest.log" 2>&1 &
pids+=($!)
wait_http "$ingest/readyz" ingest

stripe_port=$(free_port)
"$work/bin/stripefake" -addr "127.0.0.1:$stripe_port" -meters api_calls,tokens >"$work/stripe.log" 2>&1 &
pids+=($!)
wait_tcp "$stripe_port" "the Stripe test server"
biller="http://127.0.0.1:$(free_port)"
HTTP_ADDR=${biller#http://} ADMIN_API_KEY=$admin_key STRIPE_API_KEY=sk_test_schemathesis \
  STRIPE_API_BASE="http://127.0.0.1:$stripe_port" STRIPE_WEBHOOK_SECRET="whsec_$RANDOM$RANDOM" SYNC_INTERVAL=1h \
  "$work/bin/biller" >"$work/biller.log" 2>&1 &
pids+=($!)
wait_http "$biller/readyz" biller

# schemathesis keeps its example database and cache in the working
# directory: the run's own, not the repository.
cd "$work"
export SCHEMATHESIS_HOOKS=hooks PYTHONPATH="$root/scripts/schemathesis" PYTHONDONTWRITEBYTECODE=1
failed=()
run() { # name key url [schemathesis options]
  local name=$1 key=$2 url=$3
  shift 3
  echo "schemathesis: $name" >&2
  if ! "$st" --config-file "$root/scripts/schemathesis/schemathesis.toml" --no-color run "$ingest/openapi.yaml" \
    --url "$url" -H "Authorization: Bearer $key" --max-examples "$examples" --seed "$seed" \
    --request-timeout 10 "$@"; then
    failed+=("$name")
  fi
}
run "ingest, admin key" "$admin_key" "$ingest" --exclude-tag billing
# The tenant key is made after the admin run, which revokes and rotates
# the keys it finds (a key made before it answered only 401 to the tenant
# run). Keys are only for existing tenants: acme is made anew, no plan.
curl -fsS -o /dev/null -X PUT "$ingest/v1/admin/tenants/acme" -H "Authorization: Bearer $admin_key" \
  -H 'Content-Type: application/json' -d '{}'
tenant_key=$(curl -fsS -X POST "$ingest/v1/admin/keys" -H "Authorization: Bearer $admin_key" \
  -H 'Content-Type: application/json' -d '{"tenant":"acme"}' |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])')
run "ingest, tenant key" "$tenant_key" "$ingest" --include-tag events --include-tag usage
run "biller, admin key" "$admin_key" "$biller" --include-tag billing --include-tag operations

if [ "${#failed[@]}" -gt 0 ]; then
  echo "schemathesis: failures in: ${failed[*]}" >&2
  exit 1
fi
echo "schemathesis: 0 failures (ingest with an admin key and a tenant key, biller; seed $seed, $examples examples)" >&2
