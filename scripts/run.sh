#!/usr/bin/env bash
# Runs Chronicle on this machine with local defaults: finds (or starts, or installs)
# PostgreSQL, builds the release binary and runs every role in one process.
# Honours the CHRONICLE_* variables of the README's configuration table.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_postgres
export CHRONICLE_DATA_DIR="${CHRONICLE_DATA_DIR:-./data}"
mkdir -p "$CHRONICLE_DATA_DIR"
say "building (release)"
cargo build --release --quiet -p chronicle-api --bin chronicle
say "database: $(sed -E 's#//([^:@/]*):[^@/]*@#//\1:***@#' <<<"$CHRONICLE_DATABASE_URL")"
say "HTTP on ${CHRONICLE_HTTP_ADDR:-127.0.0.1:8080}; a client token: target/release/chronicle token --sub alice --role client"
exec target/release/chronicle serve
