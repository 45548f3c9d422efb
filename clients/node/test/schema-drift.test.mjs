// Schema drift: the TypeScript types (src/types.ts) and the JSON Schemas (docs/*.schema.json)
// must accept and refuse the same examples. Each example is checked three ways: by the
// package's validator, by ajv (the reference implementation, when tests/fakes has it) and by
// tsc (an accepted example must type-check as Job/WorkerResult; a refused one must not, via
// @ts-expect-error). The examples of docs/protocol.md are included.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { describe, it } from "node:test";

import { JOB_SCHEMA, RESULT_SCHEMA, validateSchema } from "../dist/esm/index.js";
import { pkgDir, repoRoot } from "./harness.mjs";

const tenant = { organization: "org", project: "proj" };
const base = { id: "j1", thread: "t1", feature: "data-app", tenant };

/** Examples the JSON Schema and the types can both express. */
const jobs = [
  [true, "minimal", base],
  [true, "every step type", {
    ...base, feature: "ai-writeback", op: "turn", after: "destroy", deadline_ms: 60000,
    max_attempts: 2, secrets: { GITHUB_TOKEN: "ghs_example" }, inherit_env: ["ANTHROPIC_API_KEY"],
    workspace: { include: ["/workspace"], exclude: ["node_modules"] },
    steps: [
      { type: "write", name: "w", when: "fresh",
        files: [{ path: "/a", content: "x", encoding: "base64", mode: "0644" },
                { path: "/b", content: "y", mode: 420 }] },
      { type: "run", cmd: "make", cwd: "/w", env: { A: "1" }, timeout_ms: 5, allow_failure: true },
      { type: "read", path: "/a", max_bytes: 10 },
      { type: "upload", paths: ["/w/dist"], key: "o/p/dist.tar.zst" },
      { type: "restore", key: "o/p/dist.tar.zst", dest: "/w" },
    ] },
  ],
  [true, "destroy", { ...base, op: "destroy" }],
  [false, "missing tenant", { id: "j1", thread: "t1", feature: "data-app" }],
  [false, "unknown feature", { ...base, feature: "chat" }],
  [false, "unknown member", { ...base, priority: 1 }],
  [false, "unknown tenant member", { ...base, tenant: { ...tenant, team: "x" } }],
  [false, "string timeout", { ...base, steps: [{ type: "run", cmd: "x", timeout_ms: "5" }] }],
  [false, "run without cmd", { ...base, steps: [{ type: "run" }] }],
  [false, "unknown step type", { ...base, steps: [{ type: "exec", cmd: "x" }] }],
  [false, "field of another step type", { ...base, steps: [{ type: "read", path: "/a", cmd: "x" }] }],
  [false, "bad when", { ...base, steps: [{ type: "run", cmd: "x", when: "later" }] }],
  [false, "bad encoding", { ...base, steps: [{ type: "write", files: [{ path: "/a", content: "", encoding: "hex" }] }] }],
  [false, "steps on destroy", { ...base, op: "destroy", steps: [{ type: "run", cmd: "x" }] }],
  [false, "bad after", { ...base, after: "pause" }],
  [false, "boolean as string", { ...base, steps: [{ type: "run", cmd: "x", allow_failure: "true" }] }],
  [false, "secret not a string", { ...base, secrets: { A: 1 } }],
];

const timings = { queued_ms: 3, total_ms: 9 };
const rbase = { id: "j1", thread: "t1", status: "succeeded", attempt: 1, worker: "w1", timings };
const results = [
  [true, "minimal", rbase],
  [true, "full", {
    ...rbase, status: "failed", error: { code: "step_failed", message: "m" },
    steps: [{ name: "r", type: "run", status: "failed", exit_code: 2, stdout: "", stderr: "e",
              stdout_bytes: 0, stderr_bytes: 1, stderr_truncated: true, duration_ms: 4 }],
    files: [{ path: "/a", step: "read-1", encoding: "utf8", content: "x", bytes: 1, truncated: true }],
    uploads: [{ key: "k", bytes: 3, sha256: "a".repeat(64), step: "u" }],
    sandbox: { provider: "e2b", state: "suspended", resumed: true,
               snapshot: { kind: "e2b-paused", sandboxId: "s" } },
    timings: { queued_ms: 1, acquire_ms: 2, run_ms: 3, suspend_ms: 4, total_ms: 10 } }],
  [false, "missing timings", { id: "j1", thread: "t1", status: "succeeded", attempt: 1, worker: "w" }],
  [false, "unknown status", { ...rbase, status: "done" }],
  [false, "attempt as string", { ...rbase, attempt: "1" }],
  [false, "resumed as string", { ...rbase, sandbox: { provider: "e2b", state: "suspended", resumed: "false" } }],
  [false, "error without message", { ...rbase, error: { code: "x" } }],
  [false, "truncated false", { ...rbase, files: [{ path: "/a", step: "s", encoding: "utf8", content: "", bytes: 0, truncated: false }] }],
  [false, "bad step status", { ...rbase, steps: [{ name: "r", type: "run", status: "done", duration_ms: 1 }] }],
];

