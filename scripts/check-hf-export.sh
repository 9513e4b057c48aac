#!/usr/bin/env bash
# Export every reference model with `bertkit convert --to hf` and check that Hugging Face
# transformers loads each exported folder and reproduces the reference outputs
# (scripts/check_hf_export.py). Needs a Python with torch + transformers:
#
#   python3 -m venv .venv && .venv/bin/pip install torch transformers safetensors numpy sentence-transformers
#   PYTHON=.venv/bin/python scripts/check-hf-export.sh
#
# Not part of CI: torch from PyPI is a multi-GB download. Its output is in docs/HF_EXPORT.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
scripts/fetch-assets.sh >&2
cargo build --release --quiet
BIN="${CARGO_TARGET_DIR:-target}/release/bertkit"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
REF=tests/fixtures/hf-reference
check() {  # SRC REFERENCE_JSON
    local dst="$OUT/$(basename "$1")"
    "$BIN" convert --to hf "$1" "$dst"
    HF_HUB_OFFLINE=1 "$PYTHON" scripts/check_hf_export.py "$dst" "$2"
}
for m in tiny_pretraining tiny_heads/sequence_classification tiny_heads/token_classification tiny_heads/question_answering; do
    check "$REF/$m" "$REF/$m/reference_outputs.json"
done
check assets/all-MiniLM-L6-v2 "$REF/minilm_reference.json"
echo "all exported folders load in transformers and match the reference"
# The converted all-MiniLM-L6-v2 is still the same sentence-transformers model (pooling and
# Normalize modules kept): needs `pip install sentence-transformers` in the same Python.
if "$PYTHON" -c "import sentence_transformers" 2>/dev/null; then
    texts="$OUT/texts.jsonl"
    printf '%s\n' '{"text": "The quick brown fox jumps over the lazy dog."}' '{"text": "Hello world"}' \
        '{"text": "A man is eating food."}' '{"text": "The new movie is awesome, though far too long."}' \
        '{"text": "A cheetah chases its prey across a field."}' > "$texts"
    "$BIN" embed --model "$OUT/all-MiniLM-L6-v2" --input "$texts" \
        --output "$OUT/bertkit.jsonl" --pooling mean --normalize
    HF_HUB_OFFLINE=1 "$PYTHON" scripts/check_st_export.py assets/all-MiniLM-L6-v2 \
        "$OUT/all-MiniLM-L6-v2" "$OUT/bertkit.jsonl" "$texts"
else
    echo "sentence-transformers is not installed in $PYTHON: the sentence-transformers check was not run" >&2
    exit 1
fi
