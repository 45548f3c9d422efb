#!/bin/sh
# Builds agent/fuzz_agent.c with clang -fsanitize=fuzzer,address,undefined and runs it for a
# bounded time (FUZZ_SECONDS, default 30) from a small seed corpus. Exit status is the fuzzer's.
# The extraction scratch directory and the seed tree are removed on every exit path.
set -e
FUZZ_SECONDS=${FUZZ_SECONDS:-30}
BUILD=${BUILD:-build}
out="$BUILD/fuzz"
if ! command -v clang >/dev/null 2>&1; then
    echo "SKIP: clang not installed, agent fuzzing skipped"
    exit 0
fi
seed=
scratch=
cleanup() {
    for d in "$seed" "$scratch"; do
        if [ -n "$d" ] && [ -d "$d" ]; then
            chmod -R u+rwx "$d" 2>/dev/null || true # extracted entries may have mode 0
            rm -rf "$d"
        fi
    done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
mkdir -p "$out/corpus"
flags="-g -O1 -std=c11 -D_GNU_SOURCE -I. -fsanitize=fuzzer,address,undefined $(pkg-config --cflags libarchive libevent)"
clang $flags -o "$out/fuzz_agent" agent/fuzz_agent.c agent/http_parse.c agent/tarball.c lib/buf.c \
    lib/log.c lib/mask.c $(pkg-config --libs libarchive libevent libcjson)
# seeds: a request head, a chunked body, a tar with a file, a dir and a symlink
printf '\000GET /files?path=%%2Ftmp%%2Fa HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n' \
    >"$out/corpus/head"
printf '\0014\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\nT: v\r\n\r\n' >"$out/corpus/chunked"
seed=$(mktemp -d "${TMPDIR:-/tmp}/fuzz-agent-seed-XXXXXX")
mkdir -p "$seed/d" && echo hi >"$seed/d/f" && ln -s f "$seed/d/l"
{ printf '\002'; tar -C "$seed" -cf - d; } >"$out/corpus/tar"
{ printf '\002'; tar -C "$seed" -cf - d | gzip -c; } >"$out/corpus/tgz"
scratch=$(mktemp -d "${TMPDIR:-/tmp}/fuzz-agent-XXXXXX")
abs=$(cd "$out" && pwd) # the target changes directory: every path must be absolute
rc=0
FUZZ_AGENT_DIR="$scratch" "$abs/fuzz_agent" -artifact_prefix="$abs/" \
    -max_total_time="$FUZZ_SECONDS" -max_len=65536 -timeout=10 -rss_limit_mb=1024 \
    -print_final_stats=1 "$abs/corpus" || rc=$?
exit "$rc"
