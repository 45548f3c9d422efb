#!/bin/sh
# Validates example jobs and results against docs/job.schema.json and docs/result.schema.json
# with ajv (JSON Schema draft 2020-12, strict mode), and checks that the worker's own job
# validation (via `sandboxctl enqueue`, which runs job_parse before connecting) agrees with
# the job schema on every example. Needs node and tests/fakes/node_modules/ajv
# (npm install --prefix tests/fakes); skips with a message when they are missing.
set -u
cd "$(dirname "$0")/../.." || exit 1
BUILD=${BUILD:-build}

if ! command -v node >/dev/null 2>&1; then
    echo "  skipped: node not found (the schema test needs node and npm package ajv)"
    exit 0
fi
if [ ! -f tests/fakes/node_modules/ajv/dist/2020.js ]; then
    echo "  skipped: ajv not installed (npm install --prefix tests/fakes)"
    exit 0
fi

dir=$(mktemp -d "${TMPDIR:-/tmp}/sw-schemas-XXXXXX") || exit 1
trap 'rm -rf "$dir"' EXIT INT TERM
mkdir "$dir/job-ok" "$dir/job-bad" "$dir/result-ok" "$dir/result-bad"

# ---- jobs the worker accepts ----
cat >"$dir/job-ok/minimal.json" <<'JSON'
{"id":"job-1","thread":"thread-1","feature":"data-app","tenant":{"organization":"org-uuid","project":"project-uuid"}}
JSON
cat >"$dir/job-ok/full.json" <<'JSON'
{
  "id": "turn-7f3a.2", "thread": "app:42", "feature": "ai-writeback",
  "tenant": {"organization": "8c1e-org", "project": "Sales Project 1"},
  "op": "turn",
  "steps": [
    {"type": "write", "name": "prompt", "files": [
      {"path": "/workspace/prompt.md", "content": "Add a revenue chart"},
      {"path": "/workspace/bin/run.sh", "content": "IyEvYmluL3NoCmVjaG8gaGkK", "encoding": "base64", "mode": "0755"},
      {"path": "/workspace/data.bin", "content": "AAEC", "encoding": "base64", "mode": 420}
    ]},
    {"type": "restore", "when": "fresh", "key": "threads/app-42/seed.tar.zst", "dest": "/workspace"},
    {"type": "run", "name": "agent", "cmd": "claude -p \"$(cat prompt.md)\"", "cwd": "/workspace",
     "env": {"CI": "1", "GIT_AUTHOR_NAME": "Lightdash"}, "timeout_ms": 600000, "allow_failure": false},
    {"type": "run", "when": "resumed", "cmd": "git status --short", "allow_failure": true},
    {"type": "read", "path": "/workspace/summary.md", "max_bytes": 65536},
    {"type": "upload", "paths": ["/workspace/dist"], "key": "apps/42/dist.tar"}
  ],
  "workspace": {"include": ["/workspace"], "exclude": ["node_modules", ".git/objects"]},
  "after": "suspend",
  "secrets": {"GITHUB_TOKEN": "ghp_example", "LIGHTDASH_API_KEY": "ldpat_example"},
  "inherit_env": ["ANTHROPIC_API_KEY"],
  "deadline_ms": 1200000,
  "max_attempts": 5
}
JSON
cat >"$dir/job-ok/destroy.json" <<'JSON'
{"id":"job-9","thread":"thread-1","feature":"data-app","tenant":{"organization":"o","project":"p"},"op":"destroy","steps":[],"after":"destroy"}
JSON

