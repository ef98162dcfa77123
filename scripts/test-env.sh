# shellcheck shell=bash
# Test services for lift, sourced by scripts/test.sh (or by hand: `source scripts/test-env.sh`):
# - RabbitMQ on 127.0.0.1:5672 (installed with apt when missing and we are root on Debian/Ubuntu)
# - moto_server (S3) on a free loopback port, from a cached venv, with bucket lift-test
# Exports LIFT_TEST_AMQP_URL, LIFT_TEST_S3_ENDPOINT, LIFT_TEST_S3_BUCKET, AWS_ACCESS_KEY_ID,
# AWS_SECRET_ACCESS_KEY and AWS_REGION, and stops moto when the sourcing shell exits.
# Any failure prints what failed and returns non-zero; nothing is skipped.

LIFT_MOTO_VERSION="5.2.5"
LIFT_MOTO_VENV="${LIFT_MOTO_VENV:-$HOME/.cache/lift/moto-venv}"
LIFT_TEST_S3_BUCKET="${LIFT_TEST_S3_BUCKET:-lift-test}"

lift_env_fail() {
    echo "test-env: $*" >&2
    return 1
}

lift_rabbitmqctl() {
    local ctl
    ctl="$(command -v rabbitmqctl || true)"
    [[ -n "$ctl" ]] || ctl=/usr/sbin/rabbitmqctl
    [[ -x "$ctl" ]] || return 127
    timeout 30 "$ctl" "$@"
}

