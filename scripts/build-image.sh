#!/usr/bin/env bash
# Builds the CPU container image (deploy/docker/Dockerfile.cpu, target `prebuilt`) with podman
# on a machine that reaches no image registry, and checks what is inside it:
#   1. a Debian bookworm base made with debootstrap from this machine's own Debian mirror
#      (cached in $LIFT_IMAGE_CACHE, default ~/.cache/lift/image), imported into podman;
#   2. `podman build --isolation chroot` of the runtime stage on it (its apt-get and useradd
#      steps run), with the `lift` binary built on this host ($LIFT_BIN, default the debug
#      build under $CARGO_TARGET_DIR);
#   3. the image's filesystem exported and entered with chroot as the image's user (uid
#      10001, where `podman run` cannot run): `lift --help`, then `lift run` of a one-paragraph
#      document with the default model copied into /models, and `lift ask` of its job.
# Prints one JSON line with the results; exits non-zero when a check fails.
#
#   scripts/build-image.sh          (as root: debootstrap, podman and chroot need it)
#
# Not part of scripts/test.sh: the base alone takes minutes and the job inside the image
# several more on 2 cores; docs/deploy results name the last run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cache=${LIFT_IMAGE_CACHE:-$HOME/.cache/lift/image}
target_dir=${CARGO_TARGET_DIR:-$HOME/.cache/lift-target}
lift_bin=${LIFT_BIN:-$target_dir/debug/lift}
model=${LIFT_MODEL_DIR:-$HOME/.cache/lift/models}/SmolLM2-135M-Instruct.Q4_1.gguf
base_image=localhost/lift-debian-base:bookworm
image=${LIFT_IMAGE:-localhost/lift:cpu}

need() {
    command -v "$1" >/dev/null || {
        echo "build-image: $1 is missing (apt-get install podman debootstrap)" >&2
        exit 2
    }
}
need podman
need debootstrap
need strip
[[ $(id -u) == 0 ]] || { echo "build-image: run as root (debootstrap, chroot)" >&2; exit 2; }
[[ -x $lift_bin ]] || { echo "build-image: no lift binary at $lift_bin (cargo build -p lift-cli, or set LIFT_BIN)" >&2; exit 2; }
[[ -f $model ]] || { echo "build-image: no default model at $model (scripts/fetch-model.sh)" >&2; exit 2; }
mkdir -p "$cache"

# 1. The base, from the mirror this machine's apt already uses.
if ! podman image exists "$base_image"; then
    if [[ ! -f $cache/bookworm.tar ]]; then
        # The main archive (a URI ending in /debian) of the enabled .list and .sources files.
        mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
            /etc/apt/sources.list.d/*.sources 2>/dev/null \
            | grep -oE '^(URIs:|deb) +[a-z]+://[^ ]+/debian/?( |$)' | head -1 | awk '{print $2}')
        [[ -n $mirror ]] || { echo "build-image: no Debian mirror in /etc/apt sources" >&2; exit 2; }
        rootfs=$(mktemp -d)
        debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 \
            || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        tar -C "$rootfs" -cf "$cache/bookworm.tar.partial" .
        mv "$cache/bookworm.tar.partial" "$cache/bookworm.tar"
        rm -rf "$rootfs"
    fi
    podman import "$cache/bookworm.tar" "$base_image" >/dev/null
fi

# 2. The runtime stage on it, the host's binary in a context of its own.
context=$(mktemp -d)
work=$(mktemp -d)
cleanup() {
    umount "$work/root/proc" 2>/dev/null || true
    rm -rf "$context" "$work"
    podman rm -f lift-image-check >/dev/null 2>&1 || true
}
trap cleanup EXIT
cp deploy/docker/Dockerfile.cpu "$context/Dockerfile"
cp "$lift_bin" "$context/lift"
# A debug build carries some 150 MB of debug information the image has no use for.
strip --strip-debug "$context/lift"
started=$(date +%s)
podman build --isolation chroot --target prebuilt --build-arg "RUNTIME_BASE=$base_image" \
    -t "$image" "$context" >"$work/build.log" 2>&1 || { tail -30 "$work/build.log" >&2; exit 1; }
build_seconds=$(($(date +%s) - started))
size=$(podman image inspect "$image" --format '{{.Size}}')
user=$(podman image inspect "$image" --format '{{.Config.User}}')
entrypoint=$(podman image inspect "$image" --format '{{json .Config.Entrypoint}}')

# 3. The image's filesystem, entered as its user.
podman create --name lift-image-check "$image" >/dev/null
mkdir "$work/root"
podman export lift-image-check | tar -C "$work/root" -xf -
root=$work/root
mount -t proc proc "$root/proc"
cp /etc/resolv.conf "$root/etc/resolv.conf"
install -o 10001 -g 10001 -m 0644 "$model" "$root/models/"
cat >"$root/home/lift/keeper.md" <<'DOC'
# The Vellmar Island light

Oskar Tenby has kept the Vellmar Island light since 1994. The tower is 31 metres tall and its
lamp can be seen from 22 nautical miles away.
DOC
chown 10001:10001 "$root/home/lift/keeper.md"
in_image() {
    chroot --userspec=10001:10001 "$root" /usr/bin/env -i HOME=/home/lift LIFT_MODEL_DIR=/models \
        PATH=/usr/local/bin:/usr/bin:/bin sh -c "cd /home/lift && $*"
}
help_ok=false
in_image lift --help >"$work/help.txt" 2>&1 && grep -q "Usage: lift" "$work/help.txt" && help_ok=true
started=$(date +%s)
run_status=0
in_image lift run keeper.md --json >"$work/run.jsonl" 2>"$work/run.err" || run_status=$?
run_seconds=$(($(date +%s) - started))
job=$(python3 -c 'import json,sys; rows=[json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]; print(rows[-1].get("job_id","") if rows else "")' "$work/run.jsonl")
answer=""
if [[ -n $job ]]; then
    answer=$(in_image lift ask "$job" "\"Who keeps the Vellmar Island light?\"" 2>>"$work/run.err" || true)
fi
python3 - "$work/run.jsonl" "$run_status" "$help_ok" "$size" "$user" "$entrypoint" \
    "$build_seconds" "$run_seconds" "$answer" "$work/run.err" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
final = rows[-1] if rows else {}
report = {
    "check": "CPU image (Dockerfile.cpu, target prebuilt) entered with chroot",
    "image_bytes": int(sys.argv[4]),
    "user": sys.argv[5],
    "entrypoint": json.loads(sys.argv[6]),
    "build_seconds": int(sys.argv[7]),
    "help_ok": sys.argv[3] == "true",
    "run_exit_status": int(sys.argv[2]),
    "run_state": final.get("state"),
    "run_tasks": final.get("tasks_total"),
    "run_seconds": int(sys.argv[8]),
    "answer": sys.argv[9].strip(),
}
if final.get("state") != "succeeded":
    report["stderr_tail"] = open(sys.argv[10]).read()[-2000:]
print(json.dumps(report))
ok = report["help_ok"] and report["run_state"] == "succeeded" and report["user"] == "10001:10001"
sys.exit(0 if ok else 1)
PY
