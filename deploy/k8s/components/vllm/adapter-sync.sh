#!/bin/sh
# Copies finished lift adapters from the store into a directory vLLM can read, one directory per
# job: $ADAPTER_DIR/<job id>/{adapter_config.json,adapter_model.safetensors}.
# With vLLM's lora_filesystem_resolver plugin (VLLM_LORA_RESOLVER_CACHE_DIR=$ADAPTER_DIR), a
# request with "model": "<job id>" then loads that adapter on first use; without the plugin,
# POST /v1/load_lora_adapter {"lora_name": "<job id>", "lora_path": "$ADAPTER_DIR/<job id>"}.
#
# The trainer writes adapter_model.safetensors first and adapter_config.json last, so a job
# whose config exists is complete. Each adapter is copied into a hidden directory and renamed
# into place, so vLLM never sees half an adapter. Finished adapters never change; a job already
# copied is skipped.
#
# Environment: LIFT_STORE_URL (s3://bucket/prefix), AWS_* credentials (and AWS_ENDPOINT_URL for
# a non-AWS server), ADAPTER_DIR (default /adapters), SYNC_INTERVAL_SECONDS (default 30).
set -u

jobs_uri="${LIFT_STORE_URL%/}/jobs"
adapter_dir="${ADAPTER_DIR:-/adapters}"
interval="${SYNC_INTERVAL_SECONDS:-30}"

case "$jobs_uri" in
    s3://*) ;;
    *) echo "adapter-sync: LIFT_STORE_URL must be s3://bucket/prefix, got '${LIFT_STORE_URL:-}'" >&2; exit 2 ;;
esac
mkdir -p "$adapter_dir" || exit 1
echo "adapter-sync: $jobs_uri -> $adapter_dir every ${interval}s"

while :; do
    # `aws s3 ls` prints one "PRE <job id>/" line per job. It also exits non-zero while the
    # prefix is still empty; real errors (credentials, endpoint) show on stderr.
    if listing="$(aws s3 ls "$jobs_uri/")"; then
        printf '%s\n' "$listing" | while read -r kind name _rest; do
            [ "$kind" = "PRE" ] || continue
            job="${name%/}"
            [ -n "$job" ] && [ ! -d "$adapter_dir/$job" ] || continue
            aws s3 ls "$jobs_uri/$job/adapter/adapter_config.json" >/dev/null 2>&1 || continue
            partial="$adapter_dir/.partial-$job"
            rm -rf "$partial"
            if aws s3 cp --recursive --only-show-errors "$jobs_uri/$job/adapter/" "$partial/" &&
                mv "$partial" "$adapter_dir/$job"; then
                echo "adapter-sync: job $job: adapter ready at $adapter_dir/$job"
            else
                echo "adapter-sync: job $job: copy failed, retrying next round" >&2
                rm -rf "$partial"
            fi
        done
    fi
    sleep "$interval"
done
