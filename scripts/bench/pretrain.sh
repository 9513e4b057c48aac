#!/usr/bin/env bash
# One pretraining step (MLM + NSP forward, backward, global-norm clipping, AdamW) on the CPU:
# `bertkit bench-train` against PyTorch (HF BertForPreTraining, scripts/bench/pretrain_peer.py),
# same config, batch, sequence length and threads, alternating within each round.
# Usage: scripts/bench/pretrain.sh [ROUNDS] [THREADS]   (needs PYTHON with torch + transformers)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
echo "machine: $(scripts/bench/cpu.sh)"
ROUNDS=${1:-3}
THREADS=${2:-2}
PYTHON=${PYTHON:-python3}
BIN=${BIN:-target/release/bertkit}
[ -x "$BIN" ] || cargo build --release
out=$(mktemp)
for round in $(seq "$ROUNDS"); do
    for m in mini:4:256:4:1024 small:4:512:8:2048; do
        IFS=: read -r name l h a i <<< "$m"
        RAYON_NUM_THREADS=$THREADS "$BIN" bench-train --model "configs/models/bert-$name.toml" \
            --batch 8 --seq 128 --steps 5 --warmup 2 --json | sed "s/^{/{\"round\":$round,\"name\":\"$name\",/" >> "$out"
        "$PYTHON" scripts/bench/pretrain_peer.py --layers "$l" --hidden "$h" --heads "$a" \
            --intermediate "$i" --batch 8 --seq 128 --threads "$THREADS" --steps 5 --warmup 2 --json \
            | sed "s/^{/{\"round\":$round,\"name\":\"$name\",/" >> "$out"
    done
done
"$PYTHON" - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("model       round  bertkit ms  pytorch ms  speedup")
for name in ["mini", "small"]:
    bk = [r for r in rows if r["name"] == name and r["impl"] == "bertkit"]
    pt = [r for r in rows if r["name"] == name and r["impl"] == "pytorch"]
    for b, p in zip(bk, pt):
        print(f"bert-{name:6s}  {b['round']:5d}  {b['step_ms_median']:10.0f}  {p['step_ms_median']:10.0f}  {p['step_ms_median']/b['step_ms_median']:6.2f}x")
    mb = statistics.median(r["step_ms_median"] for r in bk)
    mp = statistics.median(r["step_ms_median"] for r in pt)
    print(f"bert-{name:6s}  median {mb:9.0f}  {mp:10.0f}  {mp/mb:6.2f}x")
PY
rm -f "$out"
