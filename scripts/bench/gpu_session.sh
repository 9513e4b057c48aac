#!/usr/bin/env bash
# What the first lent-GPU session with cuda plans ran (2026-11-27; docs/PERFORMANCE.md, "GPU
# (NVIDIA H100 80GB HBM3): cuda plans"), within BUDGET seconds: issue 7's cuda plan (export with its parity report,
# bench-plan next to PyTorch on the same card), then issue 4's CUDA-vs-CPU loss agreement.
# all-MiniLM-L6-v2's weights (90 MB) do not fit the 64 MiB that travels to the device machine,
# so the plan is of a MiniLM-shaped BERT with random weights made there by transformers (seeded);
# its config and tokenizer are the real ones. Timings do not depend on the weights.
# It reads a folder .gpu/ (git-ignored, carried), prepared here:
#   cargo build --release --features cuda && strip -o /tmp/bk target/release/bertkit
#   xz -T2 -6 -c /tmp/bk > .gpu/bertkit.xz                      # 101 MB -> 15 MB
#   bertkit vocab --vocab-size 2000 --lowercase --input assets/data/sotu/19{0,1,2}* --out /tmp/tok
#   bertkit prep --nsp --seq-len 64 --quiet --input assets/data/sotu/19{0,1,2}* --tokenizer /tmp/tok --out .gpu/data
#   mkdir .gpu/minilm && cp assets/all-MiniLM-L6-v2/{config.json,tokenizer.json,tokenizer_config.json,vocab.txt,special_tokens_map.json} .gpu/minilm/
# and runs from the repository root: OUT=$OUT bash scripts/bench/gpu_session.sh (carry .gpu).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
BK=/tmp/bertkit
OUT=${OUT:-/tmp/out}
BUDGET=${BUDGET:-500}
mkdir -p "$OUT"
T0=$SECONDS
left() { echo $((BUDGET - (SECONDS - T0))); }
log() { echo "[$((SECONDS - T0)) s] $*"; }
# shellcheck source=scripts/bench/cubecl_cache.sh
. scripts/bench/cubecl_cache.sh
unpack_cubecl_cache
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 RUST_LOG=warn
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
python3 -c "import lzma, shutil; shutil.copyfileobj(lzma.open('.gpu/bertkit.xz'), open('$BK', 'wb'))"
chmod +x "$BK"
"$BK" --version

python3 - <<'PY'
import shutil, torch, transformers
torch.manual_seed(0)
cfg = transformers.BertConfig.from_pretrained(".gpu/minilm")
transformers.BertModel(cfg).save_pretrained("/tmp/minilm-rand", safe_serialization=True)
for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
    shutil.copy(f".gpu/minilm/{f}", "/tmp/minilm-rand/")
print("model: MiniLM-shaped BERT, random weights (seed 0), torch", torch.__version__,
      "transformers", transformers.__version__)
PY

log "export --target cuda --precision fp16"
timeout 220 "$BK" export --model /tmp/minilm-rand --out /tmp/p16.plan --target cuda --precision fp16 \
    --seq-buckets 32,128 --max-batch 32 > "$OUT/export.log" 2>&1
log "export rc=$?"
tail -n 6 "$OUT/export.log"
save_cubecl_cache
: > "$OUT/bench.jsonl"
if [ -f /tmp/p16.plan/plan.json ]; then
    for shape in 32:128 1:32; do
        IFS=: read -r b s <<< "$shape"
        t=$(( $(left) - 200 )); [ "$t" -gt 150 ] && t=150
        [ "$t" -lt 20 ] && { log "no time for bench-plan ${b}x$s"; continue; }
        timeout "$t" "$BK" bench-plan --plan /tmp/p16.plan --batch "$b" --seq "$s" --iters 20 --warmup 3 \
            2> "$OUT/bench.err" | sed 's/^{/{"impl":"bertkit",/' >> "$OUT/bench.jsonl"
        log "bench-plan ${b}x$s rc=$?"; tail -n 3 "$OUT/bench.err"
        save_cubecl_cache
        timeout 120 python3 scripts/bench/plan_peer.py --model /tmp/minilm-rand --peer pytorch --device cuda \
            --dtype fp16 --batch "$b" --seq "$s" --iters 20 --warmup 3 --threads 16 2>/dev/null \
            | sed 's/^{/{"impl":"pytorch",/' >> "$OUT/bench.jsonl"
        log "pytorch ${b}x$s done"
    done
fi

sed -e 's/dropout_prob = 0.1/dropout_prob = 0.0/' configs/models/bert-mini.toml > /tmp/mini-nodrop.toml
for dev in cpu cuda; do
    t=$(( $(left) - 15 )); [ "$dev" = cpu ] && t=60
    [ "$t" -lt 30 ] && { log "no time for pretrain $dev"; continue; }
    rm -rf "/tmp/run-$dev"
    timeout "$t" "$BK" pretrain --config configs/pretrain/cpu-tiny.toml --device "$dev" \
        --set model=/tmp/mini-nodrop.toml --set "data=\"$PWD/.gpu/data\"" --set "out=\"/tmp/run-$dev\"" \
        --set batch.global=32 --set batch.micro=32 --set schedule.steps=6 --set log.every=1 \
        --set eval.every=0 --set checkpoint.every=0 --set log.report_to=jsonl > "$OUT/pretrain-$dev.log" 2>&1
    log "pretrain $dev rc=$? (limit $t s)"
    cp "/tmp/run-$dev/metrics.jsonl" "$OUT/losses-$dev.jsonl" 2>/dev/null
    save_cubecl_cache
done
tail -n 5 "$OUT/pretrain-cuda.log"

python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
try:
    p = json.load(open("/tmp/p16.plan/plan.json"))["parity"]
    print("parity at export (fp16 cuda plan vs the fp32 checkpoint on the CPU):", json.dumps(p))
except Exception as e:
    print("no parity report:", e)
for l in open(f"{out}/bench.jsonl"):
    r = json.loads(l)
    print(f"{r['impl']:8s} {r['batch']}x{r['seq']}: median {r['ms_median']:.3f} ms, {r['seq_per_s']:.1f} seq/s")
def losses(d):
    try:
        return {r["step"]: r["loss"] for r in map(json.loads, open(f"{out}/losses-{d}.jsonl")) if r.get("split") == "train"}
    except OSError:
        return {}
cpu, gpu = losses("cpu"), losses("cuda")
for s in sorted(cpu):
    g = gpu.get(s, float("nan"))
    print(f"step {s}: cpu {cpu[s]:.6f} cuda {g:.6f} |diff| {abs(g - cpu[s]):.2e}")
PY
log "done"
