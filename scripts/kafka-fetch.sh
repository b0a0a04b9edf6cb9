#!/usr/bin/env bash
# Fetches the jars of Apache Kafka VERSION (the broker, its tools and a
# logging binding) from Maven Central with mvn, into a cache outside the
# repository, and prints the directory holding them. Nothing else goes to
# stdout; progress and errors go to stderr.
#
#   scripts/kafka-fetch.sh 4.1.1    # or 3.9.1
#
# The cache is ${KAFKA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/metering/kafka}/VERSION/libs.
# A fetch writes into a temporary directory and renames it into place, so an
# interrupted fetch never leaves a partial cache; a present cache is reused.
# When java or mvn is missing, root with apt-get installs Debian's
# default-jdk-headless and maven; anyone else is told what to install.
set -euo pipefail

version=${1:?usage: kafka-fetch.sh VERSION (for example 4.1.1)}
if ! [[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
  echo "kafka-fetch.sh: bad Kafka version $version: want MAJOR.MINOR.PATCH, for example 4.1.1" >&2
  exit 2
fi
pom="$(cd "$(dirname "$0")" && pwd)/kafka/pom.xml"
cache=${KAFKA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/metering/kafka}
libs="$cache/$version/libs"

if [ -f "$libs/kafka_2.13-$version.jar" ]; then
  echo "$libs"
  exit 0
fi

missing=()
command -v java >/dev/null 2>&1 || missing+=(default-jdk-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "kafka-fetch.sh: installing Debian's ${missing[*]}" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  else
    echo "kafka-fetch.sh: Java 17+ and Maven are needed to fetch and run the Kafka broker;" \
      "install them (Debian: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

profile=kafka4
case $version in
0.* | 1.* | 2.*) echo "kafka-fetch.sh: Kafka $version has no KRaft broker; use 3.9.1 or later" >&2; exit 2 ;;
3.*) profile=kafka3 ;;
esac

mkdir -p "$cache/$version"
tmp=$(mktemp -d "$cache/$version/.libs.XXXXXX")
trap 'rm -rf "$tmp"; rmdir "$cache/$version" 2>/dev/null || true' EXIT
echo "kafka-fetch.sh: fetching Kafka $version from Maven Central into $libs" >&2
# Debian's Maven 3.8 writes stray colour resets even in batch mode: drop them.
mvn -B -q -Dstyle.color=never -f "$pom" -P "$profile" -Dkafka.version="$version" \
  dependency:copy-dependencies -DoutputDirectory="$tmp" 2>&1 | sed -e 's/\x1b\[0m//g' -e '/^$/d' >&2 ||
  { echo "kafka-fetch.sh: mvn could not fetch Kafka $version (is Maven Central reachable?)" >&2; exit 1; }
if [ ! -f "$tmp/kafka_2.13-$version.jar" ]; then
  echo "kafka-fetch.sh: mvn finished but kafka_2.13-$version.jar is missing" >&2
  exit 1
fi
# mktemp makes the directory private; whoever runs java must read it.
chmod 755 "$tmp"
# Another fetch of the same version may have won the race; keep its copy.
if ! mv -T "$tmp" "$libs" 2>/dev/null; then
  [ -f "$libs/kafka_2.13-$version.jar" ] || { echo "kafka-fetch.sh: cannot create $libs" >&2; exit 1; }
fi
echo "$libs"