# ---- jobs the worker rejects ----
j='"id":"j","thread":"t","feature":"data-app","tenant":{"organization":"o","project":"p"}'
echo '{"id":"j","thread":"t","feature":"data-app"}' >"$dir/job-bad/no-tenant.json"
echo "{$j,\"priority\":1}" >"$dir/job-bad/unknown-field.json"
echo "{$j,\"steps\":[{\"type\":\"run\"}]}" >"$dir/job-bad/run-without-cmd.json"
echo '{"id":"a b","thread":"t","feature":"data-app","tenant":{"organization":"o","project":"p"}}' >"$dir/job-bad/id-space.json"
echo "{$j,\"feature\":\"chat\"}" | sed 's/"feature":"data-app",//' >"$dir/job-bad/feature.json"
echo "{$j,\"op\":\"destroy\",\"steps\":[{\"type\":\"run\",\"cmd\":\"true\"}]}" >"$dir/job-bad/destroy-steps.json"
echo "{$j,\"steps\":[{\"type\":\"write\",\"files\":[{\"path\":\"rel/x\",\"content\":\"\"}]}]}" >"$dir/job-bad/relative-path.json"
echo "{$j,\"steps\":[{\"type\":\"read\",\"path\":\"/a/../etc/passwd\"}]}" >"$dir/job-bad/dotdot.json"
echo "{$j,\"steps\":[{\"type\":\"run\",\"cmd\":\"x\",\"files\":[]}]}" >"$dir/job-bad/run-with-files.json"
echo "{$j,\"max_attempts\":0}" >"$dir/job-bad/attempts-zero.json"
echo "{$j,\"secrets\":{\"lower\":\"v\"}}" >"$dir/job-bad/secret-name.json"
echo "{$j,\"secrets\":{\"PIN\":\"123\"}}" >"$dir/job-bad/secret-short.json"
echo "{$j,\"secrets\":{\"PIN\":\"***\"}}" >"$dir/job-bad/secret-masked.json"
echo "{$j,\"steps\":[{\"type\":\"write\",\"files\":[{\"path\":\"/x\",\"content\":\"\",\"mode\":\"0999\"}]}]}" >"$dir/job-bad/mode.json"
echo "{$j,\"steps\":[{\"type\":\"upload\",\"paths\":[\"/w\"],\"key\":\"/abs\"}]}" >"$dir/job-bad/key-slash.json"
echo "{$j,\"deadline_ms\":1.5}" >"$dir/job-bad/deadline-fraction.json"
echo "{$j,\"steps\":[{\"type\":\"run\",\"cmd\":\"x\",\"when\":\"sometimes\"}]}" >"$dir/job-bad/when.json"

# ---- results ----
cat >"$dir/result-ok/succeeded.json" <<'JSON'
{"id":"turn-7f3a.2","thread":"app:42","status":"succeeded","attempt":1,"worker":"sandbox-worker-5d9f-1",
 "steps":[{"name":"prompt","type":"write","status":"ok","duration_ms":31},
          {"name":"agent","type":"run","status":"ok","exit_code":0,"stdout":"done\n","stdout_bytes":5,
           "stderr":"","stderr_bytes":0,"duration_ms":81234},
          {"name":"run-3","type":"run","status":"skipped","duration_ms":0},
          {"name":"read-4","type":"read","status":"ok","duration_ms":12}],
 "files":[{"path":"/workspace/summary.md","step":"read-4","encoding":"utf8","content":"# Summary\n","bytes":10}],
 "sandbox":{"provider":"e2b","state":"suspended","resumed":true,"snapshot":{"kind":"e2b-paused","sandboxId":"i8k2x"}},
 "timings":{"queued_ms":120,"acquire_ms":900,"run_ms":81300,"suspend_ms":2100,"total_ms":84320}}
JSON
cat >"$dir/result-ok/failed.json" <<'JSON'
{"id":"j2","thread":"t","status":"failed","attempt":3,"worker":"w",
 "error":{"code":"step_failed","message":"step build exited with status 2"},
 "steps":[{"name":"build","type":"run","status":"failed","exit_code":2,"stdout":"…","stdout_bytes":20971520,
           "stdout_truncated":true,"stderr":"npm ERR! ***","stderr_bytes":12,"duration_ms":5000}],
 "sandbox":{"provider":"docker","state":"suspended","resumed":false,"snapshot":{"kind":"s3-tar","key":"threads/t/3.tar.zst"}},
 "timings":{"queued_ms":5,"acquire_ms":300,"run_ms":5000,"suspend_ms":700,"total_ms":6005}}
