#!/usr/bin/env bash
# Inference of the real all-MiniLM-L6-v2 on the CPU: bertkit's plan runtime (`bertkit export` once per
# precision, then `bertkit bench-plan`) against PyTorch (HF BertModel fp32, sdpa), ONNX Runtime fp32 with
# its transformer optimizations (fused Attention, EmbedLayerNormalization, SkipLayerNormalization, BiasGelu)
# and ONNX Runtime's own dynamic int8 (scripts/bench/plan_peer.py), same inputs, shapes and threads.
# Shapes 1x32 and 32x128; every shape of every round runs all of them, interleaved bertkit / peer and in
# reverse order on even rounds, so that drift in the machine's speed hits all of them alike. Each run
# reports the median of ITERS timed forwards after WARMUP warm-ups; the table gives the median over rounds.
#
# Usage: scripts/bench/plan.sh [THREADS=2] [ITERS=30] [ROUNDS=3]
#   env: BERTKIT_PEER_PYTHON (default /work/venv/bin/python: torch, transformers, onnxruntime, onnx, numpy)
#        BIN (default target/release/bertkit), WARMUP (3), PRECISIONS ("fp32 fp16 bf16 int8"),
#        SHAPES ("1x32 32x128"), PEERS ("pytorch ort-fp32 ort-int8"; also pytorch-bf16), ONNX_WORKDIR (/tmp/bertkit-peer-onnx, the cached ONNX files),
#        WORK (plans and raw results; default a temp dir, removed at exit unless WORK is given)
# Exits non-zero if any run fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
THREADS=${1:-2}
ITERS=${2:-30}
ROUNDS=${3:-3}
WARMUP=${WARMUP:-3}
PYTHON=${BERTKIT_PEER_PYTHON:-/work/venv/bin/python}
BIN=${BIN:-target/release/bertkit}
PRECISIONS=${PRECISIONS:-fp32 fp16 bf16 int8}
SHAPES=${SHAPES:-1x32 32x128}
ONNX_WORKDIR=${ONNX_WORKDIR:-/tmp/bertkit-peer-onnx}
# pytorch-bf16: HF BertModel in bfloat16 on the CPU (plan_peer.py --peer pytorch --dtype bf16), the peer
# of bertkit's bf16 plan (ONNX Runtime has no bf16 CPU kernels).
PEERS=${PEERS:-pytorch ort-fp32 ort-int8}
MODEL=assets/all-MiniLM-L6-v2
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS

die() { echo "plan.sh: error: $*" >&2; exit 1; }
for v in THREADS ITERS ROUNDS WARMUP; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, got '${!v}'"
done
[ -d "$MODEL" ] || die "$MODEL not found (run scripts/fetch-assets.sh)"
command -v "$PYTHON" >/dev/null 2>&1 || die "python '$PYTHON' not found (set BERTKIT_PEER_PYTHON)"
[ -x "$BIN" ] || cargo build --release
[ -x "$BIN" ] || die "$BIN not found after cargo build --release"

if [ -n "${WORK:-}" ]; then mkdir -p "$WORK"; else WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT; fi
out="$WORK/results.jsonl" cmds="$WORK/commands.txt"
: > "$out"; : > "$cmds"

logcmd() { local c; printf -v c '%q ' "$@"; echo "${c% }" >> "$cmds"; }

# run TAG CMD...: one benchmark process; its last stdout line starting with '{' is the result, tagged
# with TAG's fields. A failure prints the command and its stderr and stops the script.
run() {
    local tag=$1; shift
    local log="$WORK/run.log" line
    logcmd "$@"
    local rc=0
    "$@" > "$WORK/run.out" 2> "$log" || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "plan.sh: FAILED (exit $rc): $*" >&2; tail -n 30 "$log" >&2; exit 1
    fi
    line=$(grep '^{' "$WORK/run.out" | tail -n 1) || true
    if [ -z "$line" ] || ! "$PYTHON" -c 'import json,sys; r=json.loads(sys.argv[1]); float(r["ms_median"])' "$line" 2>/dev/null; then
        echo "plan.sh: FAILED: no JSON line with ms_median from: $*" >&2
        cat "$WORK/run.out" >&2; tail -n 30 "$log" >&2; exit 1
    fi
    echo "{$tag,${line#\{}" >> "$out"
}

