#!/usr/bin/env bash
# Generation on the CPU side by side with llama.cpp, on the same GGUF (the default model),
# greedy, the same prompt, ${LIFT_BENCH_THREADS:-2} threads each; timed from submitting the
# prompt to the last new token, after one warm-up, like `lift bench generate`. Prints JSON
# lines: llama.cpp one sequence, then lift with 8-bit decoding (the default) and with f32
# decoding (LIFT_CPU_DECODE=f32), each at the batch sizes in $LIFT_BENCH_BATCHES (default 1,8).
#
#   scripts/bench-generate-cpu.sh            (from the repository root, after `cargo build`)
#
# Not part of scripts/test.sh: building llama.cpp takes minutes (scripts/llama-cpp-env.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

lift=${LIFT_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/lift-target}/debug/lift}
[[ -x $lift ]] || { echo "bench-generate-cpu: no lift binary at $lift (cargo build -p lift-cli, or set LIFT_BIN)" >&2; exit 1; }
new_tokens=${LIFT_BENCH_NEW_TOKENS:-64}
threads=${LIFT_BENCH_THREADS:-2}
batches=${LIFT_BENCH_BATCHES:-1,8}
python=$(scripts/llama-cpp-env.sh | tail -1)
scripts/fetch-model.sh >&2
model=${LIFT_MODEL_DIR:-$HOME/.cache/lift/models}/SmolLM2-135M-Instruct.Q4_1.gguf

"$python" - "$model" "$new_tokens" "$threads" <<'PY'
import json, sys, time
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

model, new_tokens, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llm = Llama(model_path=model, n_ctx=1024, n_threads=threads, n_batch=512, verbose=False)
messages = [{"role": "user", "content": "Write a long story about a lighthouse keeper and the sea."}]
# The GGUF's own chat template, as lift renders it.
template = llm.metadata["tokenizer.chat_template"]
formatter = Jinja2ChatFormatter(template=template, eos_token="<|im_end|>", bos_token="<|im_start|>")
text = formatter(messages=messages).prompt
tokens = llm.tokenize(text.encode(), add_bos=False, special=True)


def run():
    llm.reset()
    generated = 0
    started = time.perf_counter()
    # Greedy; the model's end token does not stop it, so every run decodes new_tokens.
    for _ in llm.generate(tokens, temp=0.0, top_k=1, reset=True):
        generated += 1
        if generated == new_tokens:
            break
    return generated, time.perf_counter() - started


run()
generated, seconds = run()
print(json.dumps({"bench": "generate", "peer": "llama.cpp (llama-cpp-python 0.3.16)",
                  "threads": threads, "batch": 1, "prompt_tokens": len(tokens),
                  "new_tokens": generated, "seconds": seconds,
                  "tokens_per_s": generated / seconds}))
PY

for decode in int8 f32; do
  CANDLE_NUM_THREADS=$threads LIFT_CPU_DECODE=$decode "$lift" bench generate \
    --batches "$batches" --new-tokens "$new_tokens" \
    | python3 -c 'import json,sys
for line in sys.stdin:
    row = json.loads(line); row["cpu_decode"] = sys.argv[1]; print(json.dumps(row))' "$decode"
done
