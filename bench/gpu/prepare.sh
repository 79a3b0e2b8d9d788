#!/usr/bin/env bash
# Prepares the GPU benchmark for the lent accelerator machine (the `device` tool), which has no
# network and no Rust: builds lacoot's benchmark binaries with the wgpu feature, packs them, and
# downloads the Vulkan loader and POT's wheel. Run here, from the repository root; then run
# bench/gpu/run.sh there with `.gpu-carry`, `.gl` and `.whl` carried.
set -euo pipefail
cd "$(dirname "$0")/../.."
for folder in .gpu-carry .gl .whl; do
    grep -qx "/$folder/" .git/info/exclude || echo "/$folder/" >>.git/info/exclude
done
mkdir -p .gpu-carry .gl .whl
# `cargo bench --no-run` prints where each benchmark executable is.
cargo bench --locked --features wgpu --no-run --bench train_step --bench mswd --bench eval_forward \
    2>&1 | tee /tmp/lacoot-gpu-build.log
for bench in train_step mswd eval_forward; do
    binary=$(grep -o "target/release/deps/${bench}-[0-9a-f]*" /tmp/lacoot-gpu-build.log | tail -1)
    strip -o ".gpu-carry/${bench}" "$binary"
    xz -6 -f ".gpu-carry/${bench}"
done
if ! ls .gl/libvulkan1_*.deb >/dev/null 2>&1; then
    options='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
    mkdir -p /tmp/amd64/partial
    # shellcheck disable=SC2086
    apt-get $options update >/dev/null
    # shellcheck disable=SC2086
    (cd .gl && apt-get $options download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi
if ! ls .whl/pot-*.whl >/dev/null 2>&1; then
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl POT==0.9.7
    # The wheel's BSP-OT extension (175 MB unpacked, 25 MB packed) would not fit the machine's
    # 64 MiB carry limit, and the sliced distances never use it: drop it, and let its import fail
    # quietly.
    python3 bench/gpu/slim_pot_wheel.py .whl/pot-*.whl
fi
du -sh .gpu-carry .gl .whl
git ls-files -z | xargs -0 du -cb | tail -1 | sed 's/total/bytes of tracked files (all must stay under 64 MiB)/'
