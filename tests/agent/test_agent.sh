#!/bin/sh
# Black-box tests of sandbox-agent (the real binary on free loopback ports, driven over HTTP).
# AGENT_PREFIX (e.g. "valgrind -q --error-exitcode=99") runs the agent under a tool.
BUILD=${BUILD:-build}
here=$(dirname "$0")
agent="$BUILD/sandbox-agent"
if [ ! -x "$agent" ]; then
    echo "FAIL: $agent not built"
    exit 1
fi
if ! command -v python3 >/dev/null 2>&1; then
    echo "SKIP: python3 not installed (the agent black-box tests are driven by it)"
    exit 0
fi
exec python3 "$here/agent_blackbox.py" "$agent"
