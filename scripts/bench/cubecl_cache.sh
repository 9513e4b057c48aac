# shellcheck shell=bash
# Sourced by the GPU scripts (gpu_pretrain.sh, gpu_plan.sh). CubeCL (burn's CUDA backend) autotunes
# every new kernel shape on first use, 5-35 s each on an H100 (docs/PERFORMANCE.md), and keeps the
# results under ./target/ of the working directory. These two functions carry them from one lent
# GPU session to the next: CUBECL_CACHE=FILE.tgz is unpacked before the runs, and everything under
# ./target but build outputs is packed into $OUT/cubecl-cache.tgz after every run (so a command
# stopped at its time limit still returns what it tuned).
unpack_cubecl_cache() {
    if [ -n "${CUBECL_CACHE:-}" ] && [ -f "$CUBECL_CACHE" ]; then
        mkdir -p target && tar xzf "$CUBECL_CACHE" -C target && echo "unpacked the autotune cache $CUBECL_CACHE"
    fi
}
save_cubecl_cache() {
    (cd target 2>/dev/null && find . -maxdepth 1 -mindepth 1 ! -name release ! -name debug -print0 \
        | tar czf "$OUT/cubecl-cache.tgz" --null -T -) 2>/dev/null
}
