#!/bin/sh
# Builds tests/fuzz/fuzz_connect.c with clang -fsanitize=fuzzer,address,undefined and runs it
# for FUZZ_SECONDS (default 30) from a small seed corpus. Exit status is the fuzzer's.
set -e
FUZZ_SECONDS=${FUZZ_SECONDS:-30}
BUILD=${BUILD:-build}
out="$BUILD/fuzz"
if ! command -v clang >/dev/null 2>&1; then
    echo "SKIP: clang not installed, connect fuzzing skipped"
    exit 0
fi
mkdir -p "$out/connect-corpus"
clang -g -O1 -std=c11 -D_GNU_SOURCE -I. -fsanitize=fuzzer,address,undefined \
    -o "$out/fuzz_connect" tests/fuzz/fuzz_connect.c providers/connect.c lib/buf.c
# seeds: no cuts + a start event and an end-stream; three cuts + the same
printf '\000\000\000\000\000\036{"event":{"start":{"pid":7}}}\002\000\000\000\002{}' \
    >"$out/connect-corpus/stream"
printf '\003\002\005\011\000\000\000\000\004{"a"\002\000\000\000\002{}' >"$out/connect-corpus/cuts"
exec "$out/fuzz_connect" -max_total_time="$FUZZ_SECONDS" -max_len=8192 "$out/connect-corpus"
