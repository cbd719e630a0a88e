#!/usr/bin/env bash
# Runs the whole test suite: formatting and lints, then every unit, property and
# end-to-end test against the real PostgreSQL and a real Kafka-protocol broker (tansu,
# installed once and started here, unless CHRONICLE_KAFKA_BROKERS names one).
# Prints the test runner's summary.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_postgres
# The tests' own broker, on a port of its own so a running dev broker is left alone;
# fresh storage each run (tests use topics of their own and need nothing from before).
if [ -z "${CHRONICLE_KAFKA_BROKERS:-}" ] && ! tcp_open 127.0.0.1 19092; then rm -rf target/test-broker; fi
ensure_kafka 127.0.0.1:19092 "target/test-broker"
trap stop_tansu EXIT
# Tests create (and drop) chronicle_test_* databases through the server's `postgres`
# database, with the same login.
export CHRONICLE_TEST_DATABASE_URL="${CHRONICLE_TEST_DATABASE_URL:-$(sed -E 's#/[^/?]*(\?|$)#/postgres\1#' <<<"$CHRONICLE_DATABASE_URL")}"
if command -v psql >/dev/null 2>&1; then
  # Leftovers of an interrupted earlier run.
  psql "$CHRONICLE_TEST_DATABASE_URL" -Atqc "select datname from pg_database where datname like 'chronicle_test_%'" 2>/dev/null |
    while read -r db; do psql "$CHRONICLE_TEST_DATABASE_URL" -qc "drop database if exists \"$db\" with (force)" >/dev/null 2>&1 || true; done
fi

# Python tools from PyPI, in a virtual environment of the test run's own: an
# independent Kafka client (kafka-python) for the envelope interoperability test,
# schemathesis for the schema-driven fuzz run against the OpenAPI document, and
# cryptography (Ed25519) for the third-party checkpoint proof verifier.
if [ ! -x target/pyenv/bin/python ] ||
   ! target/pyenv/bin/python -c 'import kafka, cryptography' 2>/dev/null ||
   [ ! -x target/pyenv/bin/schemathesis ]; then
  say "preparing a Python environment with kafka-python, schemathesis and cryptography"
  python3 -m venv target/pyenv &&
    target/pyenv/bin/pip install --quiet 'kafka-python==3.0.12' 'schemathesis==4.32.5' \
      'cryptography==46.0.3' ||
    die "could not install kafka-python, schemathesis and cryptography from PyPI"
fi
export CHRONICLE_TEST_PYTHON="${CHRONICLE_TEST_PYTHON:-$PWD/target/pyenv/bin/python}"
export CHRONICLE_TEST_SCHEMATHESIS="${CHRONICLE_TEST_SCHEMATHESIS:-$PWD/target/pyenv/bin/schemathesis}"

# Debian's chromium and chromedriver for the console's browser tests.
install_chromium

say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy --all-targets -- -D warnings"
cargo clippy --quiet --workspace --all-targets -- -D warnings

# The fault-injection suite first (about ten minutes; CHRONICLE_SKIP_FAULTS=1 skips it),
# so the test runner's summary is the last thing printed.
if [ "${CHRONICLE_SKIP_FAULTS:-0}" != 1 ]; then
  say "fault-injection suite (scripts/faults.sh)"
  ./scripts/faults.sh
fi

# The console's browser tests drive the real binary (`chronicle all`): build it as it is now.
say "building chronicle for the browser tests"
cargo build --quiet -p chronicle-api --bin chronicle

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  say "cargo-nextest not found; using cargo test"
  cargo test --workspace --no-fail-fast "$@"
fi
