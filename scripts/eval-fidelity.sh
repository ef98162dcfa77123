#!/usr/bin/env bash
# Does the adapted model give back its own training answers? LIFTs one fact-set document with
# the defaults, then asks the adapted model a sample of its own training questions, verbatim;
# with a CUDA build also on the CPU (LIFT_DEVICE=cpu), to show both devices agree. Prints one
# JSON line per question: the task (question, trained answer, kind) and the answers.
#
#   scripts/eval-fidelity.sh eval/facts/dev/history-quillon-tide-mill.toml [QUESTIONS]
#
# Uses $LIFT_BIN (default: the release build in $CARGO_TARGET_DIR) and the default model.
set -euo pipefail
doc=${1:?usage: scripts/eval-fidelity.sh FACT_DOCUMENT.toml [QUESTIONS]}
count=${2:-16}
lift=${LIFT_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/lift-target}/release/lift}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export LIFT_STORE_URL="$work/store"

title=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["title"])' "$doc")
python3 -c 'import sys, tomllib; open(sys.argv[2], "w").write(tomllib.load(open(sys.argv[1], "rb"))["text"])' "$doc" "$work/doc.md"
"$lift" run "$work/doc.md" --title "$title" --json >"$work/run.jsonl" 2>"$work/run.log" \
  || { tail -20 "$work/run.log" >&2; exit 1; }
job=$(ls "$work/store/jobs" | head -1)

python3 - "$work/store/jobs/$job/tasks" "$count" >"$work/questions.jsonl" <<'PY'
import glob, json, os, random, sys
folder, count = sys.argv[1], int(sys.argv[2])
tasks = [json.loads(line) for path in sorted(glob.glob(os.path.join(folder, "*.jsonl"))) for line in open(path)]
random.seed(0)
for task in random.sample(tasks, min(count, len(tasks))):
    print(json.dumps({k: task[k] for k in ("question", "answer", "kind")}))
PY

while read -r task; do
  question=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["question"])' "$task")
  answer=$("$lift" ask "$job" "$question" 2>/dev/null)
  cpu_answer=$(LIFT_DEVICE=cpu "$lift" ask "$job" "$question" 2>/dev/null)
  python3 -c '
import json, sys
task, answer, cpu_answer = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
print(json.dumps({"task": task, "answer": answer, "cpu_answer": cpu_answer,
                  "verbatim": answer.strip() == task["answer"].strip()}))' "$task" "$answer" "$cpu_answer"
done <"$work/questions.jsonl"
