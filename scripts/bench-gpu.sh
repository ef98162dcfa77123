#!/usr/bin/env bash
# The GPU benchmarks of docs/benchmarks.md, run ON the GPU machine from the repository root,
# ours and the PyTorch + PEFT peer side by side in one run. JSON lines on stdout, each
# tagged with "run"; also written to $OUT/bench-gpu-<phase>.jsonl when $OUT is set.
#
#   scripts/bench-gpu.sh train   LoRA SFT throughput (random weights of real shapes) and
#                                cold start, ours vs peer
#   scripts/bench-gpu.sh jobs    time to adapted model (lift run, real SmolLM2 weights,
#                                pipeline on and off) and generation throughput
#   scripts/bench-gpu.sh generate generation throughput on random SmolLM2 weights (no model
#                                file needed)
#   scripts/bench-gpu.sh profile GPU time per kernel name of one eager training step
#                                (Nsight Compute), for qwen2.5-0.5b and llama3-8b at batch 4
#
# Needs: gpu-bin/lift (a `--features cuda` release build, see docs/benchmarks.md),
# gpu-bin/torch_peft_lora.py (../shared/bench), python3 with torch/transformers/peft; for
# `jobs`: LIFT_BENCH_MODEL (a .gguf) and LIFT_BENCH_DOCS (a folder of .txt documents).
set -euo pipefail
phase=${1:?usage: scripts/bench-gpu.sh train|jobs}
lift=${LIFT_BIN:-gpu-bin/lift}
peer=${LIFT_PEER:-gpu-bin/torch_peft_lora.py}
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
out_file=${OUT:+$OUT/bench-gpu-$phase.jsonl}

# Runs a command that prints one JSON object per line; adds "run": <label> and wall-clock
# seconds from process start to exit ("process_s") to each line. Its stderr stays in
# /tmp/bench-gpu-<label>.stderr.
tagged() {
  local label=$1; shift
  local start; start=$(date +%s.%N)
  local output status=0
  local stderr=/tmp/bench-gpu-$label.stderr
  output=$("$@" 2>"$stderr") || status=$?
  local end; end=$(date +%s.%N)
  if [ "$status" != 0 ]; then
    python3 -c 'import json,sys; print(json.dumps({"run": sys.argv[1], "error": open(sys.argv[2]).read()[-2000:]}))' "$label" "$stderr"
    return 0
  fi
  printf '%s\n' "$output" | python3 -c '
import json, sys
label, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
for line in sys.stdin:
    line = line.strip()
    if not line.startswith("{"):
        continue
    row = json.loads(line)
    row["run"] = label
    row["process_s"] = round(end - start, 3)
    if "first_step_done_unix_s" in row:
        row["process_start_to_first_step_s"] = round(row["first_step_done_unix_s"] - start, 3)
    print(json.dumps(row))
' "$label" "$start" "$end"
}

emit() { if [ -n "$out_file" ]; then tee -a "$out_file"; else cat; fi; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/# /' >&2

case $phase in
train)
  # Cold start: an empty driver compute cache (as on a new machine or container), then the
  # same cache again (as for every later process on that machine).
  cache=$(mktemp -d)
  cold=(bench train --shape smollm2-135m --batch 4 --steps 1 --warmup 1)
  tagged cold-start-ours-empty-cache env CUDA_CACHE_PATH="$cache" "$lift" "${cold[@]}" | emit
  tagged cold-start-ours-warm-cache env CUDA_CACHE_PATH="$cache" "$lift" "${cold[@]}" | emit
  tagged cold-start-peer python3 "$peer" --shape smollm2-135m --batch 4 --steps 1 --warmup 1 | emit
  for shape in smollm2-135m qwen2.5-0.5b; do
    for batch in 4 16; do
      tagged "ours-graphs-$shape-b$batch" "$lift" bench train --shape "$shape" --batch "$batch" | emit
      tagged "peer-$shape-b$batch" python3 "$peer" --shape "$shape" --batch "$batch" | emit
    done
    tagged "ours-eager-$shape-b4" "$lift" bench train --shape "$shape" --batch 4 --cuda-graphs false | emit
    tagged "ours-graphs-no-tf32-$shape-b4" env LIFT_TF32=0 "$lift" bench train --shape "$shape" --batch 4 | emit
  done
  tagged ours-graphs-llama3-8b-b4 "$lift" bench train --shape llama3-8b --batch 4 --steps 10 --warmup 3 | emit
  tagged ours-graphs-no-tf32-llama3-8b-b4 env LIFT_TF32=0 "$lift" bench train --shape llama3-8b --batch 4 --steps 10 --warmup 3 | emit
  if [ "${LIFT_BENCH_PEER_8B:-0}" = 1 ]; then  # the peer builds the 8B model for ~5 minutes
    tagged peer-llama3-8b-b4 python3 "$peer" --shape llama3-8b --batch 4 --steps 10 --warmup 3 | emit
  fi
  ;;
