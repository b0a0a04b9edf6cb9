#!/usr/bin/env bash
# `make run`: the pipeline on one machine, no Docker. Postgres from
# DATABASE_URL or a private cluster under .dev/postgres; Kafka from
# KAFKA_BROKERS or the embedded broker (data under .dev/kafka). Data is
# kept between runs. Ctrl-C stops every process this script started.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
need curl curl "seeding the demo plans and waiting for the services"
DEV=${DEV_DIR:-.dev}
mkdir -p "$DEV/bin" "$DEV/logs"

pids=()
started_pg=""
cleanup() {
  trap - INT TERM EXIT
  echo
  echo "stopping..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$started_pg" ]; then scripts/postgres.sh stop "$DEV/postgres"; fi
  echo "stopped."
}
trap cleanup INT TERM EXIT

echo "building..."
go build -o "$DEV/bin/" ./cmd/... ./tools/devbroker ./tools/stripefake

wait_http() { # url seconds
  for _ in $(seq 1 $(( $2 * 10 ))); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "run: $1 did not become ready; see $DEV/logs/" >&2
  return 1
}

if [ -z "${DATABASE_URL:-}" ]; then
  need psql postgresql-client "creating the metering database"
  base=$(scripts/postgres.sh start "$DEV/postgres" 55432)
  started_pg=1
  psql "$base" -qc "CREATE DATABASE metering" 2>/dev/null || true
  DATABASE_URL=${base%/postgres*}/metering?sslmode=disable
fi
export DATABASE_URL

if [ -z "${KAFKA_BROKERS:-}" ]; then
  DATA_DIR="$DEV/kafka" KAFKA_ADDR=127.0.0.1:9092 "$DEV/bin/"devbroker >"$DEV/logs/"kafka.log 2>&1 &
  pids+=($!)
  KAFKA_BROKERS=127.0.0.1:9092
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null && break; sleep 0.1; done
fi
export KAFKA_BROKERS

saved_key=""
if [ -z "${ADMIN_API_KEY:-}" ]; then
  [ -f "$DEV/admin-key" ] || echo "mk_dev_$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')" >"$DEV/admin-key"
  ADMIN_API_KEY=$(cat "$DEV/admin-key")
  saved_key=1
fi
export ADMIN_API_KEY

# Adjustments are signed by ingest and verified by the aggregator with
# the same key; without one, ingest refuses them. Made once, kept in
# $DEV/adjustment-signing-keys, unless the caller sets its own.
if [ -z "${ADJUSTMENT_SIGNING_KEYS:-}" ] && [ -z "${ADJUSTMENT_SIGNING_KEYS_FILE:-}" ]; then
  if [ ! -s "$DEV/adjustment-signing-keys" ]; then
    (umask 077 && echo "dev-1=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')" >"$DEV/adjustment-signing-keys")
  fi
  export ADJUSTMENT_SIGNING_KEYS_FILE="$DEV/adjustment-signing-keys"
fi

start_ingest() {
  # The console (/console) reaches the biller's routes through ingest.
  HTTP_ADDR=127.0.0.1:8080 BILLER_URL=http://127.0.0.1:8082 "$DEV/bin/"ingest >>"$DEV/logs/"ingest.log 2>&1 &
  ingest_pid=$!
  pids+=("$ingest_pid")
  wait_http http://127.0.0.1:8080/readyz 60
}
: >"$DEV/logs/"ingest.log
start_ingest
# A bootstrap key revoked in an earlier run (DELETE /v1/admin/keys/bootstrap)
# is refused for good: make a new one when it is ours, stop when it is not.
if [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $ADMIN_API_KEY" \
  http://127.0.0.1:8080/v1/admin/plans)" = 401 ]; then
  if [ -z "$saved_key" ]; then
    echo "run: ADMIN_API_KEY is refused (revoked with DELETE /v1/admin/keys/bootstrap?); start with another value" >&2
    exit 1
  fi
  echo "the saved admin key was revoked; making a new one in $DEV/admin-key"
  echo "mk_dev_$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')" >"$DEV/admin-key"
  ADMIN_API_KEY=$(cat "$DEV/admin-key")
  kill -TERM "$ingest_pid" && wait "$ingest_pid" || true
  kept=()
  for pid in "${pids[@]}"; do [ "$pid" = "$ingest_pid" ] || kept+=("$pid"); done
  pids=("${kept[@]}")
  start_ingest
fi
HTTP_ADDR=127.0.0.1:8081 "$DEV/bin/"aggregator >"$DEV/logs/"aggregator.log 2>&1 &
pids+=($!)
wait_http http://127.0.0.1:8081/readyz 60

