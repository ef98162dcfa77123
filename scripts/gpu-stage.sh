#!/usr/bin/env bash
# Moves the default model and `--features cuda` binaries to the lent GPU machine, whose calls
# carry at most 64 MiB (working tree included): the 98 MB model goes in two calls, the
# binaries (stripped, xz'd, about 15 MB each) in a third, with the data the benchmarks read
# (SQuAD and the NIAH haystack, 0.8 MB xz'd, when scripts/fetch-eval-data.sh fetched them). Every
# call lands in a fresh checkout, so `unpack` keeps what arrived under /root (lost when the
# machine goes back).
#
# Here:   scripts/gpu-stage.sh pack NAME=PATH...   e.g. lift-a=$CARGO_TARGET_DIR/release/lift
#         fills gpu-stage/model-1, gpu-stage/model-2 and gpu-stage/bin (ignored by git).
# There:  scripts/gpu-stage.sh unpack   in each call, from the repository root, carrying one
#         of the folders: gpu-stage/model-1, then gpu-stage/model-2, then gpu-stage/bin; then
#         the model is $LIFT_MODEL_DIR (/root/models), the binaries /root/bin/NAME and the
#         benchmark data $LIFT_EVAL_DATA_DIR (/root/eval-data).
set -euo pipefail
# shellcheck source=scripts/default-model.sh
source "$(dirname "${BASH_SOURCE[0]}")/default-model.sh"
# The first part and the tree (about 12 MB) together stay under 64 MiB.
FIRST_PART_BYTES=50000000
stage=gpu-stage

case ${1:-} in
pack)
  shift
  model="${LIFT_MODEL_DIR:-$HOME/.cache/lift/models}/$MODEL_FILE"
  [[ -f $model ]] || { echo "gpu-stage: no $model (scripts/fetch-model.sh)" >&2; exit 1; }
  rm -rf "$stage" && mkdir -p "$stage/model-1" "$stage/model-2" "$stage/bin"
  head -c "$FIRST_PART_BYTES" "$model" >"$stage/model-1/part"
  tail -c "+$((FIRST_PART_BYTES + 1))" "$model" >"$stage/model-2/part"
  for binary in "$@"; do
    name=${binary%%=*} path=${binary#*=}
    strip -o "$stage/bin/$name" "$path"
    xz -T0 -6 "$stage/bin/$name"
  done
  data="${LIFT_EVAL_DATA_DIR:-$HOME/.cache/lift/eval-data}"
  if [[ -e $data/squad.json && -e $data/paul-graham-essays ]]; then
    tar -chf - -C "$data" squad.json paul-graham-essays | xz -T0 -6 >"$stage/bin/eval-data.tar.xz"
  else
    echo "gpu-stage: no benchmark data under $data (scripts/fetch-eval-data.sh); the fact sets need none" >&2
  fi
  du -b "$stage"/* | awk '{printf "gpu-stage: %s %.1f MB to carry\n", $2, $1 / 1e6}'
  ;;
unpack)
  mkdir -p /root/stage /root/models /root/bin
  for part in model-1 model-2; do
    [[ -f $stage/$part/part ]] && cp "$stage/$part/part" "/root/stage/$part"
  done
  model=/root/models/$MODEL_FILE
  if [[ ! -f $model && -f /root/stage/model-1 && -f /root/stage/model-2 ]]; then
    cat /root/stage/model-1 /root/stage/model-2 >"$model"
    echo "$MODEL_SHA256  $model" | sha256sum --check --quiet || { rm -f "$model"; exit 1; }
  fi
  if [[ -f $stage/bin/eval-data.tar.xz ]]; then
    mkdir -p /root/eval-data && tar -xJf "$stage/bin/eval-data.tar.xz" -C /root/eval-data
  fi
  for packed in "$stage"/bin/*.xz; do
    [[ -f $packed && $packed != */eval-data.tar.xz ]] || continue
    xz -dc "$packed" >"/root/bin/$(basename "$packed" .xz)"
    chmod +x "/root/bin/$(basename "$packed" .xz)"
  done
  echo "gpu-stage: model $([[ -f $model ]] && echo ready || echo incomplete); binaries: $(ls /root/bin);" \
    "benchmark data: $([[ -e /root/eval-data/squad.json ]] && echo /root/eval-data || echo none)"
  ;;
*)
  echo "usage: scripts/gpu-stage.sh pack NAME=PATH... | unpack" >&2
  exit 2
  ;;
esac
