#!/bin/sh
# `make demo`: a worker running a real two-turn conversation in Docker sandboxes.
#
#   1. installs what is missing (scripts/install-deps.sh), builds (make)
#   2. starts a private redis-server on a free loopback port in a temporary folder, and
#      dockerd when none answers (scripts/start-services.sh)
#   3. builds the sandbox image without any registry (scripts/build-sandbox-image.sh --agent:
#      a busybox rootfs with this tree's sandbox-agent as the entrypoint, imported as
#      lightdash-sandbox:local; rebuilt each run so it carries the agent just built)
#   4. starts build/sandbox-worker with SANDBOX_PROVIDER=docker, SANDBOX_DOCKER_AGENT=on (exec,
#      files and snapshots go through the agent on a unix socket, as on lambda and azure) and
#      local snapshots
#   5. turn 1 writes files and runs commands that stream output; the worker suspends the
#      sandbox (workspace → snapshot file, container removed); turn 2 resumes it from the
#      snapshot and prints the files to prove they survived
#   6. stops everything it started (trap), the image stays for the next run
#
# Environment: BUILD (default build), DEMO_KEEP=1 keeps the temporary folder (logs,
# snapshots) for inspection.
set -eu
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
IMAGE=lightdash-sandbox:local

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() {
    printf 'demo: %s\n' "$*" >&2
    exit 1
}

work=""
redis_pid=""
worker_pid=""
dockerd_pid=""
worker_name="demo-$$"

