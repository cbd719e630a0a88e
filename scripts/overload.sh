#!/usr/bin/env bash
# Overload: `chronicle all` under an open-loop load at twice its measured capacity
# (bench/src/bin/overload.rs says how). Not part of CI. The report, CSV and plot go to
# docs/overload/ (overload.txt, overload.md, overload.csv, overload.png).
#
#   scripts/overload.sh [-- --factor F --overload-seconds S ...]
#
# Wants a quiet machine: nothing else running.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
[ "${1:-}" = "--" ] && shift

ensure_postgres
ensure_kafka 127.0.0.1:29092 target/overload-broker
trap stop_tansu EXIT
export CHRONICLE_TEST_DATABASE_URL="${CHRONICLE_TEST_DATABASE_URL:-$(sed -E 's#/[^/?]*(\?|$)#/postgres\1#' <<<"$CHRONICLE_DATABASE_URL")}"

say "building (release)"
cargo build --release --quiet -p chronicle-bench --bin overload
cargo build --release --quiet -p chronicle-api
mkdir -p docs/overload
target/release/overload --out docs/overload "$@" 2>&1 | tee docs/overload/overload.txt

# The fault suite's page keeps the latest overload figures beside its table, between
# markers the suite's --write preserves.
python3 - docs/faults.md docs/overload/overload.md <<'PY'
import sys
page_path, report_path = sys.argv[1], sys.argv[2]
begin, end = "<!-- overload -->", "<!-- /overload -->"
page = open(page_path).read()
report = open(report_path).read().strip()
section = f"{begin}\n{report}\n\nFrom `scripts/overload.sh`; the per-second figures and the plot are in [overload/](overload/), the run before admission in [overload/before.md](overload/before.md), the reasoning in [ADR 0021](adr/0021-admission.md).\n{end}"
if begin in page and end in page:
    head, rest = page.split(begin, 1)
    page = head + section + rest.split(end, 1)[1]
else:
    page = page.rstrip() + "\n\n" + section + "\n"
open(page_path, "w").write(page)
PY
say "the overload figures are in docs/overload/ and docs/faults.md"
