#!/bin/sh
# Starts dockerd when none answers (tests and the demo need it), with no bridge and no
# iptables: test containers run with network "none". Waits until it answers (60 s).
set -eu
if ! command -v dockerd >/dev/null 2>&1; then
    echo "dockerd not installed; docker tests will be skipped"
    exit 0
fi
if docker info >/dev/null 2>&1; then
    exit 0
fi
log=${DOCKERD_LOG:-/var/log/dockerd-sandbox.log}
nohup dockerd --bridge=none --iptables=false >"$log" 2>&1 &
for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then
        echo "dockerd started"
        exit 0
    fi
    sleep 1
done
echo "dockerd did not start; see $log" >&2
exit 1