/** The ```json examples of docs/protocol.md: one job, one result. */
function docExamples() {
  const md = readFileSync(join(repoRoot, "docs", "protocol.md"), "utf8");
  const blocks = [...md.matchAll(/```json\n([\s\S]*?)```/g)].map((m) => JSON.parse(m[1]));
  const job = blocks.find((b) => "feature" in b);
  const result = blocks.find((b) => "timings" in b);
  assert.ok(job && result, "docs/protocol.md has a job and a result example");
  return { job, result };
}

function loadAjv() {
  const fakes = join(repoRoot, "tests", "fakes", "node_modules", "ajv", "dist", "2020.js");
  if (!existsSync(fakes)) return null;
  const Ajv2020 = createRequire(import.meta.url)(fakes).default;
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  return { job: ajv.compile(JOB_SCHEMA), result: ajv.compile(RESULT_SCHEMA) };
}

describe("schema drift", () => {
  const doc = docExamples();
  const allJobs = [...jobs, [true, "docs/protocol.md job", doc.job]];
  const allResults = [...results, [true, "docs/protocol.md result", doc.result]];

  it("the package validator agrees with the expectations", () => {
    for (const [ok, name, v] of allJobs)
      assert.equal(validateSchema(JOB_SCHEMA, v).length === 0, ok, `job "${name}"`);
    for (const [ok, name, v] of allResults)
      assert.equal(validateSchema(RESULT_SCHEMA, v).length === 0, ok, `result "${name}"`);
  });

  it("ajv agrees (reference JSON Schema implementation)", (t) => {
    const ajv = loadAjv();
    if (!ajv) {
      t.skip("ajv not installed (npm install --prefix tests/fakes)");
      return;
    }
    for (const [ok, name, v] of allJobs) assert.equal(ajv.job(v), ok, `job "${name}"`);
    for (const [ok, name, v] of allResults) assert.equal(ajv.result(v), ok, `result "${name}"`);
  });

  it("the TypeScript types accept and refuse the same examples", () => {
    const tsc = join(pkgDir, "node_modules", "typescript", "bin", "tsc");
    const dir = mkdtempSync(join(pkgDir, "test", ".drift-"));
    try {
      let src = 'import type { Job, WorkerResult } from "../../src/types.js";\n\n';
      const add = (type, [ok, name, v], i) => {
        src += `// ${name}\n${ok ? "" : "// @ts-expect-error refused by the schema\n"}`;
        src += `export const ${type.replace(/\W/g, "")}${i}: ${type} = ${JSON.stringify(v)};\n`;
      };
      allJobs.forEach((e, i) => add("Job", e, i));
      allResults.forEach((e, i) => add("WorkerResult", e, i));
      writeFileSync(join(dir, "examples.ts"), src);
      try {
        execFileSync(process.execPath, [tsc, "--noEmit", "--strict", "--target", "ES2022",
          "--module", "ES2022", "--moduleResolution", "Bundler", "--types", "node",
          join(dir, "examples.ts")], { cwd: pkgDir, encoding: "utf8" });
      } catch (e) {
        assert.fail(`tsc disagrees with the schema:\n${e.stdout}${e.stderr}\n${src}`);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("README", () => {
  it("its TypeScript examples type-check against the package", () => {
    const tsc = join(pkgDir, "node_modules", "typescript", "bin", "tsc");
    const md = readFileSync(join(pkgDir, "README.md"), "utf8");
    const blocks = [...md.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]);
    assert.ok(blocks.length >= 2, "README has the quick start and the writeback example");
    const dir = mkdtempSync(join(pkgDir, "test", ".drift-"));
    const decl =
      "declare const orgUuid: string, projectUuid: string, organizationUuid: string,\n" +
      "  conversationUuid: string, githubToken: string;\n" +
      "declare const logger: { info(...a: unknown[]): void; debug(...a: unknown[]): void;\n" +
      "  warn(...a: unknown[]): void };\n";
    try {
      const files = blocks.map((b, i) => {
        const f = join(dir, `readme${i}.ts`);
        const src = b.replaceAll('"@sandbox-worker/client"', '"../../src/index.js"');
        writeFileSync(f, `${decl}${src}\nexport {};\n`);
        return f;
      });
      try {
        execFileSync(process.execPath, [tsc, "--noEmit", "--strict", "--target", "ES2022",
          "--module", "ES2022", "--moduleResolution", "Bundler", "--types", "node", ...files],
          { cwd: pkgDir, encoding: "utf8" });
      } catch (e) {
        assert.fail(`README example does not type-check:\n${e.stdout}${e.stderr}`);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
