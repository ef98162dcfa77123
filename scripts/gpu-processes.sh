#!/usr/bin/env bash
# Prints how many evaluation processes fit the GPU at once, for scripts/eval-facts-gpu.sh and
# scripts/eval-benchmarks-gpu.sh: each keeps up to about 13 GB of GPU memory (its training
# steps replay CUDA graphs), so the free memory bounds them. On an H100 (80 GB) 7 at once ran
# some out of memory and 6 fit (sessions 31 to 34, docs/results.md); on an H200 10 fit and 20
# did not. At most 10; 1 where nvidia-smi is missing or answers nothing.
set -euo pipefail
per_process_mib=13000
free_mib=$(nvidia-smi --query-gpu=memory.free --format=csv,noheader,nounits 2>/dev/null | head -1 || true)
if [[ ! $free_mib =~ ^[0-9]+$ ]]; then
  echo 1
  exit 0
fi
fit=$((free_mib / per_process_mib))
((fit < 1)) && fit=1
((fit > 10)) && fit=10
echo "$fit"
