#!/bin/sh
# The Node/TypeScript client (clients/node): generates its script module from dump_scripts,
# type-checks with tsc (strict), builds ESM + CJS, and runs its node:test suite against a real
# redis-server and a real worker (build/tests/clients/scripted_worker, scripted provider).
# Skips with a message when node, the client's npm packages or redis-server are missing
# (install them with scripts/install-deps.sh).
set -u
cd "$(dirname "$0")/../.." || exit 1
BUILD=${BUILD:-build}
root=$(pwd)

if ! command -v node >/dev/null 2>&1; then
    echo "  skipped: node not found (the Node client test needs node >= 18)"
    exit 0
fi
for m in typescript ioredis @types/node; do
    if [ ! -d "clients/node/node_modules/$m" ]; then
        echo "  skipped: clients/node/node_modules/$m missing (npm ci --prefix clients/node)"
        exit 0
    fi
done
if ! command -v redis-server >/dev/null 2>&1; then
    echo "  skipped: redis-server not found"
    exit 0
fi
for b in "$BUILD/dump_scripts" "$BUILD/tests/clients/scripted_worker"; do
    if [ ! -x "$b" ]; then
        echo "  FAILED: $b not built (make $b)"
        exit 1
    fi
done

cd clients/node || exit 1
export BUILD SANDBOX_DUMP_SCRIPTS="$root/$BUILD/dump_scripts"
node scripts/generate.mjs || exit 1
echo "  tsc --noEmit (strict)"
node node_modules/typescript/bin/tsc -p tsconfig.json --noEmit || exit 1
node node_modules/typescript/bin/tsc -p tsconfig.json || exit 1
node node_modules/typescript/bin/tsc -p tsconfig.cjs.json || exit 1
node scripts/finish-build.mjs || exit 1
node -e 'require("./dist/cjs/index.js").SandboxQueue' || { echo "  FAILED: CJS build does not load"; exit 1; }
exec node --test --test-reporter=spec test/*.test.mjs
