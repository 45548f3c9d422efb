#!/bin/sh
# Part of `make test`: builds the worker's fuzz targets and replays their seed corpora and
# every saved regression input (tests/fuzz/{corpus,regress}/<target>) once, without
# fuzzing. Skips with a message when clang is missing. `make fuzz-worker` fuzzes.
BUILD=${BUILD:-build}
rc=0
sh tests/fuzz/build.sh || rc=$?
if [ $rc -eq 77 ]; then
    exit 0
fi
[ $rc -eq 0 ] || exit 1
for t in job resp ndjson dkstream connect; do
    n=0
    for f in tests/fuzz/corpus/$t/* tests/fuzz/regress/$t/*; do
        [ -f "$f" ] || continue
        "$BUILD/fuzz/fuzz_$t" -runs=1 -rss_limit_mb=2048 "$f" >/dev/null 2>&1 || {
            echo "FAIL: fuzz_$t on $f"
            "$BUILD/fuzz/fuzz_$t" -runs=1 "$f" 2>&1 | tail -20
            exit 1
        }
        n=$((n + 1))
    done
    echo "  fuzz_$t: $n saved inputs replayed"
done
echo "test_fuzz_corpus: passed"
