// SandboxQueue against a real redis-server and a real sandbox-worker (scripted provider).
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import { Redis } from "ioredis";

import {
  JobValidationError,
  RESULT_SCHEMA,
  SandboxQueue,
  TimeoutError,
  validateSchema,
} from "../dist/esm/index.js";
import { RedisServer, Worker, job, sleep, uniq } from "./harness.mjs";

let srv, worker, retryWorker, queue, admin;
const prefix = `nt${process.pid}`;

async function collect(it) {
  const out = [];
  for await (const ev of it) out.push(ev);
  return out;
}

function assertValidResult(r) {
  assert.deepEqual(validateSchema(RESULT_SCHEMA, r), [], `result matches result.schema.json`);
}

before(async () => {
  srv = await RedisServer.start();
  worker = Worker.start(srv.url, prefix);
  queue = new SandboxQueue({ redis: srv.url, prefix });
  admin = new Redis(srv.url);
});

after(async () => {
  await queue?.close();
  admin?.disconnect();
  await worker?.stop();
  await retryWorker?.stop();
  await srv?.free();
});

function withLog(fn) {
  return async (t) => {
    try {
      await fn(t);
    } catch (e) {
      console.log(`--- worker log (tail) ---\n${worker.logText().slice(-4000)}`);
      throw e;
    }
  };
}

