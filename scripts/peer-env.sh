#!/usr/bin/env bash
# The peer environment the parity tests and benchmarks compare lift against: PyTorch (its
# PyPI wheel, run on the CPU), Hugging Face transformers and PEFT, in a venv under
# $LIFT_PEER_VENV (default ~/.cache/lift-peer).
# Prints the venv's python on its last line; run by scripts/test.sh, or by hand.
set -euo pipefail
venv=${LIFT_PEER_VENV:-$HOME/.cache/lift-peer}
torch_version=2.11.0
transformers_version=5.24.0
peft_version=0.21.2
accelerate_version=1.16.0
# transformers reads GGUF files (the default model) through it.
gguf_version=0.19.0
python=$venv/bin/python
check() {
    "$python" - "$torch_version" "$transformers_version" "$peft_version" 2>/dev/null <<'PY'
import sys
import gguf, peft, torch, transformers
wanted = sys.argv[1:]
found = [torch.__version__.split("+")[0], transformers.__version__, peft.__version__]
sys.exit(0 if found == wanted else 1)
PY
}
if ! check; then
    echo "peer-env: installing torch $torch_version, transformers $transformers_version, peft $peft_version into $venv" >&2
    python3 -m venv "$venv"
    # The PyPI torch wheel imports its CUDA libraries even on a CPU-only machine, so they
    # come too (about 5 GB in all); the tests run it on the CPU.
    "$venv/bin/pip" install -q "torch==$torch_version" "transformers==$transformers_version" \
        "peft==$peft_version" "accelerate==$accelerate_version" "gguf==$gguf_version"
    check || { echo "peer-env: the installed versions do not import as pinned" >&2; exit 1; }
fi
echo "$python"
