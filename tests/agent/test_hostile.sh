#!/bin/sh
# Hostile-input tests of sandbox-agent (tests/agent/agent_hostile.py), run like test_agent.sh.
AGENT_TEST_SCRIPT=agent_hostile.py exec sh "$(dirname "$0")/test_agent.sh"
