# shellcheck shell=bash
# Sourced by the GPU plan scripts (gpu_plan.sh, gpu_session.sh). burn's CUDA backend (CubeCL)
# compiles every kernel with NVRTC on first use (and, in a `cuda-autotune` build, tunes every new
# matmul shape, 5-35 s each on an H100); bertkit keeps both in its kernel cache
# (BERTKIT_KERNEL_CACHE, docs/SCALING.md). These two functions carry that cache from one lent GPU
# session to the next: CUBECL_CACHE=FILE.tgz is unpacked into it before the runs, and it is packed
# into $OUT/cubecl-cache.tgz after every run (so a command stopped at its time limit still
# returns what it compiled and tuned).
export BERTKIT_KERNEL_CACHE=${BERTKIT_KERNEL_CACHE:-/tmp/bertkit-kernels}
unpack_cubecl_cache() {
    mkdir -p "$BERTKIT_KERNEL_CACHE"
    if [ -n "${CUBECL_CACHE:-}" ] && [ -f "$CUBECL_CACHE" ]; then
        tar xzf "$CUBECL_CACHE" -C "$BERTKIT_KERNEL_CACHE" && echo "unpacked the kernel cache $CUBECL_CACHE"
    fi
}
save_cubecl_cache() {
    tar czf "$OUT/cubecl-cache.tgz" -C "$BERTKIT_KERNEL_CACHE" . 2>/dev/null
}
