// SandboxQueue: the producer side of docs/protocol.md on ioredis. Key names and Lua scripts
// come from src/generated/protocol.ts, which the build generates from the C sources.
import { TextDecoder } from "node:util";

import { Redis, type RedisOptions } from "ioredis";

import { GROUP, KEY_PATTERNS, SCRIPTS } from "./generated/protocol.js";
import { JOB_SCHEMA } from "./generated/schemas.js";
import { validateSchema, type SchemaError } from "./schema.js";
import type {
  FinalStatus,
  Job,
  JobEvent,
  QueueStats,
  Result,
  SnapshotRef,
  ThreadState,
  WorkerResult,
} from "./types.js";

const ID_RE = /^[A-Za-z0-9_.:-]{1,128}$/;
const DEFAULT_JOB_TTL_S = 7 * 24 * 3600; /* WORKER_JOB_TTL_S default */
const RETRY_MS = 200; /* pause before retrying a command that failed on the connection */

export interface SandboxQueueOptions {
  /** An ioredis client (not closed by close()), or a URL or options for one the queue owns. */
  redis: Redis | string | RedisOptions;
  /** Key prefix; default $SANDBOX_QUEUE_PREFIX or "sandbox" (keys start "{sandbox}:"). */
  prefix?: string;
  /** TTL of the job hash and of cancel keys in seconds; default 7 days, as the worker's. */
  jobTtlS?: number;
  /** Check jobs against docs/job.schema.json before enqueueing (default true). */
  validate?: boolean;
}

export interface EventsOptions {
  /** "start" (default): every event still in the stream; "now": only new ones; or an entry
   * id to resume after (exclusive), e.g. the `entry` of the last event you handled. */
  from?: "start" | "now" | string;
  /** Stops the iteration; the pending next() rejects with the signal's reason. */
  signal?: AbortSignal;
  /** How long one XREAD blocks before the job hash is checked again (ms, default 2000). */
  blockMs?: number;
}

export interface ResultOptions {
  /** Reject with a TimeoutError after this many ms (default: wait for ever). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** The job does not match docs/job.schema.json; nothing was enqueued. */
export class JobValidationError extends Error {
  override name = "JobValidationError";
  constructor(readonly errors: SchemaError[]) {
    super(`invalid job: ${errors.map((e) => `${e.path || "(job)"}: ${e.message}`).join("; ")}`);
  }
}

/** result() ran out of its timeoutMs; the job itself goes on. */
export class TimeoutError extends Error {
  override name = "TimeoutError";
}

function abortError(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException("The operation was aborted", "AbortError");
}

function isReplyError(e: unknown): boolean {
  return e instanceof Error && e.name === "ReplyError";
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}

function checkId(what: string, id: string): void {
  if (typeof id !== "string" || !ID_RE.test(id))
    throw new TypeError(`${what} must be 1 to 128 characters of A-Z a-z 0-9 _ . : -`);
}

function pattern(p: string, prefix: string, id = ""): string {
  return p.replace(/\$\{(prefix|id)\}/g, (_m, name: string) => (name === "prefix" ? prefix : id));
}

/** Entry id of the newest entry of a stream, or "0-0" when it is empty or missing. */
async function lastEntry(r: Redis, key: string): Promise<string> {
  const rows = await r.xrevrange(key, "+", "-", "COUNT", 1);
  return rows[0]?.[0] ?? "0-0";
}

type RawEntry = [Buffer, Buffer[]];

export class SandboxQueue {
  readonly prefix: string;
  /** The connection for ordinary commands. Blocking reads use duplicates of it. */
  readonly redis: Redis;
  private readonly owned: boolean;
  private readonly ttl: number;
  private readonly validate: boolean;
  private readonly blocking = new Set<Redis>();

