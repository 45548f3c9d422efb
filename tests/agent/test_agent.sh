#!/bin/sh
# Black-box tests of sandbox-agent (the real binary on free loopback ports, driven over HTTP).
# AGENT_PREFIX (e.g. "valgrind -q --error-exitcode=99") runs the agent under a tool;
# AGENT_TEST_SCRIPT picks the driver in this folder (default agent_blackbox.py).
# Everything the tests create lives in one private directory (TMPDIR for the driver), removed
# on every exit path, also if the driver itself is killed.
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
work=$(mktemp -d "${TMPDIR:-/tmp}/agent-test-XXXXXX") || exit 1
pid=
cleanup() {
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null # the driver stops its agents when it gets TERM
        wait "$pid" 2>/dev/null
    fi
    chmod -R u+rwx "$work" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
TMPDIR="$work" python3 "$here/${AGENT_TEST_SCRIPT:-agent_blackbox.py}" "$agent" &
pid=$!
wait "$pid"
rc=$?
pid=
exit "$rc"
