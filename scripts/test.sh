#!/usr/bin/env bash
# The one test command: test services, default model, formatting, lints, all tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lift-target}"

step() {
    echo
    echo "==> $*"
}

step "test services (RabbitMQ, moto S3)"
# shellcheck source=scripts/test-env.sh
source scripts/test-env.sh

step "default model"
scripts/fetch-model.sh

step "peer environment (PyTorch, transformers, PEFT on the CPU) for the parity tests"
LIFT_PEER_PYTHON="$(scripts/peer-env.sh | tail -1)"
export LIFT_PEER_PYTHON

step "evaluation data (the SQuAD loader is also tested on the real file)"
scripts/fetch-eval-data.sh

step "deploy manifests (kustomize render, schema and KEDA checks, compose)"
scripts/test-deploy.sh

step "cargo deny (licenses, duplicate versions, sources; advisories when the database is cached)"
if ! command -v cargo-deny >/dev/null; then
    cargo install --locked cargo-deny@0.20.2
fi
cargo deny check licenses bans sources
# The RustSec database comes from github.com, which not every machine reaches.
if [[ -d "${CARGO_HOME:-$HOME/.cargo}/advisory-db" ]]; then
    cargo deny check --disable-fetch advisories
else
    echo "cargo deny: no cached RustSec database (cargo deny fetch needs github.com); advisories not checked"
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "build the lift binary (the cross-process tests run it)"
# With the test helpers of the engine, as the tests build it: one build of every crate, not two.
cargo build -p lift-cli --features lift-engine/testing

step "cargo test"
# The thread settings `lift` makes in its main (cli/src/main.rs, configure_cpu_threads), for
# the tests that run the engine in their own process: unset, candle parses /proc/cpuinfo for
# every matmul, and its idle pool worker spins on a core the matmuls need.
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-$(nproc)}
export CANDLE_BARRIER_POOL_SPIN_LIMIT=${CANDLE_BARRIER_POOL_SPIN_LIMIT:-2000}
cargo test --workspace -- --test-threads=2
