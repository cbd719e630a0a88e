#!/usr/bin/env bash
# Runs the benchmark programs with everything they need: PostgreSQL, a tansu broker of
# their own (127.0.0.1:29092, durable SQLite storage), the Python peer's virtualenv,
# release builds. Each program's output is kept in docs/bench/<name>.txt, its plots in
# docs/bench/*.png.
#
#   scripts/bench.sh [commands|pipeline|search|search-1m|replay|all] [-- extra args]
#
# Benchmarks want a quiet machine: nothing else running.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

what="${1:-all}"; shift || true
[ "${1:-}" = "--" ] && shift

ensure_postgres
ensure_kafka 127.0.0.1:29092 target/bench-broker
trap stop_tansu EXIT
export CHRONICLE_TEST_DATABASE_URL="${CHRONICLE_TEST_DATABASE_URL:-$(sed -E 's#/[^/?]*(\?|$)#/postgres\1#' <<<"$CHRONICLE_DATABASE_URL")}"

pyenv=target/bench-pyenv
if [ ! -x "$pyenv/bin/python" ] || ! cmp -s bench/peer/requirements.txt "$pyenv/requirements.txt"; then
  say "installing the Python peer (eventsourcing) into $pyenv"
  python3 -m venv "$pyenv"
  "$pyenv/bin/pip" install --quiet --disable-pip-version-check -r bench/peer/requirements.txt
  cp bench/peer/requirements.txt "$pyenv/requirements.txt"
fi

say "building (release)"
cargo build --release --quiet -p chronicle-api -p chronicle-replay -p chronicle-bench
mkdir -p docs/bench

run() {
  local name="$1"; shift
  say "benchmark: $name"
  "$@" 2>&1 | tee "docs/bench/$name.txt"
}

case "$what" in
  commands|all) run commands target/release/commands --out docs/bench "$@" ;;&
  pipeline|all) run pipeline target/release/pipeline "$@" ;;&
  search|all) run search-100k target/release/search 100000 2000 ;;&
  search-1m|all) run search-1m target/release/search 1000000 2000 ;;&
  replay|all) run replay target/release/replay 200000 1000000 ;;&
  commands|pipeline|search|search-1m|replay|all) ;;
  *) die "unknown benchmark $what (commands, pipeline, search, search-1m, replay, all)" ;;
esac
