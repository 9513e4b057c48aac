#!/usr/bin/env bash
# The test suite, as CI runs it: fetch the test assets (idempotent), a Python venv (pyarrow,
# transformers, tensorboard), then every test of the workspace in the release profile (the parity
# tests run real BERT forward passes). Ends with one line totalling all test binaries:
# "tests: N passed, N failed".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/fetch-assets.sh
# Python packages that tests check our files against (pyarrow reads prep's parquet shards,
# transformers loads the vocabularies `bertkit vocab` writes, tensorboard reads our event files,
# onnxruntime runs our ONNX exports, tritonclient and openai call `bertkit serve`,
# opentelemetry-proto reads the spans it exports,
# huggingface_hub parses the model cards; no torch), in a
# venv outside the clone, reused when present.
VENV="${BERTKIT_VENV:-$HOME/.cache/bertkit/venv}"
if ! "$VENV/bin/python" -c "import pyarrow, transformers, tensorboard, onnxruntime, tritonclient.http, tritonclient.grpc, openai, opentelemetry.proto, huggingface_hub" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "pyarrow==26.0.1" "transformers==5.24.0" "tensorboard==2.21.0" \
        "onnxruntime==1.32.0" "tritonclient[http,grpc]==2.73.0" "openai==3.57.0" "opentelemetry-proto==1.45.2" \
        "huggingface_hub==2.4.0"
fi
export BERTKIT_PYTHON="$VENV/bin/python"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --release --workspace 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