lift_rabbitmq_answers() {
    lift_rabbitmqctl status >/dev/null 2>&1 \
        && (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null
}

lift_ensure_rabbitmq() {
    if lift_rabbitmq_answers; then
        echo "test-env: rabbitmq answers on 127.0.0.1:5672"
        return 0
    fi
    # A node that runs with its application stopped (a broker-outage test killed before it
    # could start it again) answers neither status nor AMQP, but start_app: try that first.
    if lift_rabbitmqctl start_app >/dev/null 2>&1 && lift_rabbitmq_answers; then
        echo "test-env: rabbitmq application started again; answers on 127.0.0.1:5672"
        return 0
    fi
    if ! command -v rabbitmq-server >/dev/null && [[ ! -x /usr/sbin/rabbitmq-server ]]; then
        if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null; then
            lift_env_fail "rabbitmq-server is not installed and cannot be installed here (needs root on Debian/Ubuntu); install it or point LIFT_TEST_AMQP_URL at a broker"
            return 1
        fi
        echo "test-env: installing rabbitmq-server with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get install -y rabbitmq-server >/dev/null \
            || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y rabbitmq-server >/dev/null; } \
            || { lift_env_fail "apt-get install rabbitmq-server failed"; return 1; }
    fi
    # apt may have started it already.
    if ! lift_rabbitmq_answers; then
        echo "test-env: starting rabbitmq-server -detached"
        local server
        server="$(command -v rabbitmq-server || echo /usr/sbin/rabbitmq-server)"
        "$server" -detached || { lift_env_fail "rabbitmq-server -detached failed"; return 1; }
        local waited=0
        until lift_rabbitmq_answers; do
            if ((waited >= 60)); then
                lift_env_fail "rabbitmq did not answer rabbitmqctl status and 127.0.0.1:5672 within 60 s"
                return 1
            fi
            sleep 2
            waited=$((waited + 2))
        done
    fi
    echo "test-env: rabbitmq answers on 127.0.0.1:5672"
}

lift_ensure_moto_venv() {
    local python="$LIFT_MOTO_VENV/bin/python"
    if [[ -x "$python" ]] && "$python" -c "import boto3, moto, sys; sys.exit(moto.__version__ != '$LIFT_MOTO_VERSION')" 2>/dev/null; then
        return 0
    fi
    echo "test-env: creating $LIFT_MOTO_VENV with moto[server]==$LIFT_MOTO_VERSION"
    rm -rf "$LIFT_MOTO_VENV"
    mkdir -p "$(dirname "$LIFT_MOTO_VENV")" || { lift_env_fail "cannot create $(dirname "$LIFT_MOTO_VENV")"; return 1; }
    python3 -m venv "$LIFT_MOTO_VENV" || { lift_env_fail "python3 -m venv $LIFT_MOTO_VENV failed"; return 1; }
    "$LIFT_MOTO_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "moto[server]==$LIFT_MOTO_VERSION" boto3 \
        || { rm -rf "$LIFT_MOTO_VENV"; lift_env_fail "pip install moto[server]==$LIFT_MOTO_VERSION failed"; return 1; }
}

lift_free_loopback_port() {
    "$LIFT_MOTO_VENV/bin/python" - <<'PY'
import socket
for port in range(5900, 6000):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(port)
        break
else:
    raise SystemExit("no free port in 5900-5999")
PY
}

lift_stop_moto() {
    if [[ -n "${LIFT_MOTO_PID:-}" ]] && kill -0 "$LIFT_MOTO_PID" 2>/dev/null; then
        kill "$LIFT_MOTO_PID" 2>/dev/null
        wait "$LIFT_MOTO_PID" 2>/dev/null
    fi
    LIFT_MOTO_PID=""
}

lift_start_moto() {
    lift_ensure_moto_venv || return 1
    local port
    port="$(lift_free_loopback_port)" || { lift_env_fail "no free loopback port for moto_server"; return 1; }
    local log="${TMPDIR:-/tmp}/lift-moto-$port.log"
    "$LIFT_MOTO_VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
    LIFT_MOTO_PID=$!
    trap lift_stop_moto EXIT
    local endpoint="http://127.0.0.1:$port"
    local waited=0
    until curl -s -o /dev/null "$endpoint/"; do
        if ! kill -0 "$LIFT_MOTO_PID" 2>/dev/null; then
            lift_env_fail "moto_server exited; its log ($log): $(tail -n 20 "$log")"
            return 1
        fi
        if ((waited >= 300)); then
            lift_stop_moto
            lift_env_fail "moto_server did not answer on $endpoint within 30 s (log: $log)"
            return 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 \
        "$LIFT_MOTO_VENV/bin/python" - "$endpoint" "$LIFT_TEST_S3_BUCKET" <<'PY' \
        || { lift_stop_moto; lift_env_fail "failed to create bucket $LIFT_TEST_S3_BUCKET on moto at $endpoint"; return 1; }
import sys
import boto3
endpoint, bucket = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
try:
    s3.create_bucket(Bucket=bucket)
except s3.exceptions.BucketAlreadyOwnedByYou:
    pass
PY
    export LIFT_TEST_S3_ENDPOINT="$endpoint"
    echo "test-env: moto_server (pid $LIFT_MOTO_PID) on $endpoint with bucket $LIFT_TEST_S3_BUCKET"
}

# A Python gRPC client that works from reflection alone, as grpcurl does (no proto file):
# the reflection test drives SubmitJob and GetJob through it.
lift_ensure_grpc_client_venv() {
    export LIFT_TEST_GRPC_PYTHON="$HOME/.cache/lift/grpc-venv/bin/python"
    if "$LIFT_TEST_GRPC_PYTHON" -c "import grpc_reflection, google.protobuf" 2>/dev/null; then
        return 0
    fi
    python3 -m venv "$HOME/.cache/lift/grpc-venv" \
        && "$HOME/.cache/lift/grpc-venv/bin/pip" install -q grpcio grpcio-reflection protobuf \
        || { lift_env_fail "could not install grpcio + grpcio-reflection into $HOME/.cache/lift/grpc-venv"; return 1; }
}

lift_test_env_main() {
    local tool
    for tool in curl python3 timeout; do
        command -v "$tool" >/dev/null || { lift_env_fail "$tool is required but not installed"; return 1; }
    done
    lift_ensure_rabbitmq || return 1
    lift_start_moto || return 1
    lift_ensure_grpc_client_venv || return 1
    export LIFT_TEST_AMQP_URL="${LIFT_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
    export LIFT_TEST_S3_BUCKET
    export AWS_ACCESS_KEY_ID=test
    export AWS_SECRET_ACCESS_KEY=test
    export AWS_REGION=us-east-1
    export AWS_DEFAULT_REGION=us-east-1
}

lift_test_env_main || { echo "test-env: failed" >&2; return 1 2>/dev/null || exit 1; }
