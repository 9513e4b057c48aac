#!/usr/bin/env bash
# all-MiniLM-L6-v2 forward pass on the CPU, side by side in one run: bertkit on burn flex (the
# default backend), burn ndarray, burn ndarray + OpenBLAS, PyTorch and ONNX Runtime, all on the
# same THREADS threads, shapes 8x128 and 1x32, median of 11 after 2 warm-ups. Rounds alternate
# the runtimes so that drift in the machine's speed hits all of them alike.
#
#   PYTHON=.venv/bin/python scripts/bench/forward.sh [ROUNDS]     (needs torch, onnxruntime, onnx)
#   apt-get install libopenblas-dev                                (for the OpenBLAS variant)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PYTHON="${PYTHON:-python3}"
ROUNDS="${1:-2}"
export THREADS="${THREADS:-2}"
export RAYON_NUM_THREADS="$THREADS" OPENBLAS_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS"
scripts/fetch-assets.sh >&2
bench() { cargo bench --quiet -p bertkit-model --bench forward "$@" 2>/dev/null; }
bench --no-run >&2
bench --features ndarray --no-run >&2
CARGO_TARGET_DIR=target/openblas bench --features openblas --no-run >&2
echo "# $(date -u +%FT%TZ) $(scripts/bench/cpu.sh), $THREADS threads"
for round in $(seq "$ROUNDS"); do
    echo "# round $round"
    bench
    bench --features ndarray | grep ndarray
    CARGO_TARGET_DIR=target/openblas bench --features openblas | grep openblas
    "$PYTHON" scripts/bench/peers.py --threads "$THREADS" | grep '^{'
done