  constructor(opts: SandboxQueueOptions) {
    if (opts.redis instanceof Redis) {
      this.redis = opts.redis;
      this.owned = false;
    } else {
      this.redis =
        typeof opts.redis === "string" ? new Redis(opts.redis) : new Redis(opts.redis);
      this.owned = true;
    }
    this.prefix = opts.prefix ?? process.env.SANDBOX_QUEUE_PREFIX ?? "sandbox";
    this.ttl = opts.jobTtlS ?? DEFAULT_JOB_TTL_S;
    this.validate = opts.validate ?? true;
  }

  /** Key names (docs/protocol.md, Keys). */
  key(kind: "jobs" | "results" | "delayed" | "dead"): string;
  key(kind: "job" | "events" | "thread" | "cancel", id: string): string;
  key(kind: keyof typeof KEY_PATTERNS, id?: string): string {
    return pattern(KEY_PATTERNS[kind], this.prefix, id);
  }

  /**
   * Adds a job with the enqueue script (the one `sandboxctl enqueue` runs). Idempotent on
   * job.id: when the id is already known, nothing is added and the returned handle, with
   * `created` false, follows the existing job. Rejects with JobValidationError on an invalid
   * job (nothing enqueued).
   */
  async enqueue(job: Job): Promise<JobHandle> {
    if (this.validate) {
      const errs = validateSchema(JOB_SCHEMA, job);
      if (errs.length) throw new JobValidationError(errs);
    } else {
      checkId("job.id", job.id);
    }
    const reply = (await this.script(
      "enqueue",
      [this.key("jobs"), this.key("job", job.id)],
      [JSON.stringify(job), String(this.ttl)],
    )) as [string, string];
    if (reply[0] === "added") return new JobHandle(this, job.id, true, reply[1], null);
    return new JobHandle(this, job.id, false, null, reply[1]);
  }

  /** A handle on a job enqueued earlier (by anyone), e.g. after a restart of the producer. */
  job(id: string): JobHandle {
    checkId("job id", id);
    return new JobHandle(this, id, false, null, null);
  }

  /** The thread's sandbox ({p}:thread:<id>), or null when the thread is unknown. */
  async thread(id: string): Promise<ThreadState | null> {
    checkId("thread id", id);
    const h = await this.redis.hgetall(this.key("thread", id));
    if (!Object.keys(h).length) return null;
    const t: ThreadState = {};
    if (h.organization !== undefined) t.organization = h.organization;
    if (h.project !== undefined) t.project = h.project;
    if (h.provider) t.provider = h.provider;
    if (h.sandbox_id) t.sandboxId = h.sandbox_id;
    if (h.state) t.state = h.state;
    if (h.snapshot) {
      try {
        t.snapshot = JSON.parse(h.snapshot) as SnapshotRef;
      } catch {
        /* not JSON: leave it out rather than fail the whole read */
      }
    }
    if (h.updated_at) t.updatedAt = Number(h.updated_at);
    if (h.last_job) t.lastJob = h.last_job;
    if (h.lock_entry) t.lock = { entry: h.lock_entry, job: h.lock_job ?? "" };
    return t;
  }

  /** Queue depth and health, as `sandboxctl stats`. */
  async stats(): Promise<QueueStats> {
    const rows = await this.redis
      .pipeline()
      .xlen(this.key("jobs"))
      .xinfo("GROUPS", this.key("jobs"))
      .zcard(this.key("delayed"))
      .zrange(this.key("delayed"), 0, 0, "WITHSCORES")
      .xlen(this.key("dead"))
      .xlen(this.key("results"))
      .exec();
    if (!rows) throw new Error("stats: the pipeline was discarded");
    const val = (i: number): unknown => {
      const [err, v] = rows[i] ?? [null, null];
      if (err) {
        if (/no such key/i.test(err.message)) return null; /* stream not created yet */
        throw err;
      }
      return v;
    };
    const st: QueueStats = {
      length: Number(val(0) ?? 0),
      lag: 0,
      pending: 0,
      consumers: 0,
      delayed: Number(val(2) ?? 0),
      nextDelayedAt: null,
      dead: Number(val(4) ?? 0),
      results: Number(val(5) ?? 0),
    };
    for (const g of (val(1) as unknown[][] | null) ?? []) {
      const m = new Map<string, unknown>();
      for (let i = 0; i + 1 < g.length; i += 2) m.set(String(g[i]), g[i + 1]);
      if (m.get("name") !== GROUP) continue;
      st.pending = Number(m.get("pending") ?? 0);
      st.consumers = Number(m.get("consumers") ?? 0);
      const lag = m.get("lag");
      st.lag = lag === null || lag === undefined ? null : Number(lag);
    }
    const next = val(3) as string[] | null;
    if (next && next.length >= 2) st.nextDelayedAt = Number(next[1]);
    return st;
  }

