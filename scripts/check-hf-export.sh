#!/usr/bin/env bash
# Export every reference model with `bertkit convert --to hf` and check that Hugging Face
# transformers loads each exported folder and reproduces the reference outputs
# (scripts/check_hf_export.py). Needs a Python with torch + transformers:
#
#   python3 -m venv .venv && .venv/bin/pip install torch transformers safetensors numpy
#   PYTHON=.venv/bin/python scripts/check-hf-export.sh
#
# Not part of CI: torch from PyPI is a multi-GB download. Its output is in docs/HF_EXPORT.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
scripts/fetch-assets.sh >&2
cargo build --release --quiet
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
REF=tests/fixtures/hf-reference
check() {  # SRC REFERENCE_JSON
    local dst="$OUT/$(basename "$1")"
    target/release/bertkit convert --to hf "$1" "$dst"
    HF_HUB_OFFLINE=1 "$PYTHON" scripts/check_hf_export.py "$dst" "$2"
}
for m in tiny_pretraining tiny_heads/sequence_classification tiny_heads/token_classification tiny_heads/question_answering; do
    check "$REF/$m" "$REF/$m/reference_outputs.json"
done
check assets/all-MiniLM-L6-v2 "$REF/minilm_reference.json"
echo "all exported folders load in transformers and match the reference"
