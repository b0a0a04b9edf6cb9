#!/usr/bin/env bash
# Starts (creating it first if needed) a private Postgres cluster in DIR on
# PORT with the local initdb/pg_ctl, and prints its URL. Used by `make run`
# when DATABASE_URL is unset and by `make test` when no Postgres answers.
#
#   scripts/postgres.sh start DIR PORT
#   scripts/postgres.sh stop DIR
set -euo pipefail

cmd=${1:?usage: postgres.sh start DIR PORT | stop DIR}
dir=${2:?missing DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

bindir=""
for c in "$(command -v pg_ctl 2>/dev/null || true)" /usr/lib/postgresql/*/bin/pg_ctl; do
  if [ -n "$c" ] && [ -x "$c" ]; then bindir=$(dirname "$c"); break; fi
done
if [ -z "$bindir" ]; then
  echo "postgres.sh: no pg_ctl found; install PostgreSQL (Debian: apt-get install postgresql) or set DATABASE_URL" >&2
  exit 1
fi

# initdb refuses to run as root: run the server as the postgres user then.
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    chown -R postgres "$dir"
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

case "$cmd" in
start)
  port=${3:?missing PORT}
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    mkdir -p "$dir/data"
    as_owner "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 ||
      { cat "$dir/initdb.log" >&2; exit 1; }
  fi
  if ! as_owner "$bindir/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null ||
      { tail -20 "$dir/postgres.log" >&2; exit 1; }
  fi
  echo "postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
  ;;
stop)
  if [ -f "$dir/data/PG_VERSION" ]; then
    as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  ;;
*)
  echo "postgres.sh: unknown command $cmd" >&2
  exit 2
  ;;
esac