# --- header: machine and versions
versions=$("$PYTHON" - <<'PY'
import importlib, platform
v = [f"python {platform.python_version()}"]
for m in ("torch", "transformers", "onnxruntime", "onnx", "numpy"):
    try:
        v.append(f"{m} {importlib.import_module(m).__version__}")
    except ImportError:
        raise SystemExit(f"plan.sh: error: the peers need the Python package {m!r}; not importable by this python")
print(", ".join(v))
PY
) || die "peer python $PYTHON lacks a package (see above)"
echo "# $(date -u +%FT%TZ)  $(scripts/bench/cpu.sh), load avg $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# $("$BIN" --version 2>/dev/null | head -n 1 || echo '?') (git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ', dirty'))"
echo "# peers: $versions"
echo "# threads $THREADS, iters $ITERS, warmup $WARMUP, rounds $ROUNDS, shapes $SHAPES, bertkit precisions $PRECISIONS"

# --- once before the rounds: bertkit plans, and the peers' ONNX files (export + optimize + quantize, cached)
for prec in $PRECISIONS; do
    echo "# export $prec plan" >&2
    logcmd "$BIN" export --model "$MODEL" --out "$WORK/minilm-$prec.plan" --precision "$prec" --overwrite
    "$BIN" export --model "$MODEL" --out "$WORK/minilm-$prec.plan" --precision "$prec" --overwrite >/dev/null 2>"$WORK/export.log" \
        || { echo "plan.sh: FAILED: bertkit export --precision $prec" >&2; tail -n 30 "$WORK/export.log" >&2; exit 1; }
done
echo "# preparing the ONNX Runtime models in $ONNX_WORKDIR" >&2
logcmd "$PYTHON" scripts/bench/plan_peer.py --model "$MODEL" --peer ort-int8 --batch 1 --seq 8 --threads "$THREADS" \
    --iters 1 --warmup 0 --workdir "$ONNX_WORKDIR"
"$PYTHON" scripts/bench/plan_peer.py --model "$MODEL" --peer ort-int8 --batch 1 --seq 8 --threads "$THREADS" \
    --iters 1 --warmup 0 --workdir "$ONNX_WORKDIR" 2>"$WORK/prep.log" >/dev/null \
    || { echo "plan.sh: FAILED: preparing the ONNX models" >&2; tail -n 30 "$WORK/prep.log" >&2; exit 1; }
grep -e 'fused operator statistics' -e 'onnx export' -e '# int8' "$WORK/prep.log" | sort -u || true

