#!/usr/bin/env bash
# Distillation on the movie-review sentences: all-MiniLM-L6-v2 fine-tuned as the teacher (as
# scripts/bench/finetune_sentiment.sh: the 8,454 training sentences of the fixed split, 1 epoch),
# then distilled into students of 3 and 2 of its layers (`bertkit distill --student-layers`,
# TinyBERT's layer map, T = 2, alpha = 0.5), each evaluated on the 2,114 held-out sentences.
# Every model is exported to an fp32 plan and timed with `bertkit bench-plan` at 1x32 and
# 32x128 (median of ITERS, 2 threads). Prints one table: accuracy, parameters, plan latency and
# throughput, and the student's speed-up over the teacher.
#
# A third student, student-2-layers, is the 2-layer one trained with the intermediate-layer terms
# too (--hidden-weight 1 --attention-weight 1: the teacher's hidden states and attention) for
# LAYER_EPOCHS epochs.
#
# Usage: scripts/bench/distill_sentiment.sh [OUT] [STUDENT_EPOCHS=2]
#   env: BERTKIT (target/release/bertkit), ITERS (20), THREADS (2), LAYER_EPOCHS (4)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${1:-$ROOT/target/distill-sentiment}"
EPOCHS="${2:-2}"
BERTKIT="${BERTKIT:-$ROOT/target/release/bertkit}"
ITERS="${ITERS:-20}"
THREADS="${THREADS:-2}"
LAYER_EPOCHS="${LAYER_EPOCHS:-4}"
echo "machine: $("$ROOT/scripts/bench/cpu.sh")"
"$ROOT/scripts/fetch-assets.sh" >/dev/null
DATA="$ROOT/assets/data/sentiment"
mkdir -p "$OUT"
if [[ ! -f "$OUT/teacher/metrics.json" ]]; then
    "$BERTKIT" finetune --task classify --model "$ROOT/assets/all-MiniLM-L6-v2" \
        --train "$DATA/train.jsonl" --validation "$DATA/validation.jsonl" --text-column sentence \
        --out "$OUT/teacher" --overwrite --epochs 1 --batch-size 32 --max-seq-length 64 \
        --lr 1e-4 --warmup-ratio 0.1 --seed 42 --log-every 50 --report-to jsonl
fi
for n in 3 2; do
    "$BERTKIT" distill --teacher "$OUT/teacher" --student-layers "$n" \
        --train "$DATA/train.jsonl" --validation "$DATA/validation.jsonl" \
        --out "$OUT/student-$n" --overwrite --epochs "$EPOCHS" --batch-size 32 --lr 1e-4 \
        --warmup-ratio 0.1 --seed 42 --temperature 2 --alpha 0.5 --log-every 50 --report-to jsonl
done
"$BERTKIT" distill --teacher "$OUT/teacher" --student-layers 2 \
    --train "$DATA/train.jsonl" --validation "$DATA/validation.jsonl" \
    --out "$OUT/student-2-layers" --overwrite --epochs "$LAYER_EPOCHS" --batch-size 32 --lr 1e-4 \
    --warmup-ratio 0.1 --seed 42 --temperature 2 --alpha 0.5 --hidden-weight 1 --attention-weight 1 \
    --log-every 50 --report-to jsonl
for m in teacher student-3 student-2 student-2-layers; do
    "$BERTKIT" export --model "$OUT/$m" --out "$OUT/$m.plan" --no-tune --overwrite \
        --seq-buckets 32,64,128 --max-length 128 > /dev/null
    for shape in "1 32" "32 128"; do
        set -- $shape
        "$BERTKIT" bench-plan --plan "$OUT/$m.plan" --batch "$1" --seq "$2" --threads "$THREADS" \
            --iters "$ITERS" > "$OUT/$m-$1x$2.json"
    done
done
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
def load(p): return json.load(open(p))
rows = []
for m in ("teacher", "student-3", "student-2", "student-2-layers"):
    met = load(f"{out}/{m}/metrics.json")
    if m == "teacher":
        acc, params, layers = met["best"]["accuracy"], None, 6
    else:
        acc, params, layers = met["student"]["validation"]["accuracy"], met["student"]["parameters"], met["student"]["layers"]
    t = {s: load(f"{out}/{m}-{s}.json") for s in ("1x32", "32x128")}
    rows.append((m, layers, params, acc, t))
teacher = rows[0]
tp = load(f"{out}/student-3/metrics.json")["teacher"]
print(f"teacher: {tp['parameters']} parameters, held-out accuracy {tp['validation']['accuracy']:.4f}")
print("| model | layers | held-out accuracy | vs teacher (points) | 1x32 ms | 32x128 ms | 32x128 seq/s | 32x128 speed-up |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for m, layers, params, acc, t in rows:
    ms1 = t["1x32"]["ms_median"]; ms32 = t["32x128"]["ms_median"]
    speed = teacher[4]["32x128"]["ms_median"] / ms32
    print(f"| {m} | {layers} | {acc:.4f} | {100 * (acc - teacher[3]):+.2f} | {ms1:.2f} | {ms32:.1f} | "
          f"{32 * 1000 / ms32:.1f} | {speed:.2f}x |")
PY
