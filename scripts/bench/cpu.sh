#!/usr/bin/env bash
# One line naming this machine's CPU for a benchmark's output: the model name, the core count and
# the instruction-set flags that pick bertkit's kernels (and the peers'), e.g.
#   Intel(R) Xeon(R) Processor, 2 cores, flags: avx2 fma avx512f avx512bw avx512vl avx512_vnni ...
# Every script in scripts/bench prints it; docs/PERFORMANCE.md copies it into each table.
set -euo pipefail
model=$(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo | head -n 1)
[ -n "$model" ] || model=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1)
flags=" $(grep -m1 -E '^(flags|Features)' /proc/cpuinfo | cut -d: -f2) "
have=()
for f in avx2 fma avx512f avx512bw avx512vl avx512_vnni avx_vnni avx512_bf16 avx512_fp16 \
    amx_tile amx_int8 amx_bf16 asimd asimddp sve; do
    [[ $flags == *" $f "* ]] && have+=("$f")
done
echo "${model:-unknown CPU}, $(nproc) cores, flags: ${have[*]:-none of the SIMD ones}"
