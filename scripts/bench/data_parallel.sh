#!/usr/bin/env bash
# Data-parallel step time on the CPU ring: 1 rank against 2 ranks with the same per-rank batch
# (weak scaling, so a perfect all-reduce costs nothing), the gradient all-reduce after the
# backward pass against buckets all-reduced during it, fp32 against bf16 on the wire.
# `two-alone` is two independent single-rank runs at once (no all-reduce): what sharing the
# machine costs by itself. Every rank
# gets THREADS threads; 2 ranks x THREADS should fit the machine's cores (the default 1 thread per
# rank on a 2-core machine). Rounds alternate the settings; the table gives each setting's median
# step time (after the first WARMUP steps of each run, from metrics.jsonl's sequences_per_s).
# With PYTHON pointing at a Python with torch + transformers, each round also runs the peer,
# PyTorch DistributedDataParallel (gloo) on HF BertForPreTraining of the same shape
# (scripts/bench/data_parallel_peer.py, random tokens): 1 rank, and 2 ranks with its default
# 25 MB buckets and with 1 MB ones; each side's "vs 1 rank" is against its own single rank.
# Usage: scripts/bench/data_parallel.sh [ROUNDS] [STEPS] [MODEL]   (MODEL: mini or small)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
echo "machine: $(scripts/bench/cpu.sh)"
ROUNDS=${1:-3}
STEPS=${2:-12}
MODEL=${3:-mini}
THREADS=${THREADS:-1}
WARMUP=${WARMUP:-2}
MICRO=${MICRO:-8}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/bertkit}
[ -x "$BIN" ] || cargo build --release
work=$(mktemp -d)
trap 'status=$?; [ $status = 0 ] || tail -n 20 "$work/errors" >&2; rm -rf "$work"' EXIT
touch "$work/errors"
scripts/fetch-assets.sh >/dev/null
# Real text, BERT's uncased vocabulary (30522 tokens), seq 128 with NSP.
"$BIN" prep --nsp --seq-len 128 --quiet --input assets/data/wikipedia/*.bz2 \
    --tokenizer assets/all-MiniLM-L6-v2 --out "$work/data" >/dev/null
port=29600
run() { # name world extra-settings...
    local name=$1 world=$2
    shift 2
    local out="$work/$name"
    rm -rf "$out"
    local args=(pretrain --config configs/pretrain/cpu-tiny.toml
        --set "model=\"$PWD/configs/models/bert-$MODEL.toml\"" --set "data=\"$work/data\"" --set "out=\"$out\""
        --set "schedule.steps=$STEPS" --set "batch.micro=$MICRO" --set "batch.global=$((MICRO * world))"
        --set eval.every=0 --set checkpoint.every=0 --set log.every=1 --set 'log.report_to="jsonl"')
    for s in "$@"; do args+=(--set "$s"); done
    port=$((port + 1))
    if [ "$world" = 1 ] && [ "$name" = "two-alone" ]; then
        # Two single-rank runs at once, each its own job: what 2 ranks would cost with a free
        # all-reduce (they share the machine's cores, caches and memory bandwidth).
        RAYON_NUM_THREADS=$THREADS "$BIN" "${args[@]}" --set "out=\"$out-b\"" >/dev/null 2>&1 &
        RAYON_NUM_THREADS=$THREADS "$BIN" "${args[@]}" >/dev/null 2>>"$work/errors"
        wait
    elif [ "$world" = 1 ]; then
        RAYON_NUM_THREADS=$THREADS "$BIN" "${args[@]}" >/dev/null 2>>"$work/errors"
    else
        RAYON_NUM_THREADS=$THREADS "$BIN" launch --nproc-per-node "$world" --master-port "$port" \
            -- "$BIN" "${args[@]}" >/dev/null 2>>"$work/errors"
    fi
    python3 - "$out/metrics.jsonl" "$name" "$((MICRO * world))" "$WARMUP" >> "$work/rows" <<'PY'
import json, statistics, sys
path, name, batch, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rows = [json.loads(l) for l in open(path) if '"train"' in l]
ms = [1000 * batch / r["sequences_per_s"] for r in rows[warmup:]]
print(json.dumps({"name": name, "step_ms": statistics.median(ms), "loss": rows[-1]["loss"]}))
PY
}
case $MODEL in
    mini) shape=(--layers 4 --hidden 256 --heads 4 --intermediate 1024) ;;
    small) shape=(--layers 4 --hidden 512 --heads 8 --intermediate 2048) ;;
    *) shape=() ;;
esac
peer() { # name world bucket_mb
    [ -n "${PYTHON:-}" ] && [ ${#shape[@]} -gt 0 ] || return 0
    port=$((port + 1))
    local launcher=("$PYTHON")
    [ "$2" = 1 ] || launcher=("$PYTHON" -m torch.distributed.run --nproc-per-node "$2" --master-port "$port")
    "${launcher[@]}" scripts/bench/data_parallel_peer.py "${shape[@]}" --batch "$MICRO" --seq 128 \
        --threads "$THREADS" --steps "$STEPS" --warmup "$WARMUP" --bucket-mb "$3" --json 2>/dev/null |
        grep '^{' | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); print(json.dumps({'name': '$1', 'step_ms': r['step_ms']}))" \
        >> "$work/rows"
}
for round in $(seq "$ROUNDS"); do
    peer pytorch-one 1 25
    peer pytorch-ddp-25mb 2 25
    peer pytorch-ddp-1mb 2 1
    run one 1
    run two-alone 1
    run two-after 2 distributed.overlap=false
    run two-overlap-25mb 2 distributed.overlap=true distributed.bucket_mb=25
    run two-overlap-layer 2 distributed.overlap=true distributed.bucket_mb=1
    run two-overlap-layer-bf16 2 distributed.overlap=true distributed.bucket_mb=1 'distributed.reduce_dtype="bf16"'
done
python3 - "$work/rows" "$MODEL" "$MICRO" "$THREADS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
model, micro, threads = sys.argv[2], sys.argv[3], sys.argv[4]
names = list(dict.fromkeys(r["name"] for r in rows))
def median_of(name):
    return statistics.median(r["step_ms"] for r in rows if r["name"] == name)
print(f"BERT-{model}, micro-batch {micro} x seq 128 per rank, {threads} thread(s) per rank")
print("| setting | processes | step ms (median of rounds) | rounds | vs 1 rank |")
print("|---|---|---|---|---|")
for n in names:
    ms = [r["step_ms"] for r in rows if r["name"] == n]
    med = statistics.median(ms)
    base = median_of("pytorch-one" if n.startswith("pytorch") else "one")
    procs = 1 if n in ("one", "pytorch-one") else 2
    print(f"| {n} | {procs} | {med:.0f} | {', '.join(f'{m:.0f}' for m in ms)} | {base / med:.3f} |")
PY
