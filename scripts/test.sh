#!/bin/sh
# The README's test command: installs what is missing, starts dockerd if needed, and runs
# the whole suite (make test). Extra arguments are passed to make, e.g.
#   ./scripts/test.sh SANITIZE=address,undefined BUILD=build-asan
set -eu
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/start-services.sh || echo "warning: dockerd unavailable; docker tests will be skipped"
exec make -j2 "$@" test
