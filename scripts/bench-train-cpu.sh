#!/usr/bin/env bash
# LoRA SFT steps on the CPU side by side with PyTorch + PEFT (../shared/bench/torch_peft_lora.py
# in the peer venv of scripts/peer-env.sh): random weights of SmolLM2-135M's shape, f32,
# batch 4 x 128 tokens, half of them answer tokens, ${LIFT_BENCH_THREADS:-2} threads each,
# at each rank in $LIFT_BENCH_RANKS (default 16,128; alpha = 2 x rank). Prints JSON lines,
# the peer's then lift's per rank, each with the peak RSS of its process (/usr/bin/time).
#
#   scripts/bench-train-cpu.sh            (from the repository root, after `cargo build`)
#
# Not part of scripts/test.sh: it takes several minutes and measures, it does not check.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

lift=${LIFT_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/lift-target}/debug/lift}
[[ -x $lift ]] || { echo "bench-train-cpu: no lift binary at $lift (cargo build -p lift-cli, or set LIFT_BIN)" >&2; exit 1; }
peer_script=${LIFT_PEER_BENCH:-../shared/bench/torch_peft_lora.py}
[[ -f $peer_script ]] || { echo "bench-train-cpu: no peer benchmark at $peer_script (set LIFT_PEER_BENCH)" >&2; exit 1; }
[[ -x /usr/bin/time ]] || { echo "bench-train-cpu: /usr/bin/time is missing (apt-get install time)" >&2; exit 1; }
threads=${LIFT_BENCH_THREADS:-2}
ranks=${LIFT_BENCH_RANKS:-16,128}
steps=${LIFT_BENCH_STEPS:-4}
python=$(scripts/peer-env.sh | tail -1)

# Runs a command, prints its last JSON line with `peak_rss_bytes` and `runner` added.
measured() {
    local runner=$1; shift
    local rss_file json
    rss_file=$(mktemp)
    json=$(/usr/bin/time -o "$rss_file" -f '%M' "$@" | grep '^{' | tail -1)
    python3 -c 'import json,sys
row = json.loads(sys.argv[1]); row["runner"] = sys.argv[2]
row["peak_rss_bytes"] = int(open(sys.argv[3]).read().split()[-1]) * 1024
print(json.dumps(row))' "$json" "$runner" "$rss_file"
    rm -f "$rss_file"
}

for rank in ${ranks//,/ }; do
    options=(--shape smollm2-135m --batch 4 --seq 128 --rank "$rank" --alpha $((2 * rank))
             --steps "$steps" --warmup 1)
    OMP_NUM_THREADS=$threads measured peer "$python" "$peer_script" --device cpu "${options[@]}"
    CANDLE_NUM_THREADS=$threads RAYON_NUM_THREADS=$threads measured lift "$lift" bench train "${options[@]}"
done
