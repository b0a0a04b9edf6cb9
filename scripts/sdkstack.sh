# Sourced by the SDKs' test scripts (scripts/sdk-python.sh,
# scripts/sdk-typescript.sh): starts tools/sdkstack for their end-to-end
# tests and stops it on exit.
#
#   sdkstack_start NAME   NAME prefixes the messages. Makes $work (a
#                         temporary directory, removed on exit), starts a
#                         throwaway Postgres in it when neither
#                         TEST_DATABASE_URL nor DATABASE_URL is set, builds
#                         and starts the stack, and exports its JSON line as
#                         METERING_SDKSTACK. On exit the stack is stopped by
#                         its PID (and stops by itself if the script dies: it
#                         watches its standard input, a pipe the script
#                         holds), then Postgres; on failure the stack's last
#                         log lines are shown.
# The caller runs it from the repository's root; it may change directory
# afterwards.

sdkstack_start() {
  _sdkstack_name=$1
  _sdkstack_root=$PWD
  work=$(mktemp -d)
  chmod 755 "$work" # the throwaway cluster's server runs as postgres when we are root
  _sdkstack_pid=""
  _sdkstack_pg=""
  trap _sdkstack_cleanup EXIT
  trap 'exit 130' INT TERM

  if [ -z "${TEST_DATABASE_URL:-}" ] && [ -z "${DATABASE_URL:-}" ]; then
    local port
    port=$(_sdkstack_free_port)
    TEST_DATABASE_URL=$(scripts/postgres.sh start "$work/pg" "$port")
    _sdkstack_pg=1
    export TEST_DATABASE_URL
  fi

  echo "$_sdkstack_name: building tools/sdkstack" >&2
  go build -o "$work/sdkstack" ./tools/sdkstack

  mkfifo "$work/stdin"
  "$work/sdkstack" <"$work/stdin" >"$work/sdkstack.json" 2>"$work/sdkstack.log" &
  _sdkstack_pid=$!
  exec 9>"$work/stdin" # held open until the script ends
  for _ in $(seq 1 1200); do
    [ -s "$work/sdkstack.json" ] && break
    if ! kill -0 "$_sdkstack_pid" 2>/dev/null; then
      echo "$_sdkstack_name: tools/sdkstack exited before it was ready" >&2
      exit 1
    fi
    sleep 0.1
  done
  if [ ! -s "$work/sdkstack.json" ]; then
    echo "$_sdkstack_name: tools/sdkstack was not ready within 120s" >&2
    exit 1
  fi
  METERING_SDKSTACK=$(head -n 1 "$work/sdkstack.json")
  export METERING_SDKSTACK
  echo "$_sdkstack_name: stack ready" >&2
}

# _sdkstack_free_port prints a loopback port nothing answers on.
_sdkstack_free_port() {
  local p
  for _ in $(seq 1 100); do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  echo "$_sdkstack_name: no free port found for Postgres" >&2
  return 1
}

_sdkstack_cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [ -n "$_sdkstack_pid" ]; then
    kill -TERM "$_sdkstack_pid" 2>/dev/null || true
    wait "$_sdkstack_pid" 2>/dev/null || true
  fi
  exec 9>&- 2>/dev/null || true
  if [ -n "$_sdkstack_pg" ]; then
    "$_sdkstack_root/scripts/postgres.sh" stop "$work/pg" >/dev/null || echo "$_sdkstack_name: could not stop the throwaway Postgres" >&2
  fi
  if [ "$status" != 0 ] && [ -s "$work/sdkstack.log" ]; then
    echo "--- last lines of the stack's log" >&2
    tail -n 30 "$work/sdkstack.log" >&2
  fi
  rm -rf "$work"
  exit "$status"
}
