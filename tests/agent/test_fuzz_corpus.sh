#!/bin/sh
# Regression run of the agent's fuzz corpora (tests/agent/corpus/<target>: seeds and every
# fixed crash input) through the fuzz targets, built with the ordinary compiler and a replay
# driver (tests/agent/fuzz_replay.c), so no clang or libFuzzer is needed. A target aborts on a
# failed check (the extraction target's escape oracle, the connection target's invariants).
BUILD=${BUILD:-build}
CC=${CC:-cc}
out="$BUILD/tests/agent"
here=$(dirname "$0")
mkdir -p "$out" || exit 1
outabs=$(cd "$out" && pwd)
scratch=$(mktemp -d "${TMPDIR:-/tmp}/fuzz-replay-XXXXXX") || exit 1
trap 'chmod -R u+rwx "$scratch" 2>/dev/null; rm -rf "$scratch"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
flags="-g -O1 -std=c11 -D_GNU_SOURCE -I. ${SANITIZE:+-fsanitize=$SANITIZE}"
flags="$flags $(pkg-config --cflags libarchive libevent libcjson)"
libs="$(pkg-config --libs libarchive libevent libcjson)"
rc=0
for t in parse extract conn; do
    case "$t" in
    parse) src="agent/fuzz_agent.c agent/http_parse.c" ;;
    extract) src="agent/fuzz_extract.c agent/tarball.c lib/buf.c" ;;
    conn) src="agent/fuzz_conn.c agent/httpd.c agent/http_parse.c lib/buf.c lib/log.c lib/mask.c" ;;
    esac
    # shellcheck disable=SC2086
    if ! $CC $flags -o "$out/replay_$t" "$here/fuzz_replay.c" $src $libs; then
        echo "FAIL: building the $t replay"
        rc=1
        continue
    fi
    abs=$(cd "$here/corpus/$t" && pwd)
    if (cd "$scratch" && FUZZ_AGENT_DIR="$scratch" LIGHTDASH_LOG_LEVEL=error \
        "$outabs/replay_$t" "$abs"); then
        echo "ok: $t corpus"
    else
        echo "FAIL: $t corpus"
        rc=1
    fi
done
exit "$rc"
