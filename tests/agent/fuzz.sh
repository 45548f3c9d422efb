#!/bin/sh
# Builds the agent's libFuzzer targets with clang -fsanitize=fuzzer,address,undefined and runs
# each from its seed corpus in tests/agent/corpus/<target> for FUZZ_SECONDS (default 30):
#   parse    agent/fuzz_agent.c    request heads, framing, chunked bodies, query decoding
#   extract  agent/fuzz_extract.c  archive extraction with the escape oracle
#   conn     agent/fuzz_conn.c     byte streams split at random points through agent/httpd.c
# FUZZ_SECONDS=0 only replays the corpora (every file once: the regression run). FUZZ_TARGETS
# picks targets (default "parse extract conn"). New inputs go to $BUILD/fuzz/corpus-<target>,
# crashes to $BUILD/fuzz/; a crash input belongs in tests/agent/corpus/<target>/ once fixed.
# The extraction scratch directory is removed on every exit path.
set -e
FUZZ_SECONDS=${FUZZ_SECONDS:-30}
FUZZ_TARGETS=${FUZZ_TARGETS:-parse extract conn}
BUILD=${BUILD:-build}
out="$BUILD/fuzz"
here=$(cd "$(dirname "$0")" && pwd)
if ! command -v clang >/dev/null 2>&1; then
    echo "SKIP: clang not installed, agent fuzzing skipped"
    exit 0
fi
scratch=
cleanup() {
    if [ -n "$scratch" ] && [ -d "$scratch" ]; then
        chmod -R u+rwx "$scratch" 2>/dev/null || true # extracted entries may have mode 0
        rm -rf "$scratch"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
mkdir -p "$out"
flags="-g -O1 -std=c11 -D_GNU_SOURCE -I. -fsanitize=fuzzer,address,undefined"
flags="$flags $(pkg-config --cflags libarchive libevent libcjson)"
libs="$(pkg-config --libs libarchive libevent libcjson)"
build() { # name sources...
    name=$1
    shift
    clang $flags -o "$out/$name" "$@" $libs
}
abs=$(cd "$out" && pwd) # the extraction target changes directory: every path is absolute
scratch=$(mktemp -d "${TMPDIR:-/tmp}/fuzz-agent-XXXXXX")
rc=0
for t in $FUZZ_TARGETS; do
    case "$t" in
    parse) build fuzz_parse agent/fuzz_agent.c agent/http_parse.c ;;
    extract) build fuzz_extract agent/fuzz_extract.c agent/tarball.c lib/buf.c ;;
    conn) build fuzz_conn agent/fuzz_conn.c agent/httpd.c agent/http_parse.c lib/buf.c lib/log.c \
        lib/mask.c ;;
    *)
        echo "fuzz.sh: unknown target $t" >&2
        exit 2
        ;;
    esac
    seeds="$here/corpus/$t"
    work="$abs/corpus-$t"
    mkdir -p "$work"
    echo "== fuzz $t: replaying $(ls "$seeds" | wc -l) corpus file(s)"
    # every stored input once, as a regression test (crash reproducers included)
    FUZZ_AGENT_DIR="$scratch" "$abs/fuzz_$t" -artifact_prefix="$abs/$t-" -runs=0 \
        "$seeds" 2>"$abs/$t-replay.log" || { rc=$?; cat "$abs/$t-replay.log"; break; }
    if [ "$FUZZ_SECONDS" -gt 0 ]; then
        echo "== fuzz $t: ${FUZZ_SECONDS}s"
        FUZZ_AGENT_DIR="$scratch" LIGHTDASH_LOG_LEVEL=error "$abs/fuzz_$t" \
            -artifact_prefix="$abs/$t-" -max_total_time="$FUZZ_SECONDS" -max_len=65536 \
            -timeout=10 -rss_limit_mb=1024 -print_final_stats=1 "$work" "$seeds" \
            2>"$abs/$t.log" || { rc=$?; tail -40 "$abs/$t.log"; break; }
        grep -E "^stat::(number_of_executed_units|peak_rss_mb)" "$abs/$t.log" || true
        grep -E "^#[0-9]+[[:space:]]+DONE" "$abs/$t.log" | tail -1 || true
    fi
done
exit "$rc"
