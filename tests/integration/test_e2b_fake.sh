#!/bin/sh
# Conformance of the E2B fake (tests/fakes/e2b.js) with the official npm `e2b` SDK: the SDK
# creates, runs commands in (streamed, exit codes, background + re-attach, kill, timeout),
# writes and reads files of, pauses, resumes, lists and kills sandboxes on the fake, and raw
# HTTP checks the envd wire format the C provider speaks (Host routing, Connect envelopes).
# Needs node and tests/fakes/node_modules/e2b (npm install --prefix tests/fakes); skips with a
# message when they are missing.
set -u
cd "$(dirname "$0")/../.." || exit 1

if ! command -v node >/dev/null 2>&1; then
    echo "  skipped: node not found (the E2B fake and its conformance test need node)"
    exit 0
fi
if [ ! -f tests/fakes/node_modules/e2b/package.json ]; then
    echo "  skipped: npm package e2b not installed (npm install --prefix tests/fakes)"
    exit 0
fi
# The SDK wants Node >= 20.18.1 (its package.json engines); older ones cannot load it.
if ! node -e 'const [a, b, c] = process.versions.node.split(".").map(Number);
process.exit(a > 20 || (a === 20 && (b > 18 || (b === 18 && c >= 1))) ? 0 : 1)'; then
    echo "  skipped: node $(node --version) is older than the e2b SDK needs (20.18.1)"
    exit 0
fi
echo "  e2b SDK $(node -p 'require("./tests/fakes/node_modules/e2b/package.json").version'), node $(node --version)"
if ! timeout 300 node tests/fakes/e2b_conformance.mjs; then
    echo "test_e2b_fake: FAILED"
    exit 1
fi
echo "test_e2b_fake: passed"
