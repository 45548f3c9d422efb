// Test harness: a real redis-server and real sandbox-worker processes (the C scripted_worker
// helper: worker_main with the scripted provider, tests/support/scripted_provider.h).
import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync, mkdtempSync, readFileSync, rmSync, openSync, closeSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { Redis } from "ioredis";

export const pkgDir = resolve(fileURLToPath(import.meta.url), "..", "..");
export const repoRoot = resolve(pkgDir, "..", "..");
const build = process.env.BUILD || "build";
export const workerBin = join(repoRoot, build, "tests", "clients", "scripted_worker");

export function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

async function freePort() {
  const s = createServer();
  s.listen(0, "127.0.0.1");
  await once(s, "listening");
  const { port } = s.address();
  s.close();
  await once(s, "close");
  return port;
}

async function waitExit(child, ms) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const t = setTimeout(() => child.kill("SIGKILL"), ms);
  await once(child, "exit");
  clearTimeout(t);
}

/** A redis-server on a free loopback port, appendonly so a restart keeps the data. */
export class RedisServer {
  static async start() {
    const r = new RedisServer();
    r.dir = mkdtempSync(join(tmpdir(), "sw-node-redis-"));
    r.port = await freePort();
    await r.spawn();
    return r;
  }

  get url() {
    return `redis://127.0.0.1:${this.port}`;
  }

  async spawn() {
    this.proc = spawn(
      "redis-server",
      ["--port", String(this.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
       "--appendfsync", "always", "--dir", this.dir, "--logfile", join(this.dir, "redis.log")],
      { stdio: "ignore" },
    );
    const c = new Redis(this.url, { lazyConnect: true, retryStrategy: () => null });
    c.on("error", () => {});
    for (let i = 0; i < 200; i++) {
      try {
        await c.connect();
        await c.ping();
        c.disconnect();
        return;
      } catch {
        c.disconnect();
        await sleep(50);
      }
    }
    throw new Error("redis-server did not answer PING");
  }

  async stop() {
    if (!this.proc) return;
    this.proc.kill("SIGTERM");
    await waitExit(this.proc, 10000);
    this.proc = null;
  }

  async restart() {
    await this.stop();
    await this.spawn();
  }

  async free() {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A sandbox-worker process with the scripted provider. */
export class Worker {
  static start(redisUrl, prefix, env = {}) {
    const w = new Worker();
    w.dir = mkdtempSync(join(tmpdir(), "sw-node-worker-"));
    w.log = join(w.dir, "worker.log");
    const fd = openSync(w.log, "a");
    w.proc = spawn(workerBin, [], {
      stdio: ["ignore", fd, fd],
      env: {
        PATH: process.env.PATH,
        REDIS_URL: redisUrl,
        SANDBOX_QUEUE_PREFIX: prefix,
        SANDBOX_PROVIDER: "scripted",
        WORKER_NAME: `node-test-${prefix}`,
        WORKER_HTTP_ADDR: "off",
        WORKER_LEASE_MS: "3000",
        LIGHTDASH_LOG_LEVEL: "debug",
        LIGHTDASH_LOG_FORMAT: "plain",
        ...env,
      },
    });
    closeSync(fd);
    return w;
  }

  /** The worker's log, for failure messages. */
  logText() {
    return existsSync(this.log) ? readFileSync(this.log, "utf8") : "";
  }

  /** SIGTERM, wait, remove its files. Throws when the log holds a sanitizer report (the
   * helper built with SANITIZE=address,undefined). */
  async stop() {
    this.proc.kill("SIGTERM");
    await waitExit(this.proc, 15000);
    const log = this.logText();
    rmSync(this.dir, { recursive: true, force: true });
    const m = /(ERROR: (Address|Leak)Sanitizer|runtime error:)[\s\S]{0,3000}/.exec(log);
    if (m) throw new Error(`sanitizer report in the worker log:\n${m[0]}`);
  }
}

let seq = 0;
/** A job with the scripted provider's run directives (";"-separated). */
export function job(id, thread, steps, extra = {}) {
  return {
    id,
    thread,
    feature: "ai-writeback",
    tenant: { organization: "org-1", project: "project-1" },
    steps,
    ...extra,
  };
}

export function uniq(base) {
  seq += 1;
  return `${base}-${process.pid}-${seq}`;
}