JSON
cat >"$dir/result-ok/rejected.json" <<'JSON'
{"id":"","thread":"","status":"rejected","attempt":1,"worker":"w",
 "error":{"code":"invalid_job","message":"job is not valid JSON: unexpected byte at offset 17"},
 "timings":{"queued_ms":3,"total_ms":0}}
JSON
cat >"$dir/result-ok/lost.json" <<'JSON'
{"id":"j4","thread":"t","status":"lost","attempt":1,"worker":"w2",
 "error":{"code":"worker_lost","message":"a previous delivery started this turn and its worker stopped renewing the lease; the turn is not run again"},
 "timings":{"queued_ms":45000,"total_ms":1},"future_member":{"ignored":true}}
JSON
cat >"$dir/result-ok/lambda.json" <<'JSON'
{"id":"j5","thread":"t","status":"timeout","attempt":1,"worker":"w",
 "error":{"code":"deadline","message":"the turn exceeded its deadline"},
 "sandbox":{"provider":"lambda-microvm","state":"suspended","resumed":false,"snapshot":{"kind":"lambda-microvm-suspended","microVmId":"mvm-1"}},
 "timings":{"queued_ms":0,"acquire_ms":10,"run_ms":600000,"suspend_ms":40,"total_ms":600050}}
JSON
echo '{"id":"j","thread":"t","attempt":1,"worker":"w","timings":{"queued_ms":0,"total_ms":0}}' >"$dir/result-bad/no-status.json"
echo '{"id":"j","thread":"t","status":"done","attempt":1,"worker":"w","timings":{"queued_ms":0,"total_ms":0}}' >"$dir/result-bad/status.json"
echo '{"id":"j","thread":"t","status":"succeeded","attempt":1,"worker":"w","sandbox":{"provider":"docker","state":"suspended","resumed":false,"snapshot":{"kind":"s3-tar"}},"timings":{"queued_ms":0,"total_ms":0}}' >"$dir/result-bad/s3-no-key.json"
echo '{"id":"j","thread":"t","status":"succeeded","attempt":0,"worker":"w","timings":{"queued_ms":0,"total_ms":0}}' >"$dir/result-bad/attempt-zero.json"
echo '{"id":"j","thread":"t","status":"failed","attempt":1,"worker":"w","error":{"code":"x"},"timings":{"queued_ms":0,"total_ms":0}}' >"$dir/result-bad/error-no-message.json"
echo '{"id":"j","thread":"t","status":"succeeded","attempt":1,"worker":"w","steps":[{"name":"a","type":"run","status":"exploded","duration_ms":1}],"timings":{"queued_ms":0,"total_ms":0}}' >"$dir/result-bad/step-status.json"
cat >"$dir/result-ok/encoded-output.json" <<'JSON'
{"id":"j","thread":"t","status":"succeeded","attempt":1,"worker":"w","entry":"1718000000000-0",
 "steps":[{"name":"run-0","type":"run","status":"ok","exit_code":0,"stdout":"b2v//iE=",
 "stdout_encoding":"base64","stdout_bytes":5,"stderr":"","stderr_bytes":0,"duration_ms":3}],
 "timings":{"queued_ms":0,"total_ms":3}}
JSON
echo '{"id":"j","thread":"t","status":"succeeded","attempt":1,"worker":"w","steps":[{"name":"a","type":"run","status":"ok","stdout":"x","stdout_encoding":"hex","duration_ms":1}],"timings":{"queued_ms":0,"total_ms":0}}' >"$dir/result-bad/stdout-encoding.json"
echo '{"id":"j","thread":"t","status":"succeeded","attempt":1,"worker":"w","entry":"latest","timings":{"queued_ms":0,"total_ms":0}}' >"$dir/result-bad/entry.json"

