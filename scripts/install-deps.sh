#!/bin/sh
# Installs what building, testing and the demo need on Debian 12 / Ubuntu: the compiler and
# libraries, redis-server, dockerd, and the npm packages of tests/fakes. Idempotent; run as
# root (or with sudo available).
set -eu
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

PKGS="build-essential pkg-config git ca-certificates curl openssl
libhiredis-dev libevent-dev libcurl4-openssl-dev libcjson-dev libarchive-dev libssl-dev
libzstd-dev zlib1g-dev zstd redis-server redis-tools docker.io busybox-static
clang clang-format clang-tidy cppcheck valgrind libclang-rt-14-dev python3"
# Node.js may come from elsewhere than Debian (its npm then conflicts with Debian's npm
# package): install Debian's only when the commands are missing.
command -v node >/dev/null 2>&1 || PKGS="$PKGS nodejs"
command -v npm >/dev/null 2>&1 || PKGS="$PKGS npm"
# Headless browser for the status page test (tests/integration/test_status_page.c).
PKGS="$PKGS chromium"
# docker-compose (v1) validates compose/ in tests/deploy/test_compose.sh.
PKGS="$PKGS docker-compose"

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "installing:$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi

# The test fakes and SDKs (s3rver, ajv, …) from the npm registry.
if [ -f tests/fakes/package.json ] && command -v npm >/dev/null 2>&1; then
    if [ -f tests/fakes/package-lock.json ]; then
        npm ci --prefix tests/fakes --no-audit --no-fund --loglevel=error
    else
        npm install --prefix tests/fakes --no-audit --no-fund --loglevel=error
    fi
fi

# The Node client's build and test packages (typescript, ioredis, @types/node). Scripts are
# skipped: its build needs the C tree built first (tests/clients/test_node_client.sh runs it).
if [ -f clients/node/package.json ] && command -v npm >/dev/null 2>&1; then
    npm ci --prefix clients/node --ignore-scripts --no-audit --no-fund --loglevel=error
fi
