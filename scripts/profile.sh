#!/usr/bin/env bash
# `make profile`: the pipeline of `make bench` (HTTP ingest → broker →
# aggregator → Postgres as processes) offered 60,000 events/s for 20 s,
# more than it sustains, so every process works flat out, with ingest,
# the aggregator, the biller and the broker built with a profiling hook
# (`go build -overlay`; the product's own builds never carry it). Each
# process's CPU profile, from the start of the load to 2 s after it, and its
# allocation profile (since it started) go to .dev/profiles (PROFILE_DIR),
# then the top of each is printed, and the statements that took the most
# of Postgres's time per event accepted (pg_stat_statements, loaded into
# the pipeline's private Postgres for the run). Arguments go to
# benchreport (-quick: 30,000 events/s for 5 s).
#
#   go tool pprof -http=: .dev/profiles/aggregator.cpu.pprof    to explore one
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh # Go is assumed, as everywhere; scripts/postgres.sh installs Postgres when missing

dir="${PROFILE_DIR:-.dev/profiles}"
mkdir -p "$dir"
go run ./tools/benchreport -profile "$dir" -statements "$@" | tee "$dir/run.txt"
for svc in ingest aggregator biller devbroker; do
  echo
  echo "=== $svc: CPU, top 10 (flat) ==="
  go tool pprof -top -nodecount=10 "$dir/$svc.cpu.pprof" 2>/dev/null | sed -n '/^Duration/,$p'
  echo "=== $svc: allocated bytes, top 10 (flat) ==="
  go tool pprof -top -nodecount=10 -sample_index=alloc_space "$dir/$svc.allocs.pprof" 2>/dev/null | sed -n '/flat%/,$p'
done
echo
sed -n '/^Postgres statements/,$p' "$dir/run.txt"
echo
echo "profiles in $dir (go tool pprof -http=: $dir/aggregator.cpu.pprof)"
