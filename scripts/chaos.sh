#!/usr/bin/env bash
# The chaos run of the job lifecycle: jobs through a distributed cluster (coordinator,
# synthesis workers, trainers; real RabbitMQ and S3 on moto) while a seeded schedule kills,
# pauses and restarts processes and stops the broker (tests/src/bin/chaos.rs says what is
# checked). Not part of CI: it runs for many minutes and stops the RabbitMQ node's app, which
# every other user of the node would notice.
#   scripts/chaos.sh [--seed N] [--jobs N] [--fault-seconds S] ...   (--help for all)
# Prints the JSON report on stdout (the faults as they happen on stderr); docs/results
# keep recorded runs.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/test-env.sh
source scripts/test-env.sh >&2
cargo build --quiet -p lift-cli -p lift-tests --bin lift --bin chaos
"${CARGO_TARGET_DIR:-target}/debug/chaos" "$@"
