#!/usr/bin/env bash
# The full movie-review run of the fine-tuning issue: the real all-MiniLM-L6-v2 fine-tuned on
# the 8,454 training sentences of scripts/sentiment_split.py's fixed 80/20 split (seed 13),
# evaluated on all 2,114 held-out sentences. tests/cli_finetune.rs runs a reduced version.
#
# Usage: scripts/bench/finetune_sentiment.sh [OUT] [extra bertkit finetune args...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${1:-$ROOT/target/finetune-sentiment}"; shift || true
BERTKIT="${BERTKIT:-$ROOT/target/release/bertkit}"
"$ROOT/scripts/fetch-assets.sh" >/dev/null
[[ -x "$BERTKIT" ]] || (cd "$ROOT" && cargo build --release)
"$BERTKIT" finetune --task classify --model "$ROOT/assets/all-MiniLM-L6-v2" \
    --train "$ROOT/assets/data/sentiment/train.jsonl" \
    --validation "$ROOT/assets/data/sentiment/validation.jsonl" \
    --text-column sentence --out "$OUT" --overwrite \
    --epochs 1 --batch-size 32 --max-seq-length 64 --lr 1e-4 --warmup-ratio 0.1 --seed 42 \
    --log-every 20 "$@"
python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(json.dumps({'best': m['best'], 'train': m['train']}))" "$OUT/metrics.json"
