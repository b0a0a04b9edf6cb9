#!/usr/bin/env bash
# Starts (creating it first if needed) a private Postgres cluster for DIR on
# PORT with the local initdb/pg_ctl, installing Debian's postgresql when
# they are missing, and prints its URL. Used by `make run` when DATABASE_URL
# is unset and by `make test` when no Postgres answers.
#
#   scripts/postgres.sh start DIR PORT
#   scripts/postgres.sh stop DIR
#   scripts/postgres.sh datadir DIR      where DIR's cluster keeps its data
#
# initdb and the server refuse to run as root, so as root they run as the
# postgres user. That user cannot reach DIR when the clone sits in a
# private (0700) home; the cluster then lives under the postgres user's
# home instead, at a place derived from DIR's absolute path, so the next
# start finds the same data again.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/deps.sh"

cmd=${1:?usage: postgres.sh start DIR PORT | stop DIR | datadir DIR}
dir=${2:?missing DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

find_bindir() {
  local c
  for c in "$(command -v pg_ctl 2>/dev/null || true)" /usr/lib/postgresql/*/bin/pg_ctl; do
    if [ -n "$c" ] && [ -x "$c" ]; then dirname "$(readlink -f "$c")"; return 0; fi
  done
  return 1
}

bindir=$(find_bindir || true)
if [ -z "$bindir" ] && [ "$cmd" = start ]; then
  need_pkg postgresql "a private Postgres for the stack or the tests (or set DATABASE_URL)"
  bindir=$(find_bindir || true)
fi
if [ -z "$bindir" ]; then
  [ "$cmd" = stop ] && exit 0
  echo "postgres.sh: no pg_ctl found; install PostgreSQL (Debian: apt-get install postgresql) or set DATABASE_URL" >&2
  exit 1
fi

as_root=""
[ "$(id -u)" = 0 ] && as_root=1

# The directory the server's files live in.
home=$dir
if [ -n "$as_root" ]; then
  if ! id postgres >/dev/null 2>&1; then
    echo "postgres.sh: running as root needs the postgres user (Debian's postgresql package creates it)" >&2
    exit 1
  fi
  if ! runuser -u postgres -- test -x "$dir" 2>/dev/null; then
    pghome=$(getent passwd postgres | cut -d: -f6)
    [ -d "$pghome" ] || pghome=/var/lib/postgresql
    home="$pghome/metering-clusters/$(printf '%s' "$dir" | sha256sum | cut -c1-16)"
    mkdir -p "$home"
    chown postgres "$pghome/metering-clusters" "$home"
    printf '%s\n' "$home" >"$dir/location"
  fi
fi

# Runs a server command as the user that owns the cluster.
as_owner() {
  if [ -n "$as_root" ]; then
    chown -R postgres "$home"
    # From a directory the postgres user can enter, not the caller's.
    (cd "$home" && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

case "$cmd" in
start)
  port=${3:?missing PORT}
  if [ ! -f "$home/data/PG_VERSION" ]; then
    mkdir -p "$home/data"
    as_owner "$bindir/initdb" -D "$home/data" -U postgres --auth=trust -E UTF8 >"$home/initdb.log" 2>&1 ||
      { cat "$home/initdb.log" >&2; exit 1; }
  fi
  if ! as_owner "$bindir/pg_ctl" -D "$home/data" status >/dev/null 2>&1; then
    as_owner "$bindir/pg_ctl" -D "$home/data" -l "$home/postgres.log" -w -t 60 \
      -o "-p $port -k $home -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null ||
      { tail -20 "$home/postgres.log" >&2; exit 1; }
  fi
  echo "postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
  ;;
stop)
  if [ -f "$home/data/PG_VERSION" ]; then
    as_owner "$bindir/pg_ctl" -D "$home/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  ;;
datadir)
  echo "$home/data"
  ;;
*)
  echo "postgres.sh: unknown command $cmd" >&2
  exit 2
  ;;
esac