jobs)
  model=${LIFT_BENCH_MODEL:?set LIFT_BENCH_MODEL to a .gguf}
  docs=${LIFT_BENCH_DOCS:?set LIFT_BENCH_DOCS to a folder of .txt documents}
  export LIFT_MODEL=$model LIFT_SYNTH_CONCURRENCY=${LIFT_SYNTH_CONCURRENCY:-32}
  for doc in "$docs"/*.txt; do
    name=$(basename "$doc" .txt)
    for mode in pipeline after-synthesis; do
      flag=()
      [ "$mode" = after-synthesis ] && flag=(--train-after-synthesis)
      store=$(mktemp -d)
      LIFT_STORE_URL="file://$store" tagged "job-$name-$mode" "$lift" run "$doc" --epochs 1 \
        --qa-per-sentence 1 --learning-rate 3e-4 --json "${flag[@]}" \
        | python3 -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin]
final = rows[-1]
ms = lambda k: final.get(k) or 0
created, last_chunk, first_step, done = ms("created_at_ms"), ms("last_chunk_at_ms"), ms("first_step_at_ms"), ms("finished_at_ms")
generation = (last_chunk - created) / 1e3
training = (done - first_step) / 1e3 if first_step else 0.0
overlap = max(0.0, (last_chunk - first_step) / 1e3) if first_step else 0.0
job = (done - created) / 1e3
final.update(job_s=job, generation_s=generation, training_s=training, overlap_s=overlap,
             overhead_s=round(job - (generation + training - overlap), 3))
print(json.dumps(final))' | emit
      rm -rf "$store"
    done
  done
  tagged generate "$lift" bench generate --model "$model" --batches 1,8,64 --new-tokens 128 | emit
  ;;
generate)
  tagged generate-random-smollm2 "$lift" bench generate --shape smollm2-135m --batches 1,8,64 --new-tokens 128 | emit
  ;;
profile)
  # The kernels after model creation: the first (eager) step, then the forward timings.
  for run in "qwen2.5-0.5b 400 3000" "llama3-8b 600 3000"; do
    set -- $run
    timeout 90 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
      --launch-skip "$2" --launch-count "$3" "$lift" bench train --shape "$1" --batch 4 --steps 1 --warmup 1 \
      --cuda-graphs false 2>/dev/null | python3 -c '
import collections, csv, json, sys
rows = [r for r in csv.reader(l for l in sys.stdin if l.startswith("\""))]
header, rows = rows[0], rows[1:]
name, value = header.index("Kernel Name"), header.index("Metric Value")
total, count = collections.Counter(), collections.Counter()
for r in rows:
    total[r[name][:80]] += float(r[value].replace(",", "")) / 1e6
    count[r[name][:80]] += 1
top = [dict(kernel=k, ms=round(v, 3), launches=count[k]) for k, v in total.most_common(25)]
print(json.dumps(dict(run="profile-" + sys.argv[1], kernels=len(rows), gpu_ms=round(sum(total.values()), 2), top=top)))
' "$1" | emit
  done
  ;;
*)
  echo "unknown phase $phase (train or jobs)" >&2
  exit 2
  ;;
esac
