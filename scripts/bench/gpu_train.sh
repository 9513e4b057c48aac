#!/usr/bin/env bash
# The GPU checks of GPU pretraining (issues 18, 19 and 20), as one script for a lent H100/H200,
# within BUDGET seconds, most important first; each run is bounded by what is left:
#  1. time to the first optimizer step, cold (empty kernel cache) and with the cache kept, for
#     the build without CubeCL's autotuning (`--features cuda`) and with it (`cuda-autotune`),
#     and the kernels each run compiled (PTX cache entries) or tuned (autotune entries);
#  2. CUDA vs CPU losses: BERT-mini without dropout, 6 LAMB steps of 32 x 128, f32 and bf16
#     (the CPU losses come with the carried folder: the CPU is this machine's), and f32 with
#     the flash-style attention kernels (`--device-attention flash`);
#  3. bench-train at NVIDIA's phase-1 shape (seq 128, micro-batch 64, bf16) for BERT-base and
#     BERT-large, phase 2 (seq 512, micro-batch 8) for BERT-base, each next to PyTorch (HF
#     BertForPreTraining, bf16 autocast, sdpa, AdamW on both) and the bf16 matmul rates of
#     cuBLAS (through PyTorch) and burn, with the GPU memory in use at its peak, and where the
#     step's time goes (forward+backward, all-reduce, gradient norm, optimizer); BERT-base at
#     both shapes again with `--device-attention flash` (time and peak memory of both paths); and
#     the largest micro-batch of BERT-large at seq 512 that fits the card (`fit_batch`);
#  4. NCCL at world size 1: bench-allreduce of 1 GiB as a host buffer and as a CUDA tensor in
#     place (the gradient buckets' path, its device address checked both ways), and BERT-base's
#     step with the gradients all-reduced on the GPU (during / after the backward) against none;
#  5. 50 pretraining steps of BERT-base in bf16 on real shards after `--warmup-kernels`;
# after BERT-base's timed bench-train, a profiled one (`--kernel-profile`): the launches a step
# makes and each kernel's device time (issue 19's "where the step's time goes").
# The agreement, warm-up and 50-step runs log the kernels each step compiles (`--kernel-log`:
# `kernels_compiled` in their metrics.jsonl, per step in the warm-up's output); the timed runs
# do not (with the log on, CubeCL also runs clang-format on each kernel's source, if installed).
# It reads .gpu/ (git-ignored, carried), prepared on the build machine:
#   cargo build --release --features cuda           -> xz -T2 -6 -c bertkit > .gpu/bertkit-fixed.xz
#   cargo build --release --features cuda-autotune  -> xz ... > .gpu/bertkit-autotune.xz
#   bertkit prep --nsp --seq-len 128 --quiet --input 'assets/data/sotu/19*' 'assets/data/sotu/20*' \
#       --tokenizer assets/all-MiniLM-L6-v2 --out .gpu/data128
#   sed 's/dropout_prob = 0.1/dropout_prob = 0.0/' configs/models/bert-mini.toml > .gpu/mini-nodrop.toml
#   bertkit pretrain --config configs/pretrain/cpu-tiny.toml --device cpu \
#       --set "model=\"$PWD/.gpu/mini-nodrop.toml\"" --set "data=\"$PWD/.gpu/data128\"" \
#       --set 'out="/tmp/run-cpu"' --set batch.global=32 --set batch.micro=32 --set schedule.steps=6 \
#       --set log.every=1 --set eval.every=0 --set checkpoint.every=0 --set log.report_to=jsonl
#   cp /tmp/run-cpu/metrics.jsonl .gpu/losses-cpu-f32.jsonl     # the CPU side of `agree` below
# ISSUES="18 19 20" (the default) runs the checks of all three issues in the order below; a slot
# lent to one of them runs only its own (ISSUES=19, say), with the whole budget; a run that serves
# several issues runs when any of them is chosen. The autotune build is only read for issue 18.
# Run from the repository root: OUT=$OUT BUDGET=565 bash scripts/bench/gpu_train.sh, carrying .gpu
# (33 MB; the lease's limit is 64 MiB with the tree), with a 600 s limit on the call. What comes
# back: $OUT/summary.txt (the runs' table, the losses, and the issues' goals, each marked met or
# not), $OUT/logs.tgz (every run's output), $OUT/kernel-cache.tgz (both caches; carried by the
# next session as .gpu/kernel-cache.tgz, it times the first step with a cache kept from an earlier
# GPU run).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
OUT=${OUT:-/tmp/bertkit-gpu}
BUDGET=${BUDGET:-540}
ISSUES=${ISSUES:-18 19 20}
# want N...: whether any of these issues' checks were chosen (ISSUES).
want() {
    local i
    for i in "$@"; do
        case " $ISSUES " in *" $i "*) return 0 ;; esac
    done
    return 1
}
W=/tmp/w
rm -rf "$W"; mkdir -p "$OUT" "$W"
T0=$SECONDS
left() { echo $((BUDGET - (SECONDS - T0))); }
log() { echo "[$((SECONDS - T0)) s] $*" | tee -a "$W/steps.log"; }
pack() { tar czf "$OUT/logs.tgz" -C /tmp w 2>/dev/null; }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 RUST_LOG=warn
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$W/card.txt"
log "checks of issues: $ISSUES"
builds=fixed
want 18 && builds="fixed autotune"
for v in $builds; do
    python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
        ".gpu/bertkit-$v.xz" "/tmp/bk-$v" && chmod +x "/tmp/bk-$v"
