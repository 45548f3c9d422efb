#!/bin/sh
# Builds the worker's libFuzzer targets (tests/fuzz/fuzz_*.c) with clang into $BUILD/fuzz:
# fuzz_job (job parser and validator), fuzz_resp (RESP replies through the queue), fuzz_ndjson
# (the agent's NDJSON output frames), fuzz_dkstream (Docker's multiplexed exec stream) and
# fuzz_connect (the E2B envd Connect envelopes).
# Exit 77 when clang is not installed. Sourced by run.sh and test_fuzz_corpus.sh.
BUILD=${BUILD:-build}
out="$BUILD/fuzz"
if ! command -v clang >/dev/null 2>&1; then
    echo "SKIP: clang not installed, worker fuzz targets not built"
    exit 77
fi
mkdir -p "$out"
pkgs="hiredis libevent libevent_openssl libcurl libcjson libarchive openssl"
flags="-g -O1 -std=c11 -D_GNU_SOURCE -I. -fsanitize=fuzzer,address,undefined \
    -fno-sanitize-recover=undefined $(pkg-config --cflags $pkgs)"
libs="$(pkg-config --libs $pkgs) -lm"
# shellcheck disable=SC2086
clang $flags -o "$out/fuzz_job" tests/fuzz/fuzz_job.c worker/job.c lib/buf.c lib/jsonx.c \
    lib/mask.c lib/utf8.c $libs || exit 1
# shellcheck disable=SC2086
clang $flags -o "$out/fuzz_resp" tests/fuzz/fuzz_resp.c worker/job.c lib/*.c queue/*.c \
    $libs || exit 1
# shellcheck disable=SC2086
clang $flags -o "$out/fuzz_ndjson" tests/fuzz/fuzz_ndjson.c providers/ndjson.c lib/buf.c \
    lib/jsonx.c $libs || exit 1
# shellcheck disable=SC2086
clang $flags -o "$out/fuzz_dkstream" tests/fuzz/fuzz_dkstream.c providers/dkstream.c lib/buf.c \
    $libs || exit 1
# shellcheck disable=SC2086
clang $flags -o "$out/fuzz_connect" tests/fuzz/fuzz_connect.c providers/connect.c lib/buf.c \
    $libs || exit 1