if [ -z "${STRIPE_API_KEY:-}" ]; then
  # The project's Stripe test server, with a meter per demo metric.
  "$DEV/bin/"stripefake -addr 127.0.0.1:12111 -meters api_calls,tokens >"$DEV/logs/"stripe.log 2>&1 &
  pids+=($!)
  STRIPE_API_KEY=sk_test_local
  STRIPE_API_BASE=http://127.0.0.1:12111
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/12111) 2>/dev/null && break; sleep 0.1; done
fi
export STRIPE_API_KEY STRIPE_API_BASE
: "${STRIPE_WEBHOOK_SECRET:=whsec_local_dev}"
: "${SYNC_INTERVAL:=10s}"
export STRIPE_WEBHOOK_SECRET SYNC_INTERVAL
HTTP_ADDR=127.0.0.1:8082 "$DEV/bin/"biller >"$DEV/logs/"biller.log 2>&1 &
pids+=($!)
wait_http http://127.0.0.1:8082/readyz 60

# Demo plans and tenants (idempotent: PUT replaces).
admin() { curl -fsS -X "$1" -H "Authorization: Bearer $ADMIN_API_KEY" -H 'Content-Type: application/json' \
  "http://127.0.0.1:8080$2" -d "$3" >/dev/null; }
admin PUT /v1/admin/plans/free '{"currency":"usd","quotas":[{"metric":"api_calls","limit":1000,"period":"month","burst_percent":20,"hard":true,"unit_price":"0.002"},{"metric":"tokens","limit":100000,"period":"month","unit_price":"0.000002"}]}'
admin PUT /v1/admin/plans/pro '{"currency":"usd","quotas":[{"metric":"api_calls","limit":100000,"period":"month","burst_percent":10,"unit_price":"0.001"},{"metric":"tokens","limit":null,"unit_price":"0.0000015"}]}'
admin PUT /v1/admin/tenants/acme '{"plan":"free","stripe_customer_id":"cus_acme"}'
admin PUT /v1/admin/tenants/globex '{"plan":"pro","stripe_customer_id":"cus_globex"}'
# The usage page is for a tenant's own people: it gets a read-only key,
# made afresh each run and expiring in a week.
READ_KEY=$(curl -fsS -X POST -H "Authorization: Bearer $ADMIN_API_KEY" -H 'Content-Type: application/json' \
  http://127.0.0.1:8080/v1/admin/keys -d '{"tenant":"acme","scope":"read","expires_in":"168h"}' |
  sed -n 's/.*"key":"\([^"]*\)".*/\1/p')

printf '%s\n' "${pids[@]}" >"$DEV/pids"

cat <<INFO

  metering is running.
    ingest API   http://127.0.0.1:8080   (health /healthz, readiness /readyz, metrics /metrics)
    aggregator   http://127.0.0.1:8081   (health, readiness, metrics)
    usage page   http://127.0.0.1:8080/ui?tenant=acme#key=$READ_KEY   (a read-only key of acme)
    console      http://127.0.0.1:8080/console   (sign in with the admin key, or a viewer key)
    biller       http://127.0.0.1:8082   (reconciliation /v1/reconciliation, webhooks /webhooks/stripe)
    Stripe       ${STRIPE_API_BASE:-api.stripe.com}   (syncs every $SYNC_INTERVAL)
    Kafka        $KAFKA_BROKERS
    Postgres     $(echo "$DATABASE_URL" | sed 's#//[^@]*@#//***@#')
    admin key    $ADMIN_API_KEY
    logs         $DEV/logs/

  try:
    curl -X POST http://127.0.0.1:8080/v1/events -H "Authorization: Bearer $ADMIN_API_KEY" -H "Content-Type: application/json" \\
      -d '{"id":"demo-1","tenant":"acme","metric":"api_calls","value":1,"time":"'"\$(date -u +%FT%TZ)"'"}'
    curl "http://127.0.0.1:8080/v1/usage?tenant=acme&metric=api_calls&window=hour" -H "Authorization: Bearer $ADMIN_API_KEY"
    curl http://127.0.0.1:8080/v1/quotas/acme -H "Authorization: Bearer $ADMIN_API_KEY"
    DATABASE_URL='$DATABASE_URL' STRIPE_API_KEY=$STRIPE_API_KEY STRIPE_API_BASE=${STRIPE_API_BASE:-} $DEV/bin/biller reconcile --period \$(date -u +%Y-%m)

  Ctrl-C stops everything; data stays in $DEV/ for the next run.
INFO

set +e
wait -n "${pids[@]}"
status=$?
set -e
# Ctrl-C reaches the services too; they stop cleanly with status 0.
if [ "$status" -ne 0 ]; then echo "a service exited with status $status; see $DEV/logs/" >&2; exit "$status"; fi