# The examples in docs/protocol.md: its first ```json block is a job, its second a result,
# and its ```js block must at least parse.
awk '/^```json$/{n++; f=1; next} /^```/{f=0} f{print > (dir "/doc-" n ".json")}' dir="$dir" \
    docs/protocol.md
cp "$dir/doc-1.json" "$dir/job-ok/protocol-md-example.json" 2>/dev/null
cp "$dir/doc-2.json" "$dir/result-ok/protocol-md-example.json" 2>/dev/null
awk '/^```js$/{f=1; next} /^```/{f=0} f' docs/protocol.md >"$dir/doc.js"

fail=0
if [ ! -s "$dir/job-ok/protocol-md-example.json" ] || [ ! -s "$dir/result-ok/protocol-md-example.json" ]; then
    echo "  FAIL docs/protocol.md: the job and result JSON examples were not found"
    fail=1
fi
if ! node --check "$dir/doc.js" 2>"$dir/out"; then
    echo "  FAIL docs/protocol.md: the Node example does not parse"
    sed 's/^/    /' "$dir/out"
    fail=1
fi
NODE_PATH="$PWD/tests/fakes/node_modules" node - "$dir" <<'NODE' || fail=1
const fs = require("fs");
const path = require("path");
const Ajv2020 = require("ajv/dist/2020");
const dir = process.argv[2];
const ajv = new Ajv2020({ strict: true, allErrors: true });
const schemas = {
  job: ajv.compile(JSON.parse(fs.readFileSync("docs/job.schema.json", "utf8"))),
  result: ajv.compile(JSON.parse(fs.readFileSync("docs/result.schema.json", "utf8"))),
};
let failed = 0, checked = 0;
for (const kind of ["job", "result"]) {
  for (const want of ["ok", "bad"]) {
    const sub = path.join(dir, `${kind}-${want}`);
    for (const f of fs.readdirSync(sub).sort()) {
      const doc = JSON.parse(fs.readFileSync(path.join(sub, f), "utf8"));
      const valid = schemas[kind](doc);
      checked++;
      if (valid !== (want === "ok")) {
        failed++;
        console.log(`  FAIL ${kind}-${want}/${f}: schema says ${valid ? "valid" : "invalid"}` +
          (valid ? "" : ": " + ajv.errorsText(schemas[kind].errors)));
      }
    }
  }
}
console.log(`  schemas: ${checked - failed} of ${checked} examples as expected`);
process.exit(failed ? 1 : 0);
NODE

# The worker's validation must agree with the job schema: sandboxctl validates with
# job_parse first (exit 2 when invalid), then connects (refused here: exit 4).
ctl="$BUILD/sandboxctl"
if [ -x "$ctl" ]; then
    n=0
    for f in "$dir"/job-ok/*.json "$dir"/job-bad/*.json; do
        case "$f" in */job-ok/*) want=4 ;; *) want=2 ;; esac
        REDIS_URL=redis://127.0.0.1:1 SANDBOX_INHERIT_ENV_ALLOW=ANTHROPIC_API_KEY \
            "$ctl" enqueue "$f" >"$dir/out" 2>&1
        rc=$?
        n=$((n + 1))
        if [ "$rc" -ne "$want" ]; then
            echo "  FAIL job_parse disagrees on $(basename "$(dirname "$f")")/$(basename "$f"): exit $rc, want $want"
            sed 's/^/    /' "$dir/out"
            fail=1
        fi
    done
    echo "  job_parse: checked $n examples"
else
    echo "  skipped: job_parse cross-check ($ctl not built)"
fi

if [ $fail -ne 0 ]; then
    echo "test_schemas: FAILED"
    exit 1
fi
echo "test_schemas: passed"
