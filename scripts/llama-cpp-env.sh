#!/usr/bin/env bash
# llama.cpp as a peer, through llama-cpp-python[server] 0.3.16 built from PyPI's source
# package (about 5 to 10 minutes on 2 cores) into $LIFT_LLAMA_CPP_VENV (default
# ~/.cache/lift/llama-cpp-venv). Prints the venv's python on its last line; used by
# scripts/compat-llama-cpp.sh and scripts/bench-generate-cpu.sh.
set -euo pipefail
venv=${LIFT_LLAMA_CPP_VENV:-$HOME/.cache/lift/llama-cpp-venv}
if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -c 'import llama_cpp.server' 2>/dev/null; then
  echo "llama-cpp-env: building llama-cpp-python[server]==0.3.16 into $venv" >&2
  python3 -m venv "$venv"
  # Portable kernels, as a wheel for other machines would have (AVX2 is still used here).
  CMAKE_ARGS="-DGGML_NATIVE=OFF" "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "llama-cpp-python[server]==0.3.16"
fi
echo "$venv/bin/python"
