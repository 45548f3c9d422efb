#!/bin/sh
# Runs every benchmark: $BUILD/tests/bench/bench_* binaries and tests/bench/bench_*.sh.
# Benchmarks print numbers; they never fail on a figure.
BUILD=${BUILD:-build}
for b in $(find "$BUILD/tests/bench" -type f -perm -u+x -name 'bench_*' 2>/dev/null | sort) \
         $(ls tests/bench/bench_*.sh 2>/dev/null | sort); do
    echo "### $b"
    case "$b" in
    *.sh) BUILD="$BUILD" sh "$b" ;;
    *) "$b" ;;
    esac
done
