#!/usr/bin/env bash
# All-reduce bandwidth: `bertkit bench-allreduce` under `bertkit launch` against PyTorch's
# torch.distributed (gloo on the CPU) under torchrun, same ranks, buffer and timing, alternating.
# Usage: scripts/bench/allreduce.sh [RANKS=2] [SIZE_MB=256] [ITERS=5] [ROUNDS=2] [BACKEND=tcp|nccl]
set -euo pipefail
cd "$(dirname "$0")/../.."
ranks=${1:-2} size=${2:-256} iters=${3:-5} rounds=${4:-2} backend=${5:-tcp}
bin=${BERTKIT:-target/release/bertkit}
python=${BERTKIT_PYTHON:-python3}
peer=gloo; [ "$backend" = nccl ] && peer=nccl
echo "machine: $(scripts/bench/cpu.sh)"
for round in $(seq "$rounds"); do
    echo "round $round"
    "$bin" launch --nproc-per-node "$ranks" --master-port 29621 -- \
        "$bin" bench-allreduce --size-mb "$size" --iters "$iters" --backend "$backend" 2>&1 |
        grep 'all-reduce'
    OMP_NUM_THREADS=1 "$python" -m torch.distributed.run --nproc-per-node "$ranks" \
        --master-port 29622 scripts/bench/allreduce_peer.py "$size" "$iters" "$peer" 2>&1 |
        grep 'all-reduce'
done
