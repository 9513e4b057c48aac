#!/usr/bin/env bash
# Fine-tuning throughput of the real all-MiniLM-L6-v2 (sequence classification on the
# movie-review sentences): `bertkit finetune` against PyTorch (HF BertForSequenceClassification,
# scripts/bench/finetune_peer.py) on the same sentences, batch, max length and threads, both
# padding each batch to its longest sentence, alternating within each round. Reports training
# sequences/s and non-padding tokens/s over the steps after the first WARMUP.
# With PADDING_FREE=1 each round also runs `bertkit finetune --padding-free` (the encoder on the
# real tokens only), and LOSSES=FILE keeps every run's per-step losses (JSON lines).
# Usage: scripts/bench/finetune.sh [ROUNDS] [THREADS] [STEPS] [BATCH] [SEQ]
#        (needs PYTHON with torch + transformers; run scripts/fetch-assets.sh first)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
echo "machine: $(scripts/bench/cpu.sh)"
ROUNDS=${1:-2}
THREADS=${2:-2}
STEPS=${3:-12}
BATCH=${4:-32}
SEQ=${5:-128}
WARMUP=2
PYTHON=${PYTHON:-python3}
BIN=${BIN:-target/release/bertkit}
[ -x "$BIN" ] || cargo build --release
MODEL=${MODEL:-assets/all-MiniLM-L6-v2}
DATA=assets/data/sentiment/train.jsonl
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
head -n $((STEPS * BATCH)) "$DATA" > "$work/train.jsonl"
head -n 32 assets/data/sentiment/validation.jsonl > "$work/validation.jsonl"
out="$work/results.jsonl"
# bertkit_run ROUND IMPL [EXTRA FINETUNE ARGS...]
bertkit_run() {
    local round=$1 impl=$2
    shift 2
    rm -rf "$work/run"
    RAYON_NUM_THREADS=$THREADS "$BIN" finetune --task classify --model "$MODEL" \
        --train "$work/train.jsonl" --validation "$work/validation.jsonl" --text-column sentence \
        --out "$work/run" --epochs 1 --batch-size "$BATCH" --max-seq-length "$SEQ" \
        --lr 5e-5 --warmup-ratio 0 --log-every 1 "$@" >/dev/null 2>"$work/bertkit.log"
    "$PYTHON" - "$work/run/metrics.jsonl" "$round" "$WARMUP" "$impl" "${LOSSES:-}" >> "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"train"' in l]
timed = rows[int(sys.argv[3]):]
# Per-step rates: the time of a step is its sequences over its rate.
seq_time = sum(1 / r["sequences_per_s"] for r in timed)  # seconds per sequence, summed over steps
print(json.dumps({"round": int(sys.argv[2]), "impl": sys.argv[4],
                  "sequences_per_s": len(timed) / seq_time,
                  "tokens_per_s": sum(r["tokens_per_s"] for r in timed) / len(timed),
                  "final_loss": rows[-1]["loss"]}))
if sys.argv[5]:
    with open(sys.argv[5], "a") as f:
        f.write(json.dumps({"round": int(sys.argv[2]), "impl": sys.argv[4],
                            "losses": [r["loss"] for r in rows]}) + "\n")
PY
}
for round in $(seq "$ROUNDS"); do
    bertkit_run "$round" bertkit
    if [ "${PADDING_FREE:-0}" = 1 ]; then
        bertkit_run "$round" bertkit-padding-free --padding-free
    fi
    "$PYTHON" scripts/bench/finetune_peer.py --model "$MODEL" --data "$work/train.jsonl" \
        --batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS" \
        --lr 5e-5 | tail -n 1 | sed "s/^{/{\"round\":$round,\"impl\":\"pytorch\",/" >> "$out"
done
"$PYTHON" - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
bk = [r for r in rows if r["impl"] == "bertkit"]
pt = [r for r in rows if r["impl"] == "pytorch"]
print("round  bertkit seq/s  pytorch seq/s  bertkit/pytorch")
for b, p in zip(bk, pt):
    print(f"{b['round']:5d}  {b['sequences_per_s']:13.2f}  {p['sequences_per_s']:13.2f}  {b['sequences_per_s']/p['sequences_per_s']:8.2f}x")
mb = statistics.median(r["sequences_per_s"] for r in bk)
mp = statistics.median(r["sequences_per_s"] for r in pt)
print(f"median {mb:13.2f}  {mp:13.2f}  {mb/mp:8.2f}x")
pf = [r for r in rows if r["impl"] == "bertkit-padding-free"]
if pf:
    print("round  padding-free seq/s  vs padded bertkit  vs pytorch  final loss padded / padding-free")
    for f, b, p in zip(pf, bk, pt):
        print(f"{f['round']:5d}  {f['sequences_per_s']:18.2f}  {f['sequences_per_s']/b['sequences_per_s']:16.2f}x"
              f"  {f['sequences_per_s']/p['sequences_per_s']:9.2f}x  {b['final_loss']:.4f} / {f['final_loss']:.4f}")
    mf = statistics.median(r["sequences_per_s"] for r in pf)
    print(f"median {mf:18.2f}  {mf/mb:16.2f}x  {mf/mp:9.2f}x")
PY
