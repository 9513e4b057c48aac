#!/usr/bin/env bash
# The GPU code path without a GPU: bertkit built with burn's wgpu backend (`--features wgpu`:
# CubeCL kernels, kernel fusion, autodiff on device tensors, as on CUDA) runs on Mesa's lavapipe,
# a Vulkan driver that computes on the CPU. tests/gpu_path.rs pretrains on it next to the CPU
# backend (the same losses) and counts the kernels each step compiles (stable shapes, the
# warm-up). Installs lavapipe (Debian's mesa-vulkan-drivers) when no Vulkan driver is there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! compgen -G "/usr/share/vulkan/icd.d/*.json" >/dev/null; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get install -y -q mesa-vulkan-drivers ||
        { $sudo apt-get update -q && $sudo apt-get install -y -q mesa-vulkan-drivers; }
fi
scripts/fetch-assets.sh
cargo test --release --features wgpu --test gpu_path
