#!/usr/bin/env bash
# Runs the benchmark programs with everything they need: PostgreSQL, a tansu broker of
# their own (127.0.0.1:29092, durable SQLite storage), the command benchmark's peers
# (Python eventsourcing in a virtualenv, esrs built outside the workspace, Emmett
# installed with npm ci; all under target/), release builds. Each program's output is kept in docs/bench/<name>.txt, its plots in
# docs/bench/*.png.
#
#   scripts/bench.sh [commands|pipeline|process|search|search-1m|replay|all] [-- extra args]
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

# esrs's sqlx needs OpenSSL's headers (native-tls); Debian ships them as libssl-dev.
if ! pkg-config --exists openssl 2>/dev/null; then
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 ||
    die "the esrs peer needs OpenSSL's headers and pkg-config (Debian: apt-get install libssl-dev pkg-config)"
  say "installing libssl-dev and pkg-config for the esrs peer"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libssl-dev pkg-config >/dev/null
fi
say "building the esrs peer into target/bench-esrs"
cargo build --release --quiet --locked --manifest-path bench/peer/esrs/Cargo.toml \
  --target-dir target/bench-esrs

emmett=target/bench-emmett
if ! command -v npm >/dev/null 2>&1; then
  say "npm not found: the Emmett peer will be reported as skipped (it needs Node.js 20 and npm)"
elif [ ! -d "$emmett/node_modules" ] || ! cmp -s bench/peer/emmett/package-lock.json "$emmett/package-lock.json"; then
  say "installing the Emmett peer into $emmett"
  rm -rf "$emmett" && mkdir -p "$emmett"
  cp bench/peer/emmett/package.json bench/peer/emmett/package-lock.json "$emmett/"
  (cd "$emmett" && npm ci --no-audit --no-fund --loglevel=error)
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
  process|all) run process target/release/process ;;&
  search|all) run search-100k target/release/search 100000 2000 ;;&
  search-1m|all) run search-1m target/release/search 1000000 2000 ;;&
  replay|all) run replay target/release/replay 200000 1000000 ;;&
  commands|pipeline|process|search|search-1m|replay|all) ;;
  *) die "unknown benchmark $what (commands, pipeline, process, search, search-1m, replay, all)" ;;
esac
