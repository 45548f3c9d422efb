#!/bin/sh
# Checks deploy/kubernetes/: strict YAML parse and the fields operators rely on (provider
# and its required variables from a Secret, probes, resources, securityContext, grace vs
# drain, Service/ServiceMonitor/PDB selectors, KEDA triggers on the queue's stream and group,
# TriggerAuthentication from the Secret, IRSA and Azure workload identity). Then proves the
# checks can fail (mutated copies must be refused) and runs `sandbox-worker --check-config`
# with the manifest's environment. Needs node and tests/fakes/node_modules/yaml.
set -u
cd "$(dirname "$0")/../.." || exit 1
BUILD=${BUILD:-build}
if ! command -v node >/dev/null 2>&1; then
    echo "  skipped: node not found (the manifest check needs node and npm package yaml)"
    exit 0
fi
if [ ! -f tests/fakes/node_modules/yaml/package.json ]; then
    echo "  skipped: yaml not installed (npm install --prefix tests/fakes)"
    exit 0
fi
check=tests/deploy/check_kubernetes.mjs
fail=0

echo "  manifests as shipped:"
node "$check" deploy/kubernetes || fail=1

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sw-k8s-XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT INT TERM

# Each mutation must be reported: "sed expression|words the report must contain".
mutate() {
    rm -rf "$tmp/k" && cp -r deploy/kubernetes "$tmp/k"
    sed -i "$1" "$tmp/k/worker.yaml"
    out=$(node "$check" "$tmp/k" 2>&1)
    rc=$?
    if [ $rc -eq 0 ] || ! printf '%s' "$out" | grep -q "$2"; then
        echo "  FAIL: mutation '$1' not reported as '$2' (rc=$rc): $out"
        fail=1
    else
        echo "  ok: mutation '$1' refused: $(printf '%s' "$out" | grep "$2" | head -1)"
    fi
}
mutate 's/value: lambda-microvm}/value: e2b}/' 'SANDBOX_PROVIDER=e2b needs E2B_API_KEY'
mutate '/name: SANDBOX_PROVIDER, value/d' 'SANDBOX_PROVIDER is not set explicitly'
mutate '0,/stream: "{sandbox}:jobs"/s//stream: "{jobs}:jobs"/' 'is not "{sandbox}:jobs"'
mutate 's/consumerGroup: workers/consumerGroup: worker/' 'consumerGroup'
mutate 's/terminationGracePeriodSeconds: 90/terminationGracePeriodSeconds: 30/' 'terminationGracePeriodSeconds 30'
mutate 's/readOnlyRootFilesystem: true/readOnlyRootFilesystem: false/' 'readOnlyRootFilesystem'
mutate 's/key: redis-keda-password}/key: redis-pass}/' 'redis-pass'
mutate 's/revisionHistoryLimit: 5/revisionHistoryLimit: 5\n  revisionHistoryLimit: 6/' 'YAML'
mutate 's/path: \/readyz/path: \/healthz/' 'readinessProbe'
mutate 's/{name: ANTHROPIC_API_KEY.*//; s/- name: ANTHROPIC_API_KEY/- {name: ANTHROPIC_API_KEY, value: sk-ant-x}/' 'ANTHROPIC_API_KEY is a literal'
mutate 's/pendingEntriesCount: "24"/streamLength: "24"/' 'pendingEntriesCount'

# The worker itself accepts the manifest's environment (secret values from the example).
if [ -x "$BUILD/sandbox-worker" ]; then
    node "$check" deploy/kubernetes --env deploy/kubernetes/worker.yaml >"$tmp/env" || fail=1
    # shellcheck disable=SC2046
    if out=$(env -i PATH="$PATH" $(tr '\n' ' ' <"$tmp/env") \
        "$BUILD/sandbox-worker" --check-config 2>&1); then
        echo "  ok: sandbox-worker --check-config accepts worker.yaml's environment"
    else
        echo "  FAIL: sandbox-worker --check-config refuses worker.yaml's environment: $out"
        fail=1
    fi
    # The Azure example, with what the workload identity webhook injects into the pod.
    node "$check" deploy/kubernetes --env deploy/kubernetes/examples/azure-workload-identity.yaml \
        >"$tmp/env-az" || fail=1
    echo x >"$tmp/token"
    # shellcheck disable=SC2046
    if out=$(env -i PATH="$PATH" $(tr '\n' ' ' <"$tmp/env-az") \
        AZURE_CLIENT_ID=00000000-0000-0000-0000-000000000000 \
        AZURE_TENANT_ID=00000000-0000-0000-0000-000000000000 \
        AZURE_FEDERATED_TOKEN_FILE="$tmp/token" \
        AZURE_AUTHORITY_HOST=https://login.microsoftonline.com/ \
        "$BUILD/sandbox-worker" --check-config 2>&1); then
        echo "  ok: sandbox-worker --check-config accepts the Azure example's environment"
    elif printf '%s' "$out" | grep -q 'is not available'; then
        echo "  skipped: the Azure example's --check-config (azure-container-sessions not built in)"
    else
        echo "  FAIL: sandbox-worker --check-config refuses the Azure example's environment: $out"
        fail=1
    fi
else
    echo "  skipped: --check-config of the manifest's environment ($BUILD/sandbox-worker not built)"
fi
[ $fail -eq 0 ] && echo "  kubernetes manifests: ok"
exit $fail