  /** Closes the blocking connections, and the main one when the queue created it. */
  async close(): Promise<void> {
    for (const c of this.blocking) c.disconnect();
    this.blocking.clear();
    if (this.owned) await this.redis.quit().catch(() => this.redis.disconnect());
  }

  /** EVALSHA, then EVAL when the server does not have the script yet (NOSCRIPT). */
  async script(name: string, keys: string[], args: string[]): Promise<unknown> {
    const s = SCRIPTS[name];
    if (!s) throw new Error(`no script "${name}"`);
    try {
      return await this.redis.evalsha(s.sha, keys.length, ...keys, ...args);
    } catch (e) {
      if (!(e instanceof Error) || !e.message.startsWith("NOSCRIPT")) throw e;
      return await this.redis.eval(s.source, keys.length, ...keys, ...args);
    }
  }

  /** @internal A connection for blocking reads; release with release(). */
  acquireBlocking(): Redis {
    /* Commands wait through a reconnect instead of failing after a few retries. */
    const c = this.redis.duplicate({ maxRetriesPerRequest: null, enableOfflineQueue: true });
    c.on("error", () => {
      /* reconnects on its own; commands report their own errors */
    });
    this.blocking.add(c);
    return c;
  }

  /** @internal */
  releaseBlocking(c: Redis): void {
    this.blocking.delete(c);
    c.disconnect();
  }
}

export class JobHandle {
  /**
   * @param created true when this enqueue added the job; false when the id already existed
   * @param entry the {p}:jobs entry id when created
   * @param existing the phase or final status found when the id already existed
   */
  constructor(
    private readonly queue: SandboxQueue,
    readonly id: string,
    readonly created: boolean,
    readonly entry: string | null,
    readonly existing: string | null,
  ) {}

  /**
   * The job's progress events, in order, ending after `done`. Survives Redis reconnects and
   * restarts without gaps or repeats (it resumes after the last entry it yielded). Ends
   * without `done` when the job is unknown (job hash and events stream both gone).
   */
  events(opts: EventsOptions = {}): AsyncGenerator<JobEvent, void, undefined> {
    return follow(this.queue, this.id, opts);
  }

