#!/usr/bin/env bash
# Lints the CUDA-only code (engine/src/gpu.rs, engine/src/graph.rs and every `cfg(feature =
# "cuda")` branch), which `scripts/test.sh` never compiles: CI machines have no CUDA toolkit,
# and candle's kernels take minutes to build. Run it after changing the engine.
#
# Needs a CUDA 13 toolkit (nvcc) in the environment; no GPU. On this project's development
# machines: `source ../shared/gpu/cuda-env.sh` first (the toolkit from PyPI wheels). Uses the
# release profile and $CARGO_TARGET_DIR (default ~/.cache/lift-target-cuda), so it reuses the
# kernels of the GPU binary's build (`cargo build --release -p lift-cli --features cuda`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v nvcc >/dev/null || {
    echo "clippy-cuda: nvcc not found: source a CUDA 13 build environment first (../shared/gpu/cuda-env.sh)" >&2
    exit 1
}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/lift-target-cuda}
cargo clippy --release -p lift-engine -p lift-cli --features cuda --all-targets -- -D warnings
