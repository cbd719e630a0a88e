#!/usr/bin/env bash
# Runs the whole test suite: formatting and lints, then every unit, property and
# end-to-end test against the real PostgreSQL. Prints the test runner's summary.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_postgres
# Tests create (and drop) chronicle_test_* databases through the server's `postgres`
# database, with the same login.
export CHRONICLE_TEST_DATABASE_URL="${CHRONICLE_TEST_DATABASE_URL:-$(sed -E 's#/[^/?]*(\?|$)#/postgres\1#' <<<"$CHRONICLE_DATABASE_URL")}"
if command -v psql >/dev/null 2>&1; then
  # Leftovers of an interrupted earlier run.
  psql "$CHRONICLE_TEST_DATABASE_URL" -Atqc "select datname from pg_database where datname like 'chronicle_test_%'" 2>/dev/null |
    while read -r db; do psql "$CHRONICLE_TEST_DATABASE_URL" -qc "drop database if exists \"$db\" with (force)" >/dev/null 2>&1 || true; done
fi

say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy --all-targets -- -D warnings"
cargo clippy --quiet --workspace --all-targets -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  say "cargo-nextest not found; using cargo test"
  cargo test --workspace --no-fail-fast "$@"
fi
