#!/usr/bin/env bash
# The test suite, as CI runs it: fetch the test assets (idempotent), then every test of the
# workspace in the release profile (the parity tests run real BERT forward passes).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/fetch-assets.sh
cargo test --release --workspace
