#!/usr/bin/env bash
# Compatibility check against llama.cpp's OpenAI-compatible server (llama-cpp-python), a
# generator people already run: it serves the default GGUF, and `lift run` synthesizes through
# it (LIFT_GENERATOR_URL). The server answers `response_format: json_schema` with HTTP 500 and
# a validation error, so this also checks that the synthesis client steps down to json_object.
# The job takes the default recipe ($LIFT_COMPAT_RECIPE, default auto): free QA for an HTTP
# generator, and the fact-first tasks for each sentence SmolLM2 writes no usable free-form pair
# for, which without the schema is most of them (docs/benchmarks.md has what each gave).
#
#   scripts/compat-llama-cpp.sh            (from the repository root, after `cargo build`)
#
# Builds llama-cpp-python once (scripts/llama-cpp-env.sh), then runs one small job. Prints one
# JSON line: the job's state, tasks and the generator's step-down; exits non-zero when the job
# did not succeed. Not part of scripts/test.sh: the build alone takes longer than the rest of
# the CI slice allows (docs/benchmarks.md, "Generators people already run", has the last result).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

lift=${LIFT_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/lift-target}/debug/lift}
port=${LIFT_LLAMA_CPP_PORT:-18080}
[[ -x $lift ]] || { echo "compat-llama-cpp: no lift binary at $lift (cargo build -p lift-cli, or set LIFT_BIN)" >&2; exit 1; }

python=$(scripts/llama-cpp-env.sh | tail -1)

scripts/fetch-model.sh >&2
model=${LIFT_MODEL_DIR:-$HOME/.cache/lift/models}/SmolLM2-135M-Instruct.Q4_1.gguf
work=$(mktemp -d)
"$python" -m llama_cpp.server --model "$model" --host 127.0.0.1 --port "$port" \
  --n_ctx 4096 >"$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 60); do
  curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null && break
  sleep 1
done
curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null \
  || { echo "compat-llama-cpp: the server did not start:" >&2; tail -20 "$work/server.log" >&2; exit 1; }

cat >"$work/doc.md" <<'DOC'
# The Brindle Point Ferry

The Brindle Point ferry first crossed the Sallow Estuary on 14 June 1924. Its first skipper was
Maud Ellery, who ran the service for nine years. The crossing takes eleven minutes and covers
1.8 kilometres. In 1961 the wooden hull was replaced by a steel one built at the Carrow yard.
The ferry carries 64 passengers and 8 cars, and a single fare costs 3.40 pounds.
DOC

started=$(date +%s)
status=0
LIFT_STORE_URL="file://$work/store" LIFT_GENERATOR_URL="http://127.0.0.1:$port/v1" \
  LIFT_GENERATOR_MAX_IN_FLIGHT=1 "$lift" run "$work/doc.md" --epochs 1 --json \
  --recipe "${LIFT_COMPAT_RECIPE:-auto}" \
  >"$work/job.jsonl" 2>"$work/job.err" || status=$?
python3 - "$work/job.jsonl" "$work/job.err" "$status" "$(($(date +%s) - started))" \
  "${LIFT_COMPAT_RECIPE:-auto}" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
final = rows[-1] if rows else {}
log = open(sys.argv[2]).read()
print(json.dumps({
    "check": "llama-cpp-python 0.3.16 server as the generator",
    "recipe": sys.argv[5],
    "exit_status": int(sys.argv[3]),
    "state": final.get("state"),
    "tasks": final.get("tasks_total"),
    "sentences_failed": final.get("sentences_failed"),
    "stepped_down_to_json_object": "falling back" in log and "JsonObject" in log,
    "seconds": int(sys.argv[4]),
    "error": final.get("error", ""),
}))
sys.exit(0 if final.get("state") == "succeeded" and (final.get("tasks_total") or 0) > 0 else 1)
PY