# --- the rounds: bertkit precisions and peers interleaved, reversed on even rounds
read -ra precs <<< "$PRECISIONS"
read -ra peers <<< "$PEERS"
order=()
n=${#precs[@]}; if [ ${#peers[@]} -gt "$n" ]; then n=${#peers[@]}; fi
for ((i = 0; i < n; i++)); do
    if [ "$i" -lt ${#precs[@]} ]; then order+=("bertkit-${precs[$i]}"); fi
    if [ "$i" -lt ${#peers[@]} ]; then order+=("${peers[$i]}"); fi
done
for round in $(seq "$ROUNDS"); do
    seq_order=("${order[@]}")
    if ((round % 2 == 0)); then
        seq_order=(); for ((i = ${#order[@]} - 1; i >= 0; i--)); do seq_order+=("${order[$i]}"); done
    fi
    for shape in $SHAPES; do
        b=${shape%x*} s=${shape#*x}
        echo "# round $round, $shape: ${seq_order[*]}" >&2
        for impl in "${seq_order[@]}"; do
            tag="\"round\":$round,\"shape\":\"$shape\",\"impl\":\"$impl\""
            case $impl in
            bertkit-*) run "$tag" "$BIN" bench-plan --plan "$WORK/minilm-${impl#bertkit-}.plan" --batch "$b" --seq "$s" \
                           --threads "$THREADS" --iters "$ITERS" --warmup "$WARMUP" ;;
            pytorch-bf16) run "$tag" "$PYTHON" scripts/bench/plan_peer.py --model "$MODEL" --peer pytorch --dtype bf16 \
                              --batch "$b" --seq "$s" --threads "$THREADS" --iters "$ITERS" --warmup "$WARMUP" ;;
            *) run "$tag" "$PYTHON" scripts/bench/plan_peer.py --model "$MODEL" --peer "$impl" --batch "$b" --seq "$s" \
                   --threads "$THREADS" --iters "$ITERS" --warmup "$WARMUP" --workdir "$ONNX_WORKDIR" ;;
            esac
        done
    done
done

# --- tables
echo
"$PYTHON" - "$out" "$PRECISIONS" "$PEERS" "$SHAPES" "$ROUNDS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
precs, peers, shapes, rounds = sys.argv[2].split(), sys.argv[3].split(), sys.argv[4].split(), int(sys.argv[5])
impls = [f"bertkit-{p}" for p in precs] + peers
ms = {}  # (shape, impl) -> per-round ms_median
for r in rows:
    ms.setdefault((r["shape"], r["impl"]), []).append(r["ms_median"])
missing = [f"{s} {i}" for s in shapes for i in impls if len(ms.get((s, i), [])) != rounds]
if missing:
    sys.exit(f"plan.sh: error: missing results for {', '.join(missing)}")
med = {k: statistics.median(v) for k, v in ms.items()}

print("per run: ms_median of each round, then the median over rounds")
w = max(len(i) for i in impls)
for s in shapes:
    for i in impls:
        v = ms[(s, i)]
        print(f"  {s:>7s}  {i:<{w}s}  " + "  ".join(f"{x:9.2f}" for x in v) + f"  | {med[(s, i)]:9.2f}")
print()

def ratio(a, b):
    return f"{a / b:.2f}x" if b > 0 else "-"

cols = [f"bk {p}" for p in precs] + peers + ["ORT fp32 / best bk", "ORT int8 / bk int8", "ORT fp32 / bk fp32"]
bf16 = "bf16" in precs and "pytorch-bf16" in peers
if bf16:
    cols.append("PyTorch bf16 / bk bf16")
print(f"median ms over {rounds} rounds (>1x: bertkit faster)")
print("| shape | " + " | ".join(cols) + " |")
print("|---|" + "---:|" * len(cols))
for s in shapes:
    bk = {p: med[(s, f"bertkit-{p}")] for p in precs}
    best = min(bk, key=bk.get)
    cells = [f"{bk[p]:.2f}" for p in precs] + [f"{med[(s, p)]:.2f}" for p in peers]
    ortf, orti = med.get((s, "ort-fp32")), med.get((s, "ort-int8"))
    cells.append(f"{ratio(ortf, bk[best])} ({best})" if ortf else "-")
    cells.append(ratio(orti, bk["int8"]) if orti and "int8" in bk else "-")
    cells.append(ratio(ortf, bk["fp32"]) if ortf and "fp32" in bk else "-")
    if bf16:
        cells.append(ratio(med[(s, "pytorch-bf16")], bk["bf16"]))
    print(f"| {s} | " + " | ".join(cells) + " |")
print("\nseq/s: " + "; ".join(f"{s} " + ", ".join(f"{i} {int(s.split('x')[0]) * 1e3 / med[(s, i)]:.1f}" for i in impls)
                             for s in shapes))
vs = {}
for r in rows:
    vs.setdefault(r.get("version", "?"), set()).add(r["impl"])
print("versions: " + "; ".join(f"{', '.join(sorted(i))}: {v}" for v, i in vs.items()))
attn = sorted({r["attn_implementation"] for r in rows if "attn_implementation" in r})
if attn:
    print(f"pytorch attention: {', '.join(attn)}")
PY
echo
echo "# load avg at the end $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# commands (the exports and the ONNX preparation once, then each round runs the same bench commands; WORK=$WORK):"
awk '!seen[$0]++ { print "  " $0 }' "$cmds"
