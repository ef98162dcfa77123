#!/usr/bin/env bash
# The main job on the embedded default, from a fresh clone: fetch the default model, build
# lift, LIFT the example document, then ask the adapted model (and the base model, for
# comparison) questions about it with no document in the prompt.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lift-target}"

scripts/fetch-model.sh
cargo build --release -p lift-cli
lift="$CARGO_TARGET_DIR/release/lift"

# The defaults (lift run --help) are the ones measured on the fact dev set (docs/results.md).
"$lift" run examples/zorblat.md \
    --ask "Who is the current Grand Lampwright of the guild?" \
    --ask "What is the final test for apprentices called?" \
    --ask "When was the record lantern made?" \
    --ask "Who founded the Zorblat Lantern Guild?" \
    --compare-base "$@"
