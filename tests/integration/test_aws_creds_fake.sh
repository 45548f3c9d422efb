#!/bin/sh
# Proves tests/fakes/aws_creds_fake.js faithful to AWS: the SDK's own credential providers
# (npm @aws-sdk/credential-providers: fromTokenFile, fromWebToken, fromContainerMetadata,
# fromHttp, fromInstanceMetadata, fromIni, fromNodeProviderChain) run against it through
# tests/fakes/aws_creds_conformance.mjs. Skips with a message when node or the package is missing.
set -u
cd "$(dirname "$0")/../.." || exit 1

if ! command -v node >/dev/null 2>&1; then
    echo "  skipped: node not found (the AWS credential fake conformance test needs node)"
    exit 0
fi
if [ ! -f tests/fakes/node_modules/@aws-sdk/credential-providers/package.json ]; then
    echo "  skipped: @aws-sdk/credential-providers not installed (npm install --prefix tests/fakes)"
    exit 0
fi
# --no-warnings: the SDK prints a Node version notice on every run.
exec timeout 300 node --no-warnings tests/fakes/aws_creds_conformance.mjs
