#!/usr/bin/env bash
# The inference-plan checks that need a GPU, as one script for a lent H100/H200 (docs/PERFORMANCE.md):
# 1. `bertkit export --target cuda` of all-MiniLM-L6-v2 (an embedding plan) at each precision; the
#    export's own parity report (the plan on the GPU against the fp32 checkpoint on the CPU, 24
#    built-in sentences) is read back from each plan.json;
# 2. `bertkit bench-plan` of each plan at 1x32 and 32x128, next to PyTorch (HF BertModel, weights
#    and compute in the same precision, outputs copied to the host in each call) on the same card.
# Needs: BK (a `--features cuda` bertkit binary), MODEL (an HF BERT folder), PYTHON with torch and
# transformers. TARGET=cpu runs the same steps on the CPU: the dry run of this script on a machine
# without a GPU. PRECISIONS (default "fp16 fp32 bf16") orders the work, best bet first; LIMIT
# bounds every bertkit command (seconds, default 150: CubeCL autotunes each new kernel shape on
# first use, see cubecl_cache.sh, which also carries the tuning results between sessions).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 2
BK=${BK:-target/release/bertkit}
MODEL=${MODEL:-assets/all-MiniLM-L6-v2}
OUT=${OUT:-/tmp/bertkit-gpu}
TARGET=${TARGET:-cuda}
PRECISIONS=${PRECISIONS:-fp16 fp32 bf16}
LIMIT=${LIMIT:-150}
ITERS=${ITERS:-30}
THREADS=${THREADS:-$(nproc)}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
# shellcheck source=scripts/bench/cubecl_cache.sh
. scripts/bench/cubecl_cache.sh
unpack_cubecl_cache
case "$TARGET" in
    cuda) device=cuda
          nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt" ;;
    cpu) device=cpu; echo "dry run on the CPU ($(nproc) cores)" | tee "$OUT/card.txt" ;;
    *) echo "TARGET must be cuda or cpu, not $TARGET" >&2; exit 2 ;;
esac
plans="$OUT/plans"
mkdir -p "$plans"
for p in $PRECISIONS; do
    plan="$plans/minilm-$TARGET-$p.plan"
    rm -rf "$plan"
    start=$SECONDS
    timeout "$LIMIT" "$BK" export --model "$MODEL" --out "$plan" --target "$TARGET" --precision "$p" \
        > "$OUT/export-$p.log" 2>&1 || { echo "export $p failed:"; tail -20 "$OUT/export-$p.log"; }
    save_cubecl_cache
    echo "export $p: $((SECONDS - start)) s"
done

results="$OUT/plan-bench.jsonl"
: > "$results"
for shape in 1:32 32:128; do
    IFS=: read -r batch seq <<< "$shape"
    for p in $PRECISIONS; do
        plan="$plans/minilm-$TARGET-$p.plan"
        if [ -f "$plan/plan.json" ]; then
            start=$SECONDS
            timeout "$LIMIT" "$BK" bench-plan --plan "$plan" --batch "$batch" --seq "$seq" --iters "$ITERS" \
                --warmup 5 2> "$OUT/bench-$p-$shape.err" | sed "s/^{/{\"impl\":\"bertkit\",\"precision\":\"$p\",/" \
                >> "$results" || { echo "bench-plan $p $shape failed:"; tail -5 "$OUT/bench-$p-$shape.err"; }
            save_cubecl_cache
            echo "bench-plan $p ${batch}x$seq: $((SECONDS - start)) s"
        fi
        timeout 300 "$PYTHON" scripts/bench/plan_peer.py --model "$MODEL" --peer pytorch --device "$device" \
            --dtype "$p" --batch "$batch" --seq "$seq" --iters "$ITERS" --warmup 5 --threads "$THREADS" \
            2> "$OUT/peer-$p-$shape.err" | sed "s/^{/{\"impl\":\"pytorch\",\"precision\":\"$p\",/" \
            >> "$results" || { echo "pytorch $p $shape failed:"; tail -5 "$OUT/peer-$p-$shape.err"; }
    done
done

# shellcheck disable=SC2086 # one argument per precision
"$PYTHON" - "$OUT" "$TARGET" $PRECISIONS <<'PY'
import json, os, sys
out, target, precisions = sys.argv[1], sys.argv[2], sys.argv[3:]
print(f"\nparity at export ({target} plan vs the fp32 checkpoint on the CPU)")
print("precision  passed  samples  max abs error  mean cosine  min cosine")
for p in precisions:
    try:
        r = json.load(open(f"{out}/plans/minilm-{target}-{p}.plan/plan.json"))["parity"]
    except (OSError, KeyError, ValueError):
        print(f"{p:9s}  (no plan)")
        continue
    print(f"{p:9s}  {str(r['passed']):6s}  {r['samples']:7d}  {r['max_abs_error']:13.3e}  "
          f"{r['mean_cosine']:11.6f}  {r['min_cosine']:10.6f}")
rows = [json.loads(l) for l in open(f"{out}/plan-bench.jsonl") if l.strip()]
print("\nshape    precision  bertkit ms  pytorch ms  bertkit seq/s  pytorch seq/s  pytorch/bertkit time")
for b, s in ((1, 32), (32, 128)):
    for p in precisions:
        got = {r["impl"]: r for r in rows if r["batch"] == b and r["seq"] == s and r["precision"] == p}
        bk, pt = got.get("bertkit"), got.get("pytorch")
        ms = lambda r: f"{r['ms_median']:10.2f}" if r else f"{'-':>10s}"
        sps = lambda r: f"{r['seq_per_s']:13.1f}" if r else f"{'-':>13s}"
        ratio = f"{pt['ms_median'] / bk['ms_median']:.2f}x" if bk and pt else "-"
        print(f"{b}x{s:<6d} {p:9s}  {ms(bk)}  {ms(pt)}  {sps(bk)}  {sps(pt)}  {ratio}")
PY
