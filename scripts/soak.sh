#!/usr/bin/env bash
# The soak: `chronicle all` under a steady mixed load for a long time (default 60 min),
# sampled every 10 s (bench/src/bin/soak.rs says what and how). Not part of CI. The
# table, verdict and plot go to docs/soak/ (soak.txt, soak.md, soak.csv,
# soak-memory.png).
#
#   scripts/soak.sh [--heap-profile] [-- --minutes M --rate R ...]
#
# --heap-profile runs a chronicle built with the dhat allocator: slow, so use a low rate;
# its profile is summarised into docs/soak/heap.txt (scripts/dhat-top.py).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

profile=""
if [ "${1:-}" = "--heap-profile" ]; then profile=1; shift; fi
[ "${1:-}" = "--" ] && shift

ensure_postgres
ensure_kafka 127.0.0.1:29092 target/soak-broker
trap stop_tansu EXIT
export CHRONICLE_TEST_DATABASE_URL="${CHRONICLE_TEST_DATABASE_URL:-$(sed -E 's#/[^/?]*(\?|$)#/postgres\1#' <<<"$CHRONICLE_DATABASE_URL")}"

say "building (release${profile:+, with the heap profiler})"
cargo build --release --quiet -p chronicle-bench --bin soak
cargo build --release --quiet -p chronicle-api ${profile:+--features heap-profile}
mkdir -p docs/soak
rm -f dhat-heap.json
out=docs/soak
[ -n "$profile" ] && out=target/soak-profiled
mkdir -p "$out"
target/release/soak --out "$out" "$@" 2>&1 | tee "$out/soak.txt"
if [ -n "$profile" ]; then
  mv dhat-heap.json "$out/dhat-heap.json"
  python3 scripts/dhat-top.py "$out/dhat-heap.json" | tee docs/soak/heap.txt
  say "rebuilding chronicle without the profiler"
  cargo build --release --quiet -p chronicle-api
fi