done
/tmp/bk-fixed --version || exit 3
F=/tmp/bk-fixed A=/tmp/bk-autotune
KF=/tmp/kc-fixed KA=/tmp/kc-autotune
rm -rf "$KF" "$KA"
# The GPU memory in use, sampled: each run's peak is read from its window.
(while :; do echo "$(date +%s.%N) $(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits)"; sleep 0.2; done) > "$W/mem.txt" 2>/dev/null &
SAMPLER=$!
trap 'kill $SAMPLER 2>/dev/null' EXIT

# run NAME LIMIT CMD...: at most LIMIT seconds (less when the budget is short), stdout to
# $W/NAME.out, stderr to $W/NAME.err, the window and exit status to $W/runs.jsonl.
run() {
    local name=$1 limit=$2 l s t rc
    shift 2
    l=$(left)
    [ "$limit" -gt $((l - 10)) ] && limit=$((l - 10))
    if [ "$limit" -lt 15 ]; then log "skipped $name: no time left"; return 1; fi
    s=$(date +%s.%N); t=$SECONDS
    timeout "$limit" "$@" > "$W/$name.out" 2> "$W/$name.err"
    rc=$?
    echo "{\"name\":\"$name\",\"start\":$s,\"end\":$(date +%s.%N),\"rc\":$rc,\"limit\":$limit}" >> "$W/runs.jsonl"
    log "$name: rc $rc in $((SECONDS - t)) s (limit $limit s)"
    [ $rc -ne 0 ] && tail -n 5 "$W/$name.err"
    pack
    return $rc
}
# The entries (lines) of a kernel cache's PTX and autotune files.
entries() {
    echo "$1: ptx $(find "$1" -name '*.json.log' ! -path '*/autotune/*' -exec cat {} + 2>/dev/null | wc -l)," \
        "autotune $(find "$1" -path '*autotune*' -name '*.json.log' -exec cat {} + 2>/dev/null | wc -l)" \
        | tee -a "$W/steps.log"
}
bench() { # bench BIN CACHE NAME LIMIT MODEL BATCH SEQ [args]
    local bin=$1 kc=$2 name=$3 limit=$4 model=$5 b=$6 s=$7
    shift 7
    run "$name" "$limit" env BERTKIT_KERNEL_CACHE="$kc" "$bin" bench-train --model "configs/models/$model.toml" \
        --device cuda --precision bf16 --batch "$b" --seq "$s" --json "$@"
    entries "$kc"
}
peer() { # peer NAME LIMIT L H A I BATCH SEQ
    run "$1" "$2" python3 scripts/bench/pretrain_peer.py --layers "$3" --hidden "$4" --heads "$5" \
        --intermediate "$6" --batch "$7" --seq "$8" --threads 16 --device cuda --bf16 --steps 10 --warmup 3 --json
}
# fit_batch RUN_A BATCH_A RUN_B BATCH_B: the micro-batch that should fill 90% of the card's
# memory, from two runs' peak memory in use (linear in the micro-batch); fails when a run failed
# or the memory did not grow.
fit_batch() {
    python3 - "$W" "$@" <<'PY'
import json, sys
w, a, ba, b, bb = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
total = float(open(f"{w}/card.txt").read().split(",")[1].split()[0])
runs = {r["name"]: r for r in map(json.loads, open(f"{w}/runs.jsonl"))}
mem = []
for line in open(f"{w}/mem.txt"):
    try:
        t, m = map(float, line.split())
        mem.append((t, m))
    except ValueError:
        pass
def peak(name):
    r = runs.get(name)
    v = [m for t, m in mem if r and r["rc"] == 0 and r["start"] <= t <= r["end"]]
    return max(v) if v else sys.exit(1)
pa, pb = peak(a), peak(b)
per = (pb - pa) / (bb - ba)
if per <= 0:
    sys.exit(1)
print(int((0.9 * total - (pa - per * ba)) // per))
PY
}
agree() { # agree PRECISION LIMIT [ATTENTION]: --device-attention ATTENTION (default probs)
    local tag=$1${3:+-$3}
    rm -rf "/tmp/run-$tag"
    run "agree-$tag" "$2" env BERTKIT_KERNEL_CACHE="$KF" "$F" --kernel-log "$W/kernels-agree-$tag.log" \
        --device-attention "${3:-probs}" pretrain --config configs/pretrain/cpu-tiny.toml \
        --device cuda --set "model=\"$PWD/.gpu/mini-nodrop.toml\"" --set "data=\"$PWD/.gpu/data128\"" \
        --set "out=\"/tmp/run-$tag\"" --set "precision=\"$1\"" --set batch.global=32 --set batch.micro=32 \
        --set schedule.steps=6 --set log.every=1 --set eval.every=0 --set checkpoint.every=0 \
        --set log.report_to=jsonl
    cp "/tmp/run-$tag/metrics.jsonl" "$W/losses-cuda-$tag.jsonl" 2>/dev/null
}

# A cache brought back by an earlier session (its $OUT/kernel-cache.tgz, carried as
# .gpu/kernel-cache.tgz): the first step with it, before anything compiles here.
if want 18 && [ -f .gpu/kernel-cache.tgz ]; then
    mkdir -p /tmp/carried && tar xzf .gpu/kernel-cache.tgz -C /tmp/carried
    bench "$F" /tmp/carried/kc-fixed mini-fixed-carried 60 bert-mini 64 128 --steps 5 --warmup 3
    bench "$F" /tmp/carried/kc-fixed base-fixed-carried 60 bert-base 64 128 --steps 5 --warmup 3
fi
want 18 && bench "$F" "$KF" mini-fixed-cold 120 bert-mini 64 128 --steps 5 --warmup 3
want 18 && agree fp32 75
want 18 && agree bf16 60
want 19 && agree fp32 50 flash
# BERT-base's step without an all-reduce: issue 19's row, and issue 20's step with it off.
want 19 20 && bench "$F" "$KF" base-fixed 150 bert-base 64 128 --steps 10 --warmup 3 --matmul 8192
want 19 && peer peer-base 90 12 768 12 3072 64 128
# The flash-style attention kernels (model/src/device_attention.rs) instead of burn's products
# around the probabilities' kernel: time and peak memory, to choose --device-attention's default.
want 19 && bench "$F" "$KF" base-flash 60 bert-base 64 128 --steps 10 --warmup 3 --device-attention flash
# Where BERT-base's step goes, kernel by kernel (CubeCL's profiler runs each kernel on its own:
# its step time is not the real one), with how many kernels a step launches; and burn-fusion's
# decisions (BURN_FUSION_LOG=full, in base-profiled.err): whether CUDA, like lavapipe, runs the
# attention's scale, mask and softmax unfused ("un-fused (9 ops)" blocks, PERFORMANCE.md).
if want 19; then
    export BURN_FUSION_LOG=full
    bench "$F" "$KF" base-profiled 60 bert-base 64 128 --steps 2 --warmup 3 --kernel-profile "$W/profile-base.txt"
    unset BURN_FUSION_LOG
    log "fusion: $(grep -c 'un-fused (9 ops)' "$W/base-profiled.err") blocks 'un-fused (9 ops)', $(grep -c '▸ fused' "$W/base-profiled.err") fused blocks"
fi
if want 20; then
    bench "$F" "$KF" base-nccl 75 bert-base 64 128 --steps 10 --warmup 3 --all-reduce nccl
    bench "$F" "$KF" base-nccl-after 60 bert-base 64 128 --steps 10 --warmup 3 --all-reduce nccl-after-backward
    run allreduce-host 40 "$F" bench-allreduce --backend nccl --size-mb 1024 --iters 5
    run allreduce-device 40 env BERTKIT_KERNEL_CACHE="$KF" "$F" bench-allreduce --backend nccl --size-mb 1024 --iters 5 --on-device
fi
want 18 && bench "$F" "$KF" mini-fixed-kept 45 bert-mini 64 128 --steps 5 --warmup 3
P=(--config configs/pretrain/cpu-tiny.toml --device cuda --set "model=\"$PWD/configs/models/bert-base.toml\""
   --set "data=\"$PWD/.gpu/data128\"" --set 'out="/tmp/run-base"' --set 'precision="bf16"' --set batch.global=64
   --set batch.micro=64 --set schedule.steps=50 --set optimizer.lr=2e-3 --set log.every=1 --set eval.every=0
   --set checkpoint.every=0 --set log.report_to=jsonl)
# Issue 18's warm-up before a run, issue 19's 50-step loss curve on real shards.
if want 18 19; then
    run base-warmup-kernels 60 env BERTKIT_KERNEL_CACHE="$KF" "$F" --kernel-log "$W/kernels-base-warmup.log" \
        pretrain "${P[@]}" --warmup-kernels
    run base-50-steps 120 env BERTKIT_KERNEL_CACHE="$KF" "$F" --kernel-log "$W/kernels-base-50.log" pretrain "${P[@]}"
    cp /tmp/run-base/metrics.jsonl "$W/losses-base-50.jsonl" 2>/dev/null
    entries "$KF"
fi
if want 18; then
    bench "$A" "$KA" mini-autotune-cold 150 bert-mini 64 128 --steps 5 --warmup 3
    bench "$A" "$KA" mini-autotune-kept 45 bert-mini 64 128 --steps 5 --warmup 3
fi
if want 19; then
    bench "$F" "$KF" large-fixed 120 bert-large 64 128 --steps 10 --warmup 3
    peer peer-large 75 24 1024 16 4096 64 128
    bench "$F" "$KF" base512-fixed 90 bert-base 8 512 --steps 10 --warmup 3
    peer peer-base512 60 12 768 12 3072 8 512
    bench "$F" "$KF" base512-flash 60 bert-base 8 512 --steps 10 --warmup 3 --device-attention flash
    # The largest micro-batch of BERT-large at seq 512 on this card: the peak memory at 4 and 8
    # sequences gives the cost of one, and the micro-batch that should fill 90% is then run.
    bench "$F" "$KF" large512-b4 60 bert-large 4 512 --steps 2 --warmup 1
    bench "$F" "$KF" large512-b8 60 bert-large 8 512 --steps 2 --warmup 1
    if n=$(fit_batch large512-b4 4 large512-b8 8) && [ "$n" -gt 8 ]; then
        log "BERT-large at seq 512: $n sequences should fill 90% of the card's memory"
        echo "$n" > "$W/large512-fit.batch"
        bench "$F" "$KF" large512-fit 90 bert-large "$n" 512 --steps 2 --warmup 1
    fi
fi
tar czf "$OUT/kernel-cache.tgz" -C /tmp kc-fixed kc-autotune 2>/dev/null
kill $SAMPLER 2>/dev/null

python3 - "$W" <<'PY' | tee "$W/summary.txt"
import glob, json, os, sys
w = sys.argv[1]
try:
    import torch
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3): a @ b
    torch.cuda.synchronize(); ts = []
    for _ in range(10):
        s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True)
        s.record(); a @ b; e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e) / 1e3)
    ts.sort(); cublas = 2 * 8192**3 / ts[len(ts) // 2]
except Exception as e:
    print("no cuBLAS rate:", e); cublas = float("nan")
print(f"card: {open(f'{w}/card.txt').read().strip()}; cuBLAS bf16 8192^3 matmul (random data): {cublas/1e12:.0f} TFLOP/s")
mem = []
for l in open(f"{w}/mem.txt"):
    p = l.split()
    if len(p) == 2:
        try: mem.append((float(p[0]), float(p[1])))
        except ValueError: pass
try:
    runs = {r["name"]: r for r in map(json.loads, open(f"{w}/runs.jsonl"))}
except OSError:
    runs = {}
def peak(name):
    r = runs.get(name)
    v = [m for t, m in mem if r and r["start"] <= t <= r["end"]]
    return max(v) if v else float("nan")
def load(name):
    try:
        return json.loads([l for l in open(f"{w}/{name}.out") if l.startswith("{")][-1])
    except (OSError, IndexError, ValueError):
        return None
print("\nrun                    rc  wall s  first step s  start->first s  step ms  seq/s   TFLOP/s  MFU(cuBLAS)  peak MiB")
rows = {}
for name, r in runs.items():
    j = load(name); rows[name] = j
    wall = r["end"] - r["start"]
    if j and j.get("impl") == "bertkit":
        tf = j["achieved_tflop_s"]
        print(f"{name:22s} {r['rc']:3d} {wall:7.1f} {j['first_step_s']:12.1f} {j['start_to_first_step_s']:14.1f} "
              f"{j['step_ms_median']:8.1f} {j['seq_per_s']:7.1f} {tf:8.1f} {tf*1e12/cublas:10.3f} {peak(name):9.0f}"
              + (f"  burn matmul {j['matmul_tflop_s']:.0f} TFLOP/s" if j.get("matmul_tflop_s") else "")
              + (f"  [{j['gradient_sync']}]" if j.get("all_reduce") not in (None, "none") else ""))
        kp = j.get("kernel_profile")
        if kp:
            print(f"{'':22s} profiled: {kp['launches_per_step']:.0f} kernel launches a step, "
                  f"{kp['device_ms_per_step']:.1f} ms of device time; the longest:")
            for k in kp["kernels"][:12]:
                print(f"{'':24s}{k['ms_per_step']:8.2f} ms {k['launches_per_step']:6.0f} x  {k['name'][:100]}")
        ph = j.get("phase_ms_median") or {}
        if ph:
            print(f"{'':22s} step ms: forward+backward {ph['forward_backward']:.1f}, all-reduce "
                  f"{ph['all_reduce']:.1f}, grad norm {ph['grad_norm']:.1f}, optimizer {ph['optimizer']:.1f}")
    elif j and j.get("impl") == "pytorch":
        print(f"{name:22s} {r['rc']:3d} {wall:7.1f} {'':12s} {'':14s} {j['step_ms_median']:8.1f} {j['seq_per_s']:7.1f} "
              f"{'':8s} {'':10s} {peak(name):9.0f}  torch peak allocated {j.get('peak_allocated_mib')} MiB")
    else:
        text = open(f"{w}/{name}.out").read().strip() or open(f"{w}/{name}.err").read()
        print(f"{name:22s} {r['rc']:3d} {wall:7.1f}  " + " ".join(text.split()[-40:]))
for m, n in [("base", "base-fixed"), ("base", "base-flash"), ("large", "large-fixed"),
             ("base512", "base512-fixed"), ("base512", "base512-flash")]:
    b, p = rows.get(n), rows.get(f"peer-{m}")
    if b and p:
        print(f"{n}: bertkit {b['seq_per_s']:.1f} seq/s, PyTorch {p['seq_per_s']:.1f} seq/s, ratio {b['seq_per_s']/p['seq_per_s']:.3f}")
if os.path.exists(f"{w}/large512-fit.batch"):
    n, r = open(f"{w}/large512-fit.batch").read().strip(), runs.get("large512-fit")
    verdict = "ran" if r and r["rc"] == 0 else f"failed (rc {r['rc'] if r else 'none'})"
    print(f"BERT-large, seq 512: a micro-batch of {n} (fitted to 90% of the card) {verdict}, "
          f"peak {peak('large512-fit'):.0f} MiB; at 4 and 8: {peak('large512-b4'):.0f} and "
          f"{peak('large512-b8'):.0f} MiB")
def losses(path):
    try:
        return {r["step"]: r for r in map(json.loads, open(path)) if r.get("split") == "train"}
    except OSError:
        return {}
cpu = losses(".gpu/losses-cpu-f32.jsonl")
f32, bf = losses(f"{w}/losses-cuda-fp32.jsonl"), losses(f"{w}/losses-cuda-bf16.jsonl")
fl = losses(f"{w}/losses-cuda-fp32-flash.jsonl")
print("\nstep  cpu f32     cuda f32    cuda bf16   f32 flash   rel f32     rel bf16    rel f32 flash")
for s in sorted(cpu):
    c = cpu[s]["loss"]
    g, h, x = (d.get(s, {}).get("loss", float("nan")) for d in (f32, bf, fl))
    print(f"{s:4d}  {c:.6f}  {g:.6f}  {h:.6f}  {x:.6f}  {abs(g-c)/c:.2e}    {abs(h-c)/c:.2e}    {abs(x-c)/c:.2e}")
base = losses(f"{w}/losses-base-50.jsonl")
if base:
    print("\nBERT-base bf16, 64 x 128, real shards: step: loss (seq/s)")
    print(", ".join(f"{s}: {r['loss']:.3f} ({r.get('sequences_per_s', 0):.0f})" for s, r in sorted(base.items())))
# The issues' goals, each with what this call measured (a goal without its runs is not listed).
print("\ngoals:")
def verdict(ok):
    return "met" if ok else "NOT met"
for label, d, tol in [("18: CUDA f32 losses vs the CPU's", f32, 1e-4),
                      ("18: CUDA bf16 losses vs the CPU's", bf, 2e-2),
                      ("19: CUDA f32 losses with --device-attention flash vs the CPU's", fl, 1e-4)]:
    rel = [abs(d[s]["loss"] - cpu[s]["loss"]) / cpu[s]["loss"] for s in cpu if s in d]
    if cpu and len(rel) == len(cpu):
        print(f"  {label}: largest relative difference {max(rel):.2e} (goal <= {tol:g}): {verdict(max(rel) <= tol)}")
for n in ("mini-fixed-carried", "base-fixed-carried", "mini-fixed-kept"):
    j = rows.get(n)
    if j and j.get("impl") == "bertkit":
        t = j["start_to_first_step_s"]
        print(f"  18: {n}: first optimizer step {t:.1f} s after the start (goal <= 20 s with a warm cache): {verdict(t <= 20)}")
for m, n in [("base", "base-fixed"), ("base", "base-flash"), ("large", "large-fixed"),
             ("base512", "base512-fixed"), ("base512", "base512-flash")]:
    b, p = rows.get(n), rows.get(f"peer-{m}")
    if b and p and p.get("impl") == "pytorch":
        r = b["seq_per_s"] / p["seq_per_s"]
        print(f"  19: {n}: {r:.3f}x PyTorch's seq/s (goal >= 1.0): {verdict(r >= 1.0)}")
    if b and b.get("impl") == "bertkit" and cublas == cublas:
        mfu = b["achieved_tflop_s"] * 1e12 / cublas
        print(f"  19: {n}: MFU {mfu:.1%} of cuBLAS's bf16 rate (goal >= 45%): {verdict(mfu >= 0.45)}")
PY
cp "$W/summary.txt" "$OUT/summary.txt"
pack
log done
