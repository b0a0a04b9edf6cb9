# Sourced by the other scripts: installs what a command needs from Debian's
# packages when it is missing, so `make run` and `make test` work on a
# machine that has only Go. As root it runs apt-get itself; otherwise it
# says exactly what to install and fails.
#
#   need COMMAND PACKAGE [WHY]   make sure COMMAND is on PATH
#   need_pkg PACKAGE [WHY]       make sure a Debian package is installed

_deps_updated=""

_deps_install() { # PACKAGE WHY
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "missing: $2; install Debian's $1 (sudo apt-get install $1) and run this again" >&2
    return 1
  fi
  echo "installing Debian's $1 ($2)..." >&2
  if [ -z "$_deps_updated" ]; then
    apt-get update -qq >&2 || { echo "apt-get update failed" >&2; return 1; }
    _deps_updated=1
  fi
  # A package's maintainer scripts must not start services here: the
  # project starts what it needs itself, on its own ports.
  local policy=/usr/sbin/policy-rc.d made=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" >&2
  local status=$?
  if [ -n "$made" ]; then rm -f "$policy"; fi
  if [ "$status" != 0 ]; then echo "installing $1 failed" >&2; return 1; fi
}

need() { # COMMAND PACKAGE [WHY]
  command -v "$1" >/dev/null 2>&1 && return 0
  _deps_install "$2" "${3:-$1}" || return 1
  command -v "$1" >/dev/null 2>&1 || { echo "$2 is installed but $1 is not on PATH" >&2; return 1; }
}

need_pkg() { # PACKAGE [WHY]
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed' && return 0
  _deps_install "$1" "${2:-$1}"
}
