#!/usr/bin/env bash
# The benchmark evaluations of issue 13's acceptance on the GPU machine, every cell or group in
# a process of its own, side by side, then one merged report each (`lift eval merge`):
#   niah   NIAH at $LIFT_NIAH_LENGTHS tokens (default "1024 2048") x depths $LIFT_NIAH_DEPTHS
#          (default "0 50 100"), a process per cell
#   squad  SQuAD v2.0 dev, $LIFT_SQUAD_GROUPS groups (default 6) of 2 paragraphs, 5 questions
#          each, a process per group
#   seal   SEAL's single-passage protocol: 20 single paragraphs, all their answerable
#          questions asked with no passage (4 processes of 5 passages)
# $LIFT_BENCHMARKS (default "niah squad seal") picks which run. At most $LIFT_EVAL_PARALLEL
# processes (default: as many as the free GPU memory holds, scripts/gpu-processes.sh) run at once, the others start as those finish. On 2 CPU cores these take many hours; on the H200 one call of a few minutes.
# The whole NIAH grid of issue 18 (25 cells) in two calls, for example:
#   LIFT_BENCHMARKS=niah LIFT_NIAH_LENGTHS="8192 16384" LIFT_NIAH_DEPTHS="0 25 50 75 100" ...
#
# Run from the repository root ON the GPU machine:
#   scripts/eval-benchmarks-gpu.sh OUT_DIR [lift options]...
# Writes OUT_DIR/{niah,squad,seal}/report.json and plots; prints one JSON line per benchmark.
# Needs $LIFT_BIN (default gpu-bin/lift, a `--features cuda` release build, docs/benchmarks.md),
# the default model under $LIFT_MODEL_DIR and the evaluation data under $LIFT_EVAL_DATA_DIR
# (scripts/fetch-eval-data.sh; scripts/gpu-stage.sh carries it to /root/eval-data). Each
# process is stopped after $LIFT_EVAL_TIMEOUT_S seconds (default 540); NIAH keeps the cells a
# stopped process finished, SQuAD groups do not. With LIFT_EVAL_WALL_S, no process starts after
# that many seconds and those running are stopped then, so the reports are merged before a
# device call's own limit ends the script (session 34 lost a whole call's reports to that
# limit).
set -euo pipefail
out=${1:?usage: scripts/eval-benchmarks-gpu.sh OUT_DIR [lift options]...}
shift
lift=${LIFT_BIN:-gpu-bin/lift}
timeout_s=${LIFT_EVAL_TIMEOUT_S:-540}
parallel=${LIFT_EVAL_PARALLEL:-$(scripts/gpu-processes.sh)}
benchmarks=${LIFT_BENCHMARKS:-niah squad seal}
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
export LIFT_SYNTH_CONCURRENCY=${LIFT_SYNTH_CONCURRENCY:-32}
work=$(mktemp -d)
# shellcheck source=scripts/eval-deadline.sh
source "$(dirname "${BASH_SOURCE[0]}")/eval-deadline.sh"
deadline_start "$work"
processes=()

run() {
  deadline_passed && return 0
  local dir=$work/$1
  shift
  mkdir -p "$dir"
  timeout "$timeout_s" "$lift" eval "$@" --out "$dir" >"$dir/stdout" 2>"$dir/stderr" &
  processes+=($!)
  wait_for_slot
}

wanted() { [[ " $benchmarks " == *" $1 "* ]]; }

if wanted niah; then
  for length in ${LIFT_NIAH_LENGTHS:-1024 2048}; do
    for depth in ${LIFT_NIAH_DEPTHS:-0 50 100}; do
      run "niah/$length-$depth" niah --lengths "$length" --depths "$depth" "$@"
    done
  done
fi
if wanted squad; then
  for ((group = 0; group < ${LIFT_SQUAD_GROUPS:-6}; group++)); do
    run "squad/$group" squad --groups 1 --skip-groups "$group" --paragraphs-per-group 2 \
      --questions-per-group 5 "$@"
  done
fi
if wanted seal; then
  for part in 0 1 2 3; do
    run "seal/$part" squad --groups 5 --skip-groups $((part * 5)) --paragraphs-per-group 1 \
      --questions-per-group 100 "$@"
  done
fi
((${#processes[@]} > 0)) && { wait "${processes[@]}" || true; }
deadline_end

for benchmark in $benchmarks; do
  reports=("$work/$benchmark"/*/report.json)
  if [[ ! -e ${reports[0]} ]]; then
    echo "{\"benchmark\": \"$benchmark\", \"error\": \"no process finished\"}"
    tail -n 5 "$work/$benchmark"/*/stderr >&2 || true
    continue
  fi
  # A merge whose plots cannot be drawn (no DejaVu font on the machine) still writes the report,
  # and so does one with failed jobs (status 3, `jobs_failed` in its line).
  "$lift" eval merge --out "$out/$benchmark" "${reports[@]}" || echo "$benchmark: merge exited $?, see above" >&2
  for dir in "$work/$benchmark"/*/; do
    [[ -e $dir/report.json ]] || { echo "$benchmark: $(basename "$dir") did not finish:" >&2; tail -n 5 "$dir/stderr" >&2; }
  done
done
