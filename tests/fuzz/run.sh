#!/bin/sh
# Bounded libFuzzer runs of the worker's targets: job, resp, ndjson and dkstream (make
# fuzz-worker), or those named in FUZZ_TARGETS (connect: make fuzz-connect). Each runs for
# FUZZ_SECONDS (default 60) from its seed corpus in tests/fuzz/corpus/<target>, after
# replaying the regression inputs in tests/fuzz/regress/<target>. New inputs go to a scratch
# copy of the corpus (the repository's seeds are not changed); a crash is left as
# $BUILD/fuzz/crash-* (oom-*, leak-*, timeout-*) and fails the run: add it to
# tests/fuzz/regress/<target>/. A fuzzer that exits non-zero otherwise fails the run too;
# each target's full output is in $BUILD/fuzz/fuzz_<target>.log.
set -e
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
FUZZ_TARGETS=${FUZZ_TARGETS:-job resp ndjson dkstream}
BUILD=${BUILD:-build}
rc=0
sh tests/fuzz/build.sh || rc=$?
if [ $rc -eq 77 ]; then
    exit 0
fi
[ $rc -eq 0 ]
out=$(cd "$BUILD/fuzz" && pwd)
scratch=$(mktemp -d "${TMPDIR:-/tmp}/fuzz-worker-XXXXXX")
trap 'rm -rf "$scratch"' EXIT
for t in $FUZZ_TARGETS; do
    mkdir -p "$scratch/$t"
    cp tests/fuzz/corpus/$t/* "$scratch/$t/"
    if ls tests/fuzz/regress/$t/* >/dev/null 2>&1; then
        "$out/fuzz_$t" -runs=0 tests/fuzz/regress/$t/*
    fi
    echo "### fuzz_$t: $FUZZ_SECONDS s"
    st=0
    "$out/fuzz_$t" -artifact_prefix="$out/" -max_total_time="$FUZZ_SECONDS" -max_len=65536 \
        -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "$scratch/$t" \
        >"$out/fuzz_$t.log" 2>&1 || st=$?
    grep -E '^(stat::|#[0-9]+[[:space:]]+DONE|Done|==|SUMMARY)|ERROR' "$out/fuzz_$t.log" || true
    for f in "$out"/crash-* "$out"/leak-* "$out"/timeout-* "$out"/oom-*; do
        if [ -e "$f" ]; then
            echo "fuzz_$t failed: $f"
            exit 1
        fi
    done
    # a fuzzer killed by a signal it does not catch (SIGPIPE, SIGKILL) leaves no artifact
    if [ $st -ne 0 ]; then
        echo "fuzz_$t failed: exit status $st without an artifact (log: $out/fuzz_$t.log)"
        tail -5 "$out/fuzz_$t.log"
        exit 1
    fi
done
exit 0
