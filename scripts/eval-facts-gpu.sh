#!/usr/bin/env bash
# The fact evaluation (`lift eval facts`) on the GPU machine: every document in its own process,
# side by side, for one or more variants of the job options; one merged report per variant.
# On 2 CPU cores one variant of the dev set takes hours; on the H200 all of them take minutes,
# which is what makes choosing defaults by measurement possible.
#
# Run from the repository root ON the GPU machine:
#   scripts/eval-facts-gpu.sh OUT_DIR SET 'name[:lift options]'...
#   e.g. scripts/eval-facts-gpu.sh "$OUT" eval/facts/dev default 'epochs6:--epochs 6'
# Since a job's training steps replay their CUDA graphs, each process keeps up to 13.4 GB of
# GPU memory: at most $LIFT_EVAL_PARALLEL run at once (default: as many as the free GPU memory
# holds, scripts/gpu-processes.sh; 6 on an H100, 10 on an H200), the others start as those finish.
# Writes OUT_DIR/facts-<set>-<name>.json (the documents' reports merged) and prints one JSON
# line per variant. Needs gpu-bin/lift (a `--features cuda` release build, docs/benchmarks.md)
# and the default model under $LIFT_MODEL_DIR. Each process is stopped after
# $LIFT_EVAL_TIMEOUT_S seconds (default 540), so a device call returns what finished.
# With LIFT_EVAL_KEEP_TASKS=1, each document's job keeps its store (`--keep-store`) and the task
# files of each variant come back as OUT_DIR/tasks-<set>-<name>.tar, to read what was trained.
# With LIFT_EVAL_WALL_S, no process starts after that many seconds and those running are
# stopped then, so the reports are merged before the device call's own limit ends it (the model
# and binaries move with scripts/gpu-stage.sh).
set -euo pipefail
out=${1:?usage: scripts/eval-facts-gpu.sh OUT_DIR SET name[:options]...}
set_dir=${2:?usage: scripts/eval-facts-gpu.sh OUT_DIR SET name[:options]...}
shift 2
lift=${LIFT_BIN:-gpu-bin/lift}
timeout_s=${LIFT_EVAL_TIMEOUT_S:-540}
parallel=${LIFT_EVAL_PARALLEL:-$(scripts/gpu-processes.sh)}
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
export LIFT_SYNTH_CONCURRENCY=${LIFT_SYNTH_CONCURRENCY:-32}
work=$(mktemp -d)
mkdir -p "$out"
set_name=$(basename "$set_dir")
# shellcheck source=scripts/eval-deadline.sh
source "$(dirname "${BASH_SOURCE[0]}")/eval-deadline.sh"
deadline_start "$work"
documents=()

for variant in "$@"; do
  name=${variant%%:*}
  options=""
  [[ $variant == *:* ]] && options=${variant#*:}
  for doc in "$set_dir"/*.toml; do
    deadline_passed && break 2
    doc_name=$(basename "$doc" .toml)
    dir="$work/$name/$doc_name"
    mkdir -p "$dir"
    keep=()
    [[ ${LIFT_EVAL_KEEP_TASKS:-0} == 1 ]] && keep=(--keep-store "$dir/store")
    # shellcheck disable=SC2086 # the options are words on purpose
    timeout "$timeout_s" "$lift" eval facts --set "$set_dir" --only "$doc_name" --out "$dir" \
      "${keep[@]}" $options >"$dir/stdout" 2>"$dir/stderr" &
    documents+=($!)
    wait_for_slot
  done
done
wait "${documents[@]}" || true
deadline_end

for variant in "$@"; do
  name=${variant%%:*}
  options=""
  [[ $variant == *:* ]] && options=${variant#*:}
  if [[ ${LIFT_EVAL_KEEP_TASKS:-0} == 1 ]]; then
    (cd "$work/$name" && find . -path '*/tasks/*.jsonl') |
      tar -cf "$out/tasks-$set_name-$name.tar" -C "$work/$name" -T -
  fi
  python3 - "$work/$name" "$out/facts-$set_name-$name.json" "$name" "$options" <<'PY'
import glob, json, os, sys
work, target, name, options = sys.argv[1:]
documents, failed = [], []
for path in sorted(glob.glob(os.path.join(work, "*"))):
    try:
        report = json.load(open(os.path.join(path, "report.json")))
        documents.extend(report["documents"])
    except (OSError, ValueError, KeyError):
        tail = open(os.path.join(path, "stderr")).read()[-600:]
        failed.append({"document": os.path.basename(path), "stderr": tail})
overall = {}
for setting in ("base", "base+context", "lift"):
    scores = [s for d in documents for s in d["scores"] if s["setting"] == setting]
    answered = sum(s["answered"] for s in scores)
    questions = sum(s["questions"] for s in scores)
    overall[setting] = {
        "answered": answered,
        "questions": questions,
        "rate": round(answered / questions, 3) if questions else None,
        "reworded_answered": sum(s["reworded_answered"] for s in scores),
        "reworded_questions": sum(s["reworded_questions"] for s in scores),
    }
per_document = [
    {
        "document": os.path.basename(d["file"]),
        **{s["setting"]: s["answered"] for s in d["scores"]},
        "tasks": d["job"].get("tasks"),
        "steps": d["job"].get("steps"),
        "final_loss": d["job"].get("final_loss"),
        "job_s": d["job"].get("seconds"),
    }
    for d in documents
]
# A document whose job failed (out of GPU memory, a diverged loss) is in the report with its
# LIFT answers empty: scored, but counted here so that a low score is not read as a result.
jobs_failed = [os.path.basename(d["file"]) for d in documents if d["job"].get("state") != "succeeded"]
summary = {"variant": name, "options": options, "overall": overall,
           "documents": per_document, "failed": failed, "jobs_failed": jobs_failed}
json.dump({**summary, "reports": documents}, open(target, "w"), indent=1)
print(json.dumps(summary))
PY
done
