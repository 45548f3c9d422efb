#!/bin/sh
# Proves tests/fakes/azure_sessions.js faithful: Microsoft's own @azure/identity gets tokens
# from its Entra, workload-identity, IMDS and App Service identity endpoints (client secret,
# federated assertion, managed identity, DefaultAzureCredential) and sees Entra's errors; the
# tokens then open sessions on the pool endpoint (tests/fakes/azure_sessions_conformance.mjs).
# The authority is HTTPS (MSAL refuses http), with a CA made here with openssl. Needs node,
# openssl, the npm package (npm install --prefix tests/fakes) and a built sandbox-agent;
# skips with a message otherwise.
set -u
cd "$(dirname "$0")/../.." || exit 1
BUILD=${BUILD:-build}

for tool in node openssl; do
    if ! command -v $tool >/dev/null 2>&1; then
        echo "  skipped: $tool not found"
        exit 0
    fi
done
if [ ! -d tests/fakes/node_modules/@azure/identity ]; then
    echo "  skipped: @azure/identity not installed (npm install --prefix tests/fakes)"
    exit 0
fi
if [ ! -x "$BUILD/sandbox-agent" ]; then
    echo "  skipped: $BUILD/sandbox-agent not built"
    exit 0
fi
dir=$(mktemp -d "${TMPDIR:-/tmp}/sw-azure-fake-XXXXXX") || exit 1
trap 'rm -rf "$dir"' EXIT INT TERM
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=sandbox-worker test CA" \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null || exit 1
openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null || exit 1
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$dir/san.ext"
openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 2 -extfile "$dir/san.ext" -out "$dir/server.pem" 2>/dev/null || exit 1
NODE_NO_WARNINGS=1 NODE_EXTRA_CA_CERTS="$dir/ca.pem" node tests/fakes/azure_sessions_conformance.mjs \
    "$PWD/$BUILD/sandbox-agent" "$dir" "$dir/server.pem" "$dir/server.key"
