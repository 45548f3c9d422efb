#!/bin/sh
# Proves tests/fakes/lambda_microvm.js faithful to AWS Lambda MicroVMs: AWS's own
# @aws-sdk/client-lambda-microvms runs, gets, lists, suspends, resumes and terminates
# microVMs, mints auth tokens and reaches the agent through the endpoint, and sees the
# service's errors (tests/fakes/lambda_microvm_conformance.mjs). Needs node, the npm package
# (npm install --prefix tests/fakes) and a built sandbox-agent; skips with a message otherwise.
set -u
cd "$(dirname "$0")/../.." || exit 1
BUILD=${BUILD:-build}

if ! command -v node >/dev/null 2>&1; then
    echo "  skipped: node not found"
    exit 0
fi
if [ ! -d tests/fakes/node_modules/@aws-sdk/client-lambda-microvms ]; then
    echo "  skipped: @aws-sdk/client-lambda-microvms not installed (npm install --prefix tests/fakes)"
    exit 0
fi
if [ ! -x "$BUILD/sandbox-agent" ]; then
    echo "  skipped: $BUILD/sandbox-agent not built"
    exit 0
fi
dir=$(mktemp -d "${TMPDIR:-/tmp}/sw-lambda-fake-XXXXXX") || exit 1
trap 'rm -rf "$dir"' EXIT INT TERM
# The SDK warns about Node versions on stderr; only the checks matter here.
NODE_NO_WARNINGS=1 node tests/fakes/lambda_microvm_conformance.mjs "$PWD/$BUILD/sandbox-agent" "$dir"
