#!/usr/bin/env bash
# The fault-injection suite: builds Chronicle, then, under load, injects one fault at a
# time and checks nothing acknowledged was lost and nothing happened twice:
#   kill -9 of `chronicle all`, of the projector, of the relay; the broker stopped for
#   10 s; PostgreSQL restarted; every message delivered again, newest first; the
#   connection pool exhausted by a session holding `events` locked for 15 s (answers
#   must be prompt 503s); network partitions between Chronicle and the broker and
#   between Chronicle and PostgreSQL for 20 s; the broker's and the search index's disk
#   full for 20 s; the clock jumping forward an hour.
# Each scenario runs its own tansu broker (so it can be stopped) and database. The
# partition, disk and clock rows build a network namespace, mount small filesystems and
# start a PostgreSQL cluster of their own under libfaketime: they need root (ADR 0032).
# Pass --write docs/faults.md to keep the table, --only <Fault> to run one.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_postgres
install_tansu
install_faketime
export CHRONICLE_TEST_DATABASE_URL="${CHRONICLE_TEST_DATABASE_URL:-$(sed -E 's#/[^/?]*(\?|$)#/postgres\1#' <<<"$CHRONICLE_DATABASE_URL")}"
say "building the binaries the fault suite drives"
cargo build --quiet -p chronicle-api -p chronicle-replay -p chronicle-tests --bins
export TANSU_BIN="$TANSU_BIN" CHRONICLE_BIN="$PWD/target/debug/chronicle" CHRONICLE_REPLAY_BIN="$PWD/target/debug/chronicle-replay"
exec target/debug/faults "$@"
