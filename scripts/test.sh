#!/usr/bin/env bash
# The test suite, as CI runs it: fetch the test assets (idempotent), then every test of the
# workspace in the release profile (the parity tests run real BERT forward passes). Ends with one
# line totalling all test binaries: "tests: N passed, N failed".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/fetch-assets.sh
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --release --workspace 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