  /**
   * Waits for the final result. Resolves with status "expired" when the job hash does not
   * exist (its TTL passed). Rejects with TimeoutError after timeoutMs, or with the signal's
   * reason when aborted; neither affects the job (see cancel()).
   */
  async result(opts: ResultOptions = {}): Promise<Result> {
    const q = this.queue;
    const { signal } = opts;
    const deadline = opts.timeoutMs === undefined ? Infinity : Date.now() + opts.timeoutMs;
    const jobKey = q.key("job", this.id);
    const evKey = q.key("events", this.id);
    let conn: Redis | null = null;
    const onAbort = () => conn?.disconnect();
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      let last: string | null = null;
      for (;;) {
        if (signal?.aborted) throw abortError(signal);
        try {
          const [status, result, phase] = await q.redis.hmget(jobKey, "status", "result", "phase");
          if (status) return JSON.parse(result ?? "{}") as WorkerResult;
          if (!phase) return { id: this.id, status: "expired" };
          const left = deadline - Date.now();
          if (left <= 0) break;
          conn ??= q.acquireBlocking();
          last ??= await lastEntry(conn, evKey);
          /* Wake up on any new event of the job (done comes with the result), or in 1 s. */
          const r = (await conn.xread(
            "COUNT",
            1000,
            "BLOCK",
            Math.max(1, Math.min(left, 1000)),
            "STREAMS",
            evKey,
            last,
          )) as [string, [string, string[]][]][] | null;
          const rows = r?.[0]?.[1];
          if (rows?.length) last = rows[rows.length - 1]![0];
        } catch (e) {
          if (signal?.aborted) throw abortError(signal);
          if (isReplyError(e) || e instanceof SyntaxError) throw e;
          if (conn && conn.status === "end") {
            q.releaseBlocking(conn);
            conn = null;
          }
          await sleep(Math.min(RETRY_MS, Math.max(0, deadline - Date.now())), signal);
        }
        if (Date.now() >= deadline) break;
      }
      throw new TimeoutError(`job ${this.id}: no result within ${opts.timeoutMs} ms`);
    } finally {
      signal?.removeEventListener("abort", onAbort);
      if (conn) q.releaseBlocking(conn);
    }
  }

  /**
   * Asks the worker to cancel the job (SET {p}:cancel:<id> with a TTL). A queued job is
   * cancelled before it runs; a running one within WORKER_LEASE_MS/3. Returns false, setting
   * nothing, when the job already has a final status.
   */
  async cancel(opts: { ttlS?: number } = {}): Promise<boolean> {
    const q = this.queue;
    if (await q.redis.hget(q.key("job", this.id), "status")) return false;
    await q.redis.set(q.key("cancel", this.id), "1", "EX", opts.ttlS ?? DEFAULT_JOB_TTL_S);
    return true;
  }

  /** The raw job hash ({p}:job:<id>), or null when it does not exist. */
  async state(): Promise<Record<string, string> | null> {
    const h = await this.queue.redis.hgetall(this.queue.key("job", this.id));
    return Object.keys(h).length ? h : null;
  }
}

/* ---- events ---- */

function fieldMap(fields: Buffer[]): Map<string, Buffer> {
  const m = new Map<string, Buffer>();
  for (let i = 0; i + 1 < fields.length; i += 2) m.set(fields[i]!.toString(), fields[i + 1]!);
  return m;
}

/** Decodes one stream entry. Output bytes go through a streaming UTF-8 decoder per step and
 * stream, so a character split across chunks comes out whole. Unknown types give null. */
function decode(
  entry: string,
  f: Map<string, Buffer>,
  decoders: Map<string, TextDecoder>,
): JobEvent | null {
  const str = (k: string) => f.get(k)?.toString() ?? "";
  /* Typed members from the "event" field; older workers wrote only flat string fields. */
  let t: Record<string, unknown>;
  const ev = f.get("event");
  if (ev) {
    t = JSON.parse(ev.toString()) as Record<string, unknown>;
  } else {
    t = {};
    for (const [k, v] of f) if (k !== "data") t[k] = v.toString();
    if (typeof t.step === "string") t.step = Number(t.step);
    if (typeof t.exit_code === "string") t.exit_code = Number(t.exit_code);
    if (typeof t.resumed === "string") t.resumed = t.resumed === "true";
  }
  const type = str("type");
  switch (type) {
    case "started":
      return { type, entry, sandbox: String(t.sandbox), resumed: t.resumed === true };
    case "step_started":
      return {
        type,
        entry,
        step: Number(t.step),
        name: String(t.name),
        kind: t.kind as Extract<JobEvent, { type: "step_started" }>["kind"],
      };
    case "output": {
      const stream = t.stream === "stderr" ? "stderr" : "stdout";
      const k = `${String(t.step)}/${stream}`;
      let d = decoders.get(k);
      if (!d) decoders.set(k, (d = new TextDecoder("utf-8")));
      const bytes = f.get("data") ?? Buffer.alloc(0);
      return { type, entry, step: Number(t.step), stream, data: d.decode(bytes, { stream: true }), bytes };
    }
    case "step_finished": {
      for (const s of ["stdout", "stderr"]) decoders.delete(`${String(t.step)}/${s}`);
      const e: JobEvent = {
        type,
        entry,
        step: Number(t.step),
        name: String(t.name),
        status: t.status as Extract<JobEvent, { type: "step_finished" }>["status"],
      };
      if (typeof t.exit_code === "number") e.exit_code = t.exit_code;
      return e;
    }
    case "retry": {
      const result = JSON.parse(str("result")) as WorkerResult<"retrying">;
      const reason = result.error ? `${result.error.code}: ${result.error.message}` : "unknown";
      return { type, entry, reason, result };
    }
    case "done": {
      const result = JSON.parse(str("result")) as WorkerResult;
      return { type, entry, status: str("status") as FinalStatus, result };
    }
    default:
      return null;
  }
}

