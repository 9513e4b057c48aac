#!/usr/bin/env bash
# The pretraining checks that need a GPU, as one script for a lent H100/H200 (see
# docs/PERFORMANCE.md, "Pretraining on a GPU"):
# 1. CUDA vs CPU losses of the same run: BERT-mini without dropout (so both draw nothing at
#    random), 6 LAMB steps of 32 sequences on the State of the Union data, f32 on both and bf16
#    on CUDA;
# 2. one pretraining step of BERT-base and BERT-large at NVIDIA's phase-1 shapes (seq 128, bf16,
#    micro-batch 64): seq/s and MFU against the card's bf16 matmul rate measured in the same run
#    (cuBLAS through PyTorch, and burn's own matmul), next to PyTorch (HF BertForPreTraining, bf16
#    autocast) on the same card.
# Needs: BK (a `--features cuda` bertkit binary), DATA (a `bertkit prep --seq-len 64 --nsp` folder).
# CubeCL autotunes every new kernel shape on first use (5-35 s each on an H100, see
# docs/PERFORMANCE.md): LIMIT (seconds per CUDA run, default 150) bounds each run, and the tuning
# results (CubeCL keeps them under ./target/) are packed into $OUT/cubecl-cache.tgz so that a
# later session can unpack them before running (CUBECL_CACHE=FILE.tgz).
set -uo pipefail
BK=${BK:-target/release/bertkit}
DATA=${DATA:-gpu-carry/data}
OUT=${OUT:-/tmp/bertkit-gpu}
mkdir -p "$OUT"
LIMIT=${LIMIT:-150}
# shellcheck source=scripts/bench/cubecl_cache.sh
. "$(dirname "${BASH_SOURCE[0]}")/cubecl_cache.sh"
unpack_cubecl_cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"

sed -e 's/dropout_prob = 0.1/dropout_prob = 0.0/' configs/models/bert-mini.toml > /tmp/mini-nodrop.toml
for run in cpu:f32:60 cuda:f32:$LIMIT cuda:bf16:$LIMIT; do
    IFS=: read -r dev prec limit <<< "$run"
    rm -rf "/tmp/run-$dev-$prec"
    start=$SECONDS
    timeout "$limit" "$BK" pretrain --config configs/pretrain/cpu-tiny.toml --device "$dev" \
        --set model=/tmp/mini-nodrop.toml --set "data=\"$DATA\"" --set "out=\"/tmp/run-$dev-$prec\"" \
        --set "precision=\"$prec\"" --set batch.global=32 --set batch.micro=32 \
        --set schedule.steps=6 --set log.every=1 --set eval.every=0 --set checkpoint.every=0 \
        --set log.report_to=jsonl > "$OUT/pretrain-$dev-$prec.log" 2>&1 \
        || { echo "pretrain $dev $prec failed:"; tail -20 "$OUT/pretrain-$dev-$prec.log"; }
    cp "/tmp/run-$dev-$prec/metrics.jsonl" "$OUT/losses-$dev-$prec.jsonl" 2>/dev/null
    save_cubecl_cache
    echo "pretrain $dev $prec: $((SECONDS - start)) s; $(grep -c . "$OUT/losses-$dev-$prec.jsonl" 2>/dev/null) records"
done

: > "$OUT/bench.jsonl"
first=1
for m in base:12:768:12:3072 large:24:1024:16:4096; do
    IFS=: read -r name l h a i <<< "$m"
    mm=(); [ $first = 1 ] && mm=(--matmul 8192); first=0
    start=$SECONDS
    timeout "$LIMIT" "$BK" bench-train --model "configs/models/bert-$name.toml" --device cuda \
        --precision bf16 --batch 64 --seq 128 --steps 10 --warmup 3 --json "${mm[@]}" \
        >> "$OUT/bench.jsonl" 2> "$OUT/bench-$name.err" || { echo "bench-train $name failed:"; tail -5 "$OUT/bench-$name.err"; }
    echo "bench-train $name: $((SECONDS - start)) s"; tail -c 300 "$OUT/bench.jsonl"; echo
    save_cubecl_cache
    timeout 90 python3 scripts/bench/pretrain_peer.py --layers "$l" --hidden "$h" --heads "$a" \
        --intermediate "$i" --batch 64 --seq 128 --threads 16 --device cuda --bf16 --steps 10 \
        --warmup 3 --json >> "$OUT/bench.jsonl" 2> "$OUT/peer-$name.err" || { echo "peer $name failed:"; tail -5 "$OUT/peer-$name.err"; }
done
python3 - "$OUT" <<'PY'
import json, sys, time, torch
out = sys.argv[1]
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
for _ in range(3): a @ b
torch.cuda.synchronize(); ts = []
for _ in range(10):
    s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True)
    s.record(); a @ b; e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e) / 1e3)
ts.sort(); cublas = 2 * 8192**3 / ts[len(ts) // 2]
print(f"cuBLAS bf16 8192^3 matmul: {cublas/1e12:.0f} TFLOP/s")
def losses(name):
    try:
        return {r["step"]: r["loss"] for r in map(json.loads, open(f"{out}/losses-{name}.jsonl")) if r["split"] == "train"}
    except OSError:
        return {}
cpu, f32, bf = losses("cpu-f32"), losses("cuda-f32"), losses("cuda-bf16")
print("step  cpu f32     cuda f32    cuda bf16   |f32 diff|  |bf16 diff|")
for s in sorted(cpu):
    g, h = f32.get(s, float("nan")), bf.get(s, float("nan"))
    print(f"{s:4d}  {cpu[s]:.6f}  {g:.6f}  {h:.6f}  {abs(g-cpu[s]):.2e}    {abs(h-cpu[s]):.2e}")
rows = [json.loads(l) for l in open(f"{out}/bench.jsonl") if l.strip()]
print("impl      model                     step ms   seq/s   model TFLOP/s  MFU vs cuBLAS")
for r in rows:
    if r["impl"] == "bertkit":
        tf = r["achieved_tflop_s"]; mm = r.get("matmul_tflop_s")
        extra = f"  (burn matmul {mm:.0f} TFLOP/s)" if mm else ""
        print(f"bertkit   {r['model']:24s}  {r['step_ms_median']:7.1f}  {r['seq_per_s']:6.1f}   {tf:8.1f}     {tf*1e12/cublas:.3f}{extra}")
    else:
        print(f"pytorch   {r['model']:24s}  {r['step_ms_median']:7.1f}  {r['seq_per_s']:6.1f}")
json.dump({"cublas_bf16_tflop_s": cublas / 1e12}, open(f"{out}/cublas.json", "w"))
PY
