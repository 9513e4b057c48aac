#!/usr/bin/env bash
# The CPU kernels on aarch64, from an x86-64 machine: cross-compiled (rustup's aarch64 standard
# library, Debian's cross gcc as the linker) and run under qemu's user-mode emulation, so that the
# Arm code paths are tested where no Arm machine is. Two emulated CPUs:
#   max         Armv8.x with the dot-product extension: the Neon f32 kernel and the `sdot` int8
#               kernel, each against the portable one, bit for bit; FPCR.FZ in every pool;
#   cortex-a53  Armv8.0, no dot product: the portable int8 path.
# First the whole workspace through clippy for aarch64 (-D warnings).
# Emulation says nothing about speed. Installs what it lacks (rustup target, apt packages);
# the runner and linker are set in .cargo/config.toml.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target=aarch64-unknown-linux-gnu
# Without the toolchain pieces (no network to rustup's or Debian's servers) the tests cannot run:
# say so loudly and stop, without failing the rest of CI.
skip() {
    echo "test-aarch64: SKIPPED, the aarch64 tests did not run: $*" >&2
    exit 0
}
rustup target list --installed | grep -qx "$target" || rustup target add "$target" ||
    skip "rustup target add $target failed"
if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    { $sudo apt-get update -q && $sudo apt-get install -y -q qemu-user gcc-aarch64-linux-gnu \
        libc6-dev-arm64-cross; } || skip "apt-get install qemu-user gcc-aarch64-linux-gnu failed"
fi
# The runtime's kernels and plans, and the model crate's CPU math and denormal flags.
tests=(-p bertkit-runtime -p bertkit-model)
# The whole workspace builds for aarch64, lint-clean (CI's other clippy builds for x86-64).
cargo clippy --release --target "$target" --workspace --all-targets -- -D warnings
for cpu in max cortex-a53; do
    echo "--- aarch64 under qemu, cpu $cpu"
    QEMU_CPU="$cpu" cargo test --release --target "$target" "${tests[@]}" --lib --test batch_invariance
done