async function* follow(
  q: SandboxQueue,
  id: string,
  opts: EventsOptions,
): AsyncGenerator<JobEvent, void, undefined> {
  const { signal } = opts;
  const evKey = q.key("events", id);
  const jobKey = q.key("job", id);
  const block = Math.max(1, opts.blockMs ?? 2000);
  const decoders = new Map<string, TextDecoder>();
  let conn = q.acquireBlocking();
  const onAbort = () => conn.disconnect();
  signal?.addEventListener("abort", onAbort, { once: true });
  let last: string | null =
    opts.from === undefined || opts.from === "start" ? "0-0" : opts.from === "now" ? null : opts.from;
  /* After the job is final and a read found nothing more, the stream is drained. */
  let final: { status: string; result: string } | null = null;
  try {
    for (;;) {
      if (signal?.aborted) throw abortError(signal);
      let rows: RawEntry[] | undefined;
      try {
        last ??= await lastEntry(q.redis, evKey);
        const r: [Buffer, RawEntry[]][] | null = final
          ? await conn.xreadBuffer("COUNT", 500, "STREAMS", evKey, last)
          : await conn.xreadBuffer("COUNT", 500, "BLOCK", block, "STREAMS", evKey, last);
        rows = r?.[0]?.[1];
      } catch (e) {
        if (signal?.aborted) throw abortError(signal);
        if (isReplyError(e)) throw e;
        if (conn.status === "end") {
          /* closed under us (e.g. by close()): take a fresh one */
          q.releaseBlocking(conn);
          conn = q.acquireBlocking();
        }
        await sleep(RETRY_MS, signal);
        continue;
      }
      if (rows?.length) {
        for (const [eid, fields] of rows) {
          const entry = eid.toString();
          last = entry;
          const ev = decode(entry, fieldMap(fields), decoders);
          if (!ev) continue;
          yield ev;
          if (ev.type === "done") return;
        }
        continue;
      }
      if (final) {
        /* Final in the job hash but no done event left (the stream expired or was trimmed). */
        const result = JSON.parse(final.result) as WorkerResult;
        yield { type: "done", entry: "", status: final.status as FinalStatus, result };
        return;
      }
      /* Nothing new within blockMs: is the job over, or unknown? */
      try {
        const [status, result, phase] = await q.redis.hmget(jobKey, "status", "result", "phase");
        if (status) final = { status, result: result ?? "{}" };
        else if (!phase && !(await q.redis.exists(evKey))) return;
      } catch (e) {
        if (isReplyError(e)) throw e;
        await sleep(RETRY_MS, signal);
      }
    }
  } finally {
    signal?.removeEventListener("abort", onAbort);
    q.releaseBlocking(conn);
  }
}