cleanup() {
    rc=$?
    trap - EXIT INT TERM
    if [ -n "$worker_pid" ] && kill -0 "$worker_pid" 2>/dev/null; then
        kill -TERM "$worker_pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$worker_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$worker_pid" 2>/dev/null || true
    fi
    # containers of this demo's worker (normally none: sandboxes are suspended)
    if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
        ids=$(docker ps -aq --filter "label=sandbox-worker.worker=$worker_name" 2>/dev/null || true)
        [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || true
    fi
    if [ -n "$redis_pid" ]; then
        kill -TERM "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
    fi
    if [ -n "$dockerd_pid" ]; then
        echo "stopping the dockerd this demo started (pid $dockerd_pid)"
        kill -TERM "$dockerd_pid" 2>/dev/null || true
        for _ in $(seq 1 150); do
            kill -0 "$dockerd_pid" 2>/dev/null || break
            sleep 0.2
        done
    fi
    if [ -n "$work" ]; then
        if [ "${DEMO_KEEP:-0}" = 1 ]; then
            echo "kept $work (logs, snapshots)"
        else
            rm -rf "$work"
        fi
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- 1. dependencies and build ----
say "checking dependencies"
missing=0
for c in cc make pkg-config redis-server redis-cli dockerd docker zstd; do
    command -v "$c" >/dev/null 2>&1 || missing=1
done
[ -x /bin/busybox ] || command -v busybox >/dev/null 2>&1 || missing=1
pkg-config --exists hiredis libevent libevent_openssl libcurl libcjson libarchive openssl \
    2>/dev/null || missing=1
if [ $missing = 1 ]; then
    ./scripts/install-deps.sh
else
    echo "all present"
fi

say "building"
make -j"$(nproc 2>/dev/null || echo 2)" BUILD="$BUILD" >/dev/null
for b in sandbox-worker sandboxctl; do
    [ -x "$BUILD/$b" ] || die "$BUILD/$b was not built"
done
echo "built $BUILD/sandbox-worker and $BUILD/sandboxctl"

work=$(mktemp -d "${TMPDIR:-/tmp}/sandbox-demo.XXXXXX")

# ---- 2. services ----
say "starting a private redis-server"
port=""
for _ in $(seq 1 20); do
    p=$((20000 + $(od -An -N2 -tu2 /dev/urandom | tr -d ' ') % 40000))
    redis-cli -h 127.0.0.1 -p "$p" ping >/dev/null 2>&1 && continue # taken
    redis-server --bind 127.0.0.1 --port "$p" --dir "$work" --save '' --appendonly no \
        --protected-mode yes >"$work/redis.log" 2>&1 &
    redis_pid=$!
    for _ in $(seq 1 50); do
        if redis-cli -h 127.0.0.1 -p "$p" ping 2>/dev/null | grep -q PONG; then
            port=$p
            break
        fi
        kill -0 "$redis_pid" 2>/dev/null || break
        sleep 0.1
    done
    [ -n "$port" ] && break
    kill "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
    redis_pid=""
done
[ -n "$port" ] || die "could not start redis-server (see $work/redis.log)"
echo "redis-server on 127.0.0.1:$port (pid $redis_pid)"
export REDIS_URL="redis://127.0.0.1:$port"

say "checking dockerd"
if docker info >/dev/null 2>&1; then
    echo "dockerd is running"
else
    DOCKERD_LOG="$work/dockerd.log" ./scripts/start-services.sh
    docker info >/dev/null 2>&1 || die "dockerd is not available (see $work/dockerd.log)"
    dockerd_pid=$(cat /var/run/docker.pid 2>/dev/null || true)
fi

# ---- 3. image ----
say "sandbox image $IMAGE (with sandbox-agent)"
BUILD="$BUILD" ./scripts/build-sandbox-image.sh --agent "$IMAGE"

# ---- 4. worker ----
say "starting the worker (SANDBOX_PROVIDER=docker, SANDBOX_DOCKER_AGENT=on)"
export SANDBOX_PROVIDER=docker
export SANDBOX_DOCKER_IMAGE="$IMAGE"
export SANDBOX_DOCKER_AGENT=on
export SANDBOX_DOCKER_AGENT_DIR="$work/agent"
export SANDBOX_SNAPSHOT_DIR="$work/snapshots"
export SANDBOX_QUEUE_PREFIX=demo
export WORKER_NAME="$worker_name"
export WORKER_HTTP_ADDR=off
export LIGHTDASH_LOG_FORMAT=plain
export LIGHTDASH_LOG_LEVEL=${LIGHTDASH_LOG_LEVEL:-info}
unset NODE_ENV S3_BUCKET S3_ENDPOINT 2>/dev/null || true
"$BUILD/sandbox-worker" >"$work/worker.log" 2>&1 &
worker_pid=$!
sleep 0.5
kill -0 "$worker_pid" 2>/dev/null || {
    cat "$work/worker.log" >&2
    die "the worker exited at start"
}
echo "worker pid $worker_pid, log $work/worker.log"

# ---- 5. the conversation ----
stamp=$(date +%s)-$$
thread="demo-thread-$stamp"

ctl() { LIGHTDASH_LOG_LEVEL=warn "$BUILD/sandboxctl" "$@"; }

run_turn() { # id file
    say "turn $1: enqueue"
    ctl enqueue "$2"
    say "turn $1: events (streamed as they happen)"
    ctl watch "$1" --timeout-ms 300000 || true
    say "turn $1: result"
    ctl wait "$1" --timeout-ms 300000
}

cat >"$work/turn1.json" <<EOF
{
  "id": "demo-turn-1-$stamp",
  "thread": "$thread",
  "feature": "data-app",
  "tenant": { "organization": "demo-org", "project": "demo-project" },
  "steps": [
    { "type": "write", "name": "scaffold",
      "files": [
        { "path": "/workspace/app/index.html", "content": "<h1>Revenue by month</h1>\n" },
        { "path": "/workspace/app/build.sh",
          "content": "for i in 1 2 3; do echo \"building part \$i\"; sleep 1; done\necho 'a warning on stderr' >&2\ndate -u > /workspace/app/built-at.txt\n" },
        { "path": "/workspace/notes.md", "content": "Turn 1 was here.\n" }
      ] },
    { "type": "run", "name": "build", "cmd": "sh app/build.sh && ls -l app", "cwd": "/workspace" },
    { "type": "run", "name": "scratch", "cmd": "mkdir -p node_modules/big && echo cache > node_modules/big/x && echo excluded from the snapshot", "cwd": "/workspace" },
    { "type": "read", "path": "/workspace/app/index.html" }
  ],
  "workspace": { "include": ["/workspace"], "exclude": ["node_modules"] }
}
EOF

cat >"$work/turn2.json" <<EOF
{
  "id": "demo-turn-2-$stamp",
  "thread": "$thread",
  "feature": "data-app",
  "tenant": { "organization": "demo-org", "project": "demo-project" },
  "steps": [
    { "type": "run", "name": "fresh-only", "when": "fresh", "cmd": "echo 'this sandbox is new: the snapshot was lost'" },
    { "type": "run", "name": "prove", "when": "resumed",
      "cmd": "echo 'resumed from the snapshot; files from turn 1:' && cat app/index.html notes.md app/built-at.txt && if [ -e node_modules ]; then echo 'node_modules should have been excluded' >&2; exit 1; fi && echo 'node_modules was left out of the snapshot, as configured'",
      "cwd": "/workspace" },
    { "type": "read", "path": "/workspace/notes.md" }
  ],
  "workspace": { "include": ["/workspace"], "exclude": ["node_modules"] }
}
EOF

run_turn "demo-turn-1-$stamp" "$work/turn1.json"
run_turn "demo-turn-2-$stamp" "$work/turn2.json"

say "thread $thread"
ctl thread "$thread" || true
say "data path"
grep -o 'docker: sandbox [0-9a-f]*: .*' "$work/worker.log" || die "the worker logged no sandbox"
grep -q 'docker: sandbox [0-9a-f]*: sandbox-agent on' "$work/worker.log" ||
    die "the sandboxes did not run on the agent path"
echo "both turns ran through sandbox-agent on a unix socket (no Docker exec)"
[ -z "$(ls -A "$work/agent" 2>/dev/null)" ] && echo "no socket folder left: removed on suspend"
left=$(docker ps -aq --filter "label=sandbox-worker.worker=$worker_name")
[ -z "$left" ] && echo "no container left running: the sandbox is suspended to a snapshot"
say "demo finished"