describe("SandboxQueue with a real worker", () => {
  it(
    "enqueue -> typed events -> result",
    withLog(async () => {
      const id = uniq("turn");
      const h = await queue.enqueue(
        job(id, uniq("thread"), [
          { type: "write", name: "prompt", files: [{ path: "/ws/p.md", content: "hi there" }] },
          { type: "run", name: "agent", cmd: "out hello; err careful; out wörld ✓" },
          { type: "read", path: "/ws/p.md" },
        ]),
      );
      assert.equal(h.created, true);
      assert.match(h.entry, /^\d+-\d+$/);
      const events = await collect(h.events());
      const types = events.map((e) => e.type);
      assert.deepEqual(types.filter((t) => t !== "output"), [
        "started",
        "step_started",
        "step_finished",
        "step_started",
        "step_finished",
        "step_started",
        "step_finished",
        "done",
      ]);
      const started = events[0];
      assert.equal(typeof started.sandbox, "string");
      assert.equal(started.resumed, false);
      const ss = events.filter((e) => e.type === "step_started");
      assert.deepEqual(ss.map((e) => [e.step, e.name, e.kind]), [
        [0, "prompt", "write"],
        [1, "agent", "run"],
        [2, "read-2", "read"],
      ]);
      const agentDone = events.find((e) => e.type === "step_finished" && e.step === 1);
      assert.equal(agentDone.status, "ok");
      assert.strictEqual(agentDone.exit_code, 0);
      const out = events.filter((e) => e.type === "output");
      const text = (s) => out.filter((e) => e.stream === s).map((e) => e.data).join("");
      assert.equal(text("stdout"), "hello\nwörld ✓\n");
      assert.equal(text("stderr"), "careful\n");
      assert.ok(out.every((e) => e.step === 1 && Buffer.isBuffer(e.bytes)));

      const done = events.at(-1);
      assert.equal(done.status, "succeeded");
      const r = await h.result({ timeoutMs: 5000 });
      assert.deepEqual(r, done.result);
      assert.equal(r.status, "succeeded");
      assert.equal(r.files[0].content, "hi there");
      assertValidResult(r);

      // On the wire: each worker event carries its members with their JSON types.
      const raw = await admin.xrange(queue.key("events", id), "-", "+");
      const typed = raw
        .map(([, f]) => Object.fromEntries(f.flatMap((v, i) => (i % 2 ? [] : [[v, f[i + 1]]]))))
        .filter((f) => f.event)
        .map((f) => JSON.parse(f.event));
      assert.ok(typed.length >= 7);
      assert.deepEqual(typed[0], { type: "started", sandbox: started.sandbox, resumed: false });
      assert.ok(typed.some((e) => e.type === "step_finished" && e.exit_code === 0 && e.step === 1));
      assert.ok(typed.every((e) => e.step === undefined || typeof e.step === "number"));
    }),
  );

  it(
    "a thread of three turns resumes its sandbox; thread() and stats()",
    withLog(async () => {
      const thread = uniq("conv");
      for (let turn = 1; turn <= 3; turn++) {
        const h = await queue.enqueue(
          job(`${thread}-t${turn}`, thread, [
            { type: "run", name: "agent", cmd: `out turn ${turn}` },
          ]),
        );
        const r = await h.result({ timeoutMs: 10000 });
        assert.equal(r.status, "succeeded");
        assert.equal(r.sandbox.resumed, turn > 1);
        assert.equal(r.steps[0].stdout, `turn ${turn}\n`);
      }
      const t = await queue.thread(thread);
      assert.equal(t.state, "suspended");
      assert.equal(t.provider, "scripted");
      assert.equal(t.lastJob, `${thread}-t3`);
      assert.equal(t.snapshot.kind, "scripted");
      assert.equal(typeof t.updatedAt, "number");
      assert.equal(t.lock, undefined);
      assert.equal(await queue.thread(uniq("nobody")), null);

      const st = await queue.stats();
      assert.equal(st.pending, 0);
      assert.equal(st.lag, 0);
      assert.equal(st.consumers, 1);
      assert.ok(st.length >= 4, `length ${st.length}`);
      assert.ok(st.results >= 4, `results ${st.results}`);
      assert.equal(st.dead, 0);
    }),
  );

  it(
    "a duplicate enqueue returns the existing job and never runs it twice",
    withLog(async () => {
      const id = uniq("dup");
      const j = job(id, uniq("thread"), [{ type: "run", cmd: "sleep 300; out once" }]);
      const before = await admin.xlen(queue.key("jobs"));
      const [a, b] = await Promise.all([queue.enqueue(j), queue.enqueue(j)]);
      assert.equal([a, b].filter((h) => h.created).length, 1);
      const dup = a.created ? b : a;
      assert.equal(dup.entry, null);
      assert.ok(["queued", "running"].includes(dup.existing), dup.existing);
      assert.equal(await admin.xlen(queue.key("jobs")), before + 1);
      const r = await dup.result({ timeoutMs: 10000 });
      assert.equal(r.status, "succeeded");
      const again = await queue.enqueue(j);
      assert.equal(again.created, false);
      assert.equal(again.existing, "succeeded");
      const results = await admin.xrange(queue.key("results"), "-", "+");
      assert.equal(results.filter(([, f]) => f[1] === id).length, 1);
      assert.equal(await admin.xlen(queue.key("jobs")), before + 1);
    }),
  );

  it("an invalid job is refused before anything is enqueued", async () => {
    const before = await admin.xlen(queue.key("jobs"));
    const bad = job(uniq("bad"), "t", [{ type: "run", cmd: "out x", timeout_ms: "10" }]);
    await assert.rejects(queue.enqueue(bad), (e) => {
      assert.ok(e instanceof JobValidationError);
      assert.match(e.message, /steps\[0\]\.timeout_ms: must be of type integer/);
      return true;
    });
    await assert.rejects(queue.enqueue({ ...bad, id: "no spaces" }), JobValidationError);
    assert.equal(await admin.xlen(queue.key("jobs")), before);
    assert.throws(() => queue.job("../x"), TypeError);
  });

  it(
    "result() rejects on timeout and on abort; the job goes on",
    withLog(async () => {
      const h = await queue.enqueue(
        job(uniq("slow"), uniq("thread"), [{ type: "run", cmd: "sleep 2500; out late" }]),
      );
      let t0 = Date.now();
      await assert.rejects(h.result({ timeoutMs: 300 }), TimeoutError);
      const waited = Date.now() - t0;
      assert.ok(waited >= 290 && waited < 1500, `timeout after ${waited} ms`);

      const ac = new AbortController();
      setTimeout(() => ac.abort(), 200);
      t0 = Date.now();
      await assert.rejects(h.result({ signal: ac.signal }), { name: "AbortError" });
      assert.ok(Date.now() - t0 < 1500);

      const ac2 = new AbortController();
      const seen = [];
      await assert.rejects(async () => {
        for await (const ev of h.events({ signal: ac2.signal })) {
          seen.push(ev.type);
          if (ev.type === "step_started") ac2.abort(new Error("enough"));
        }
      }, /enough/);
      assert.deepEqual(seen, ["started", "step_started"]);

      const r = await h.result({ timeoutMs: 10000 });
      assert.equal(r.status, "succeeded");
      assert.equal(r.steps[0].stdout, "late\n");
    }),
  );

  it(
    "cancel() stops a running turn",
    withLog(async () => {
      const h = await queue.enqueue(
        job(uniq("cancel"), uniq("thread"), [
          { type: "run", name: "forever", cmd: "out working; hang" },
        ]),
      );
      const events = [];
      for await (const ev of h.events()) {
        events.push(ev);
        if (ev.type === "output") assert.equal(await h.cancel(), true);
      }
      const done = events.at(-1);
      assert.equal(done.type, "done");
      assert.equal(done.status, "cancelled");
      assert.equal(done.result.error.code, "cancelled");
      const fin = events.find((e) => e.type === "step_finished");
      assert.equal(fin.status, "killed");
      const r = await h.result({ timeoutMs: 1000 });
      assert.equal(r.status, "cancelled");
      assertValidResult(r);
      assert.equal(await h.cancel(), false, "a finished job is not cancelled again");
    }),
  );

  it("events() from 'now' and from an entry; result() of an unknown job is expired", async () => {
    const h = await queue.enqueue(
      job(uniq("from"), uniq("thread"), [{ type: "run", cmd: "out a; out b" }]),
    );
    const all = await collect(h.events());
    const again = await collect(h.events({ from: all[2].entry }));
    assert.deepEqual(again.map((e) => e.entry), all.slice(3).map((e) => e.entry));
    // From "now" on a finished job: nothing new arrives, the hash says final, and done is
    // reported from it.
    const now = await collect(h.events({ from: "now", blockMs: 100 }));
    assert.equal(now.length, 1);
    assert.equal(now[0].type, "done");
    assert.equal(now[0].entry, "");
    assert.equal(now[0].status, "succeeded");
    const gone = queue.job(uniq("never-enqueued"));
    assert.deepEqual(await gone.result({ timeoutMs: 1000 }), { id: gone.id, status: "expired" });
    assert.deepEqual(await collect(gone.events({ blockMs: 50 })), []);
  });

  it("decodes events of older workers and output split inside a character", async () => {
    const id = uniq("legacy");
    const key = queue.key("events", id);
    await admin.hset(queue.key("job", id), "phase", "running");
    const bytes = Buffer.from("é✓", "utf8"); // c3 a9 e2 9c 93
    await admin.xadd(key, "*", "type", "started", "sandbox", "sb-1", "resumed", "true");
    await admin.xadd(key, "*", "type", "step_started", "step", "0", "name", "r", "kind", "run");
    await admin.xadd(key, "*", "type", "output", "step", "0", "stream", "stdout", "data",
      bytes.subarray(0, 1));
    await admin.xadd(key, "*", "type", "output", "step", "0", "stream", "stdout", "data",
      bytes.subarray(1, 4));
    await admin.xadd(key, "*", "type", "output", "step", "0", "stream", "stdout", "data",
      bytes.subarray(4));
    await admin.xadd(key, "*", "type", "step_finished", "step", "0", "name", "r", "status",
      "failed", "exit_code", "3");
    const res = { id, thread: "t", status: "failed", attempt: 1, worker: "w",
      timings: { queued_ms: 1, total_ms: 2 } };
    await admin.xadd(key, "*", "type", "done", "status", "failed", "result", JSON.stringify(res));
    const evs = await collect(queue.job(id).events());
    assert.deepEqual(evs[0], { type: "started", entry: evs[0].entry, sandbox: "sb-1", resumed: true });
    assert.equal(evs[1].step, 0);
    assert.deepEqual(evs.filter((e) => e.type === "output").map((e) => e.data), ["", "é", "✓"]);
    assert.strictEqual(evs[5].exit_code, 3);
    assert.deepEqual(evs[6].result, res);
  });

  it(
    "a retry event carries its reason",
    withLog(async () => {
      const p2 = `${prefix}r`;
      retryWorker = Worker.start(srv.url, p2, {
        SCRIPTED_FAIL_CREATE: "1",
        WORKER_RETRY_BASE_MS: "50",
        WORKER_RETRY_MAX_MS: "100",
      });
      const q2 = new SandboxQueue({ redis: admin, prefix: p2 });
      try {
        const h = await q2.enqueue(job(uniq("retry"), uniq("thread"), [{ type: "run", cmd: "out ok" }]));
        const evs = await collect(h.events());
        const retry = evs.find((e) => e.type === "retry");
        assert.ok(retry, `events: ${evs.map((e) => e.type)}`);
        assert.match(retry.reason, /^acquire_failed: /);
        assert.equal(retry.result.status, "retrying");
        assert.equal(evs.at(-1).status, "succeeded");
        assert.equal(evs.at(-1).result.attempt, 2);
      } finally {
        await q2.close(); // does not close admin: the queue does not own it
      }
      assert.equal(await admin.ping(), "PONG");
    }),
  );

  it(
    "following events survives a Redis restart without gaps or repeats",
    withLog(async () => {
      const lines = Array.from({ length: 30 }, (_, i) => `out line ${i}; sleep 100`).join("; ");
      const h = await queue.enqueue(job(uniq("restart"), uniq("thread"), [{ type: "run", cmd: lines }]));
      const seen = [];
      let restarted = null;
      for await (const ev of h.events({ blockMs: 500 })) {
        seen.push(ev);
        if (!restarted && ev.type === "output" && ev.data === "line 5\n") {
          // Not awaited: the follower is blocked in XREAD when the server goes away.
          restarted = srv.restart();
        }
      }
      assert.ok(restarted);
      await restarted;
      assert.ok(seen.filter((e) => e.type === "output").length > 6);
      assert.equal(seen.at(-1).type, "done");
      // The stream is the truth: we saw exactly its entries, in order, each once.
      const raw = await admin.xrange(queue.key("events", h.id), "-", "+");
      assert.deepEqual(seen.map((e) => e.entry), raw.map(([eid]) => eid));
      const r = await h.result({ timeoutMs: 10000 });
      assert.equal(r.status, seen.at(-1).status);
    }),
  );
});
