#!/usr/bin/env bash
# Runs Chronicle on this machine with local defaults: finds (or starts, or installs)
# PostgreSQL, finds a Kafka broker or starts tansu (installing it once), builds the
# release binary and runs every role in one process (`chronicle all`).
# Honours the CHRONICLE_* variables of the README's configuration table.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_postgres
export CHRONICLE_DATA_DIR="${CHRONICLE_DATA_DIR:-./data}"
mkdir -p "$CHRONICLE_DATA_DIR"
ensure_kafka 127.0.0.1:9092 "$CHRONICLE_DATA_DIR/broker"
trap stop_tansu EXIT
say "building (release)"
cargo build --release --quiet -p chronicle-api --bin chronicle
say "database: $(sed -E 's#//([^:@/]*):[^@/]*@#//\1:***@#' <<<"$CHRONICLE_DATABASE_URL")"
say "HTTP on ${CHRONICLE_HTTP_ADDR:-127.0.0.1:8080}; a client token: target/release/chronicle token --sub alice --role client"
target/release/chronicle all
