#!/bin/sh
# The E2B envd Connect envelope decoder's fuzz target alone (make fuzz-connect): tests/fuzz/run.sh
# with FUZZ_TARGETS=connect, for FUZZ_SECONDS (default 30), from tests/fuzz/corpus/connect.
FUZZ_SECONDS=${FUZZ_SECONDS:-30} FUZZ_TARGETS=connect exec sh tests/fuzz/run.sh
