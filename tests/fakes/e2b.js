#!/usr/bin/env node
// Strict fake of E2B for the integration tests: the control plane (api.e2b.app, OpenAPI
// spec/openapi.yml) and each sandbox's envd (HTTP /files, /health and the Connect-JSON
// process.Process service), in one Node process on 127.0.0.1. Its fidelity is checked by
// e2b_conformance.mjs, which drives the official npm `e2b` SDK against it.
//
// Usage:
//   node e2b.js --root DIR [--port 0] [--api-key K] [--domain D] [--debug-port N]
//               [--envd-version V] [--max-running N] [--templates a,b]
// Prints one JSON line once listening:
//   {"port":P,"api_url":"http://127.0.0.1:P","sandbox_url":"http://127.0.0.1:P",
//    "domain":D,"api_key":K,"envd_port":49983,"debug_port":Q|null,"root":DIR}
// Stops on SIGTERM/SIGINT or when stdin closes (killing every sandbox process it started).
//
// Routing on the main port:
//   - control plane: any request without the envd markers below; X-API-Key must equal K
//     (default "e2b_fake_key"), else 401 {"code":401,"message":...}.
//   - envd: Host "49983-<sandboxID>.<anything>" or headers E2b-Sandbox-Id/E2b-Sandbox-Port
//     (what the SDK sends to https://sandbox.<domain>). A port other than 49983 answers
//     502 "port is not open". An unknown, killed or paused sandbox answers 502
//     {"sandboxId":...,"message":"The sandbox was not found","code":502}, as E2B's edge
//     proxy does (the SDK's isRunning() reads 502 as "not running").
//   - --debug-port N (0: any free port) serves one extra envd for the sandbox
//     "debug_sandbox_id" without access token: what the SDK reaches with E2B_DEBUG=true
//     (it then skips the control plane and uses http://localhost:49983; point it here with
//     E2B_SANDBOX_URL=http://127.0.0.1:N).
//
// envd serves GET /health, GET /envs, GET|POST /files (octet-stream or multipart; gzip
// Content-Encoding on upload, gzip answer when Accept-Encoding asks for it), the Connect
// RPCs process.Process/{Start,Connect} (server streams, application/connect+json) and
// {List,SendSignal,SendInput,CloseStdin}, filesystem.Filesystem/{Stat,ListDir,MakeDir,
// Move,Remove} (unary, application/json). PTYs and directory watches are unimplemented.
//
// Filesystem mapping: sandbox <id> owns the directory DIR/<id>/, which stands for the
// sandbox's "/". Every sandbox path used by the files API and as a command's cwd maps
// into it: "/home/user/a" -> DIR/<id>/home/user/a; relative paths and "~" resolve against
// the user's home (/home/user for "user", the default, /root for "root"). Commands run
// on the host (no chroot): cwd and HOME point into the sandbox directory, but
// absolute paths inside a command line are NOT rewritten; E2B_FAKE_ROOT=DIR/<id> is in
// the environment for commands that need them. The environment is PATH, HOME, USER,
// LOGNAME, E2B_SANDBOX=true, E2B_SANDBOX_ID, E2B_FAKE_ROOT, the sandbox's envVars and the
// request's envs, which cannot replace E2B_FAKE_ROOT (nothing else of the fake's own
// environment leaks in).
//
// Processes mirror envd: the command runs in its own process group; a client that
// disconnects from Start does not stop it; Connect re-attaches and streams a start event,
// then output produced FROM THEN ON, then the end event (envd fans output out to the
// streams attached at that moment and drops it when none is: output produced while
// detached is not replayed). A finished process is forgotten at once (Connect/SendSignal
// answer not_found). Connect-Timeout-Ms on Start ends that stream with deadline_exceeded
// and SIGKILLs the process group. SendSignal signals the whole group (envd signals the
// process itself; the group is what a test wants to be gone). Keepalive events follow the
// request's Keepalive-Ping-Interval (seconds, default 90), reset by every data event.
// Back-pressure: while an attached stream does not drain, the command's pipes are not read.
// Pausing SIGSTOPs every host process of the sandbox (found by E2B_FAKE_ROOT in its
// environment, descendants included) and cuts every open envd connection (the VM is
// snapshotted); resuming SIGCONTs them; pause with {"memory":false} or a kill SIGKILLs them.
//
// Lifecycle: a running sandbox whose TTL (timeout seconds) expires is paused when created
// with autoPause true (onTimeout "pause"), else killed. Killing removes DIR/<id>. With
// autoResume enabled, envd traffic to a sandbox paused with its memory resumes it (for its
// creation timeout) instead of answering 502.
//
// Test hooks (no API key needed):
//   POST /_fake/fail   {"status":503,"error_code":"sandbox_capacity_unavailable",
//                       "message":"...","count":2,"retryAfter":1,"op":"create"}
//        the next `count` control-plane requests of kind `op` (create, connect, resume,
//        pause, kill, get, list, timeout, refresh, any; default create) answer that error, with
//        Retry-After when retryAfter is given.
//   POST /_fake/limits {"maxRunning":N}  E2B's concurrency limit (0: none, the default;
//                                   also --max-running): create/resume beyond it is 429
//   GET  /_fake/sandboxes           state of every sandbox (also killed ids, processes,
//                                   bounded output tails of each process)
//   POST /_fake/sandboxes/<id>/forget   drop the sandbox as if E2B had lost it (404 after)
//   POST /_fake/sandboxes/<id>/expire   its TTL expires now (pause or kill as configured)
//   POST /_fake/sandboxes/<id>/drop     cut its open envd connections (processes go on)
//   GET  /_fake/log                 last requests: method, path, status, sandbox and a few
//                                   headers (credentials only as "(present)")
'use strict';

const http = require('http');
const fs = require('fs');
const path = require('path');
const crypto = require('crypto');
const { spawn } = require('child_process');
const zlib = require('zlib');

const ENVD_PORT = 49983;
const DEBUG_SANDBOX_ID = 'debug_sandbox_id';
const DEFAULT_KEEPALIVE_S = 90;
const TAIL_MAX = 64 * 1024; // bytes of each stream's tail kept for /_fake inspection
const LOG_MAX = 1000;

// ---- arguments ----

function parseArgs(argv) {
  const opts = {
    port: 0,
    root: null,
    apiKey: 'e2b_fake_key',
    domain: 'e2b.local',
    debugPort: null,
    envdVersion: '0.5.7',
    maxRunning: 0,
    templates: null, // null: any template exists
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = argv[i + 1];
    switch (a) {
      case '--port': opts.port = Number(v); i++; break;
      case '--root': opts.root = v; i++; break;
      case '--api-key': opts.apiKey = v; i++; break;
      case '--domain': opts.domain = v; i++; break;
      case '--debug-port': opts.debugPort = Number(v); i++; break;
      case '--envd-version': opts.envdVersion = v; i++; break;
      case '--max-running': opts.maxRunning = Number(v); i++; break;
      case '--templates': opts.templates = v.split(',').filter(Boolean); i++; break;
      default:
        usage(`unknown argument ${a}`);
    }
  }
  if (!opts.root) usage('--root is required');
  if (!Number.isInteger(opts.maxRunning) || opts.maxRunning < 0) usage('--max-running wants an integer');
  if (!Number.isInteger(opts.port) || opts.port < 0) usage('--port wants an integer');
  if (opts.debugPort !== null && (!Number.isInteger(opts.debugPort) || opts.debugPort < 0))
    usage('--debug-port wants an integer');
  return opts;
}

function usage(msg) {
  console.error(`e2b.js: ${msg}`);
  console.error('usage: e2b.js --root DIR [--port 0] [--api-key K] [--domain D] [--debug-port N] [--envd-version V] [--max-running N] [--templates a,b]');
  process.exit(2);
}

const opts = parseArgs(process.argv.slice(2));
fs.mkdirSync(opts.root, { recursive: true });

// ---- state ----

const sandboxes = new Map(); // id -> Sandbox
const killed = []; // ids killed or forgotten, for inspection
const faults = []; // pending injected control-plane errors
const requestLog = [];

function randomId(n) {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789';
  const bytes = crypto.randomBytes(n);
  let s = '';
  for (let i = 0; i < n; i++) s += alphabet[bytes[i] % alphabet.length];
  return s;
}

function logRequest(entry) {
  requestLog.push(entry);
  if (requestLog.length > LOG_MAX) requestLog.shift();
}

function newSandbox(id, fields) {
  const dir = path.join(opts.root, id);
  fs.mkdirSync(path.join(dir, 'home', 'user'), { recursive: true });
  fs.mkdirSync(path.join(dir, 'root'), { recursive: true });
  fs.mkdirSync(path.join(dir, 'tmp'), { recursive: true });
  const sb = Object.assign(
    {
      id,
      dir,
      templateID: 'base',
      alias: undefined,
      clientID: '6532622b',
      envdVersion: opts.envdVersion,
      secure: true,
      token: crypto.randomBytes(16).toString('hex'),
      metadata: {},
      envVars: {},
      autoPause: false,
      autoPauseMemory: true,
      autoResume: false,
      timeoutS: 300, // creation timeout, also the TTL of an auto-resume
      memorySnapshot: false, // the last pause kept the memory (processes)
      allowInternetAccess: undefined,
      network: undefined,
      startedAt: Date.now(),
      endAt: Date.now() + 300 * 1000,
      state: 'running',
      debug: false,
      procs: new Map(), // pid -> Proc
      active: new Set(), // in-flight envd responses, their connections cut on pause/kill
      pauses: 0,
      resumes: 0,
    },
    fields,
  );
  sandboxes.set(id, sb);
  return sb;
}

// ---- small HTTP helpers ----

function readBody(req, limit = 64 * 1024 * 1024) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', c => {
      size += c.length;
      if (size > limit) {
        reject(new Error('request body too large'));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function sendJson(res, status, obj, headers = {}) {
  const body = obj === undefined ? '' : JSON.stringify(obj);
  res.writeHead(status, Object.assign({ 'Content-Type': 'application/json' }, headers));
  res.end(body);
}

function sendEmpty(res, status) {
  res.writeHead(status);
  res.end();
}

function apiError(res, status, message, extra = {}) {
  sendJson(res, status, Object.assign({ code: status, message }, extra.body || {}), extra.headers);
}

// ---- control plane ----

class BadRequest extends Error {}

function parseJsonBody(buf, optional) {
  if (buf.length === 0) {
    if (optional) return {};
    throw new BadRequest('Error when parsing request: request body is empty');
  }
  let v;
  try {
    v = JSON.parse(buf.toString('utf8'));
  } catch (e) {
    throw new BadRequest(`Error when parsing request: ${e.message}`);
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v))
    throw new BadRequest('Error when parsing request: body must be a JSON object');
  return v;
}

function checkType(obj, key, type, { required = false, min, max } = {}) {
  const v = obj[key];
  if (v === undefined || v === null) {
    if (required) throw new BadRequest(`Error when parsing request: property "${key}" is missing`);
    return undefined;
  }
  switch (type) {
    case 'string':
      if (typeof v !== 'string') throw new BadRequest(`Error when parsing request: "${key}" must be a string`);
      break;
    case 'bool':
      if (typeof v !== 'boolean') throw new BadRequest(`Error when parsing request: "${key}" must be a boolean`);
      break;
    case 'int32':
      if (!Number.isInteger(v) || v < -2147483648 || v > 2147483647)
        throw new BadRequest(`Error when parsing request: "${key}" must be an int32`);
      if (min !== undefined && v < min)
        throw new BadRequest(`Error when parsing request: "${key}" must be at least ${min}`);
      if (max !== undefined && v > max)
        throw new BadRequest(`Error when parsing request: "${key}" must be at most ${max}`);
      break;
    case 'stringMap':
      if (typeof v !== 'object' || Array.isArray(v) || Object.values(v).some(x => typeof x !== 'string'))
        throw new BadRequest(`Error when parsing request: "${key}" must be an object of strings`);
      break;
    case 'object':
      if (typeof v !== 'object' || Array.isArray(v))
        throw new BadRequest(`Error when parsing request: "${key}" must be an object`);
      break;
    case 'array':
      if (!Array.isArray(v)) throw new BadRequest(`Error when parsing request: "${key}" must be an array`);
      break;
    default:
      throw new Error(`checkType: ${type}`);
  }
  return v;
}

function sandboxJson(sb) {
  const o = {
    templateID: sb.templateID,
    sandboxID: sb.id,
    clientID: sb.clientID,
    envdVersion: sb.envdVersion,
    trafficAccessToken: null,
    domain: opts.domain,
  };
  if (sb.alias) o.alias = sb.alias;
  if (sb.secure) o.envdAccessToken = sb.token;
  return o;
}

function listedJson(sb) {
  const o = {
    templateID: sb.templateID,
    sandboxID: sb.id,
    clientID: sb.clientID,
    startedAt: new Date(sb.startedAt).toISOString(),
    endAt: new Date(sb.endAt).toISOString(),
    cpuCount: 2,
    memoryMB: 512,
    diskSizeMB: 1024,
    envdVersion: sb.envdVersion,
    state: sb.state,
    metadata: sb.metadata,
    volumeMounts: [],
  };
  if (sb.alias) o.alias = sb.alias;
  return o;
}

function detailJson(sb) {
  const o = Object.assign(listedJson(sb), {
    domain: opts.domain,
    lifecycle: { autoResume: sb.autoResume, onTimeout: sb.autoPause ? 'pause' : 'kill' },
  });
  if (sb.secure) o.envdAccessToken = sb.token;
  if (sb.allowInternetAccess !== undefined) o.allowInternetAccess = sb.allowInternetAccess;
  if (sb.network) o.network = sb.network;
  return o;
}

function takeFault(op) {
  for (let i = 0; i < faults.length; i++) {
    const f = faults[i];
    if (f.op !== op && f.op !== 'any') continue;
    f.count--;
    if (f.count <= 0) faults.splice(i, 1);
    return f;
  }
  return null;
}

// E2B's per-team concurrency limit (--max-running): 429 without Retry-After.
function overLimit(res) {
  if (!opts.maxRunning) return false;
  const running = [...sandboxes.values()].filter(s => !s.debug && s.state === 'running').length;
  if (running < opts.maxRunning) return false;
  if (res) apiError(res, 429, `You have reached the maximum number of concurrent E2B sandboxes (${opts.maxRunning}). If you need more, please contact us at 'https://e2b.dev/docs/getting-help'`);
  return true;
}

function notFound(res, id) {
  apiError(res, 404, `sandbox "${id}" doesn't exist or you don't have access to it`);
}

function createSandbox(res, body, v2) {
  const templateID = checkType(body, 'templateID', 'string', { required: true });
  if (templateID === '') throw new BadRequest('Error when parsing request: "templateID" must not be empty');
  const timeout = checkType(body, 'timeout', 'int32', { min: 0 });
  const autoPause = checkType(body, 'autoPause', 'bool');
  const autoPauseMemory = checkType(body, 'autoPauseMemory', 'bool');
  const autoResume = checkType(body, 'autoResume', 'object');
  if (autoResume !== undefined) checkType(autoResume, 'enabled', 'bool', { required: true });
  const secure = v2 ? undefined : checkType(body, 'secure', 'bool');
  const allowInternet = checkType(body, 'allow_internet_access', 'bool');
  const metadata = checkType(body, 'metadata', 'stringMap');
  const envVars = checkType(body, 'envVars', 'stringMap');
  const network = checkType(body, 'network', 'object');
  checkType(body, 'volumeMounts', 'array');
  if (autoResume && autoResume.enabled && !autoPause)
    throw new BadRequest('autoResume can only be enabled when autoPause is true');
  if (opts.templates && !opts.templates.includes(templateID))
    return apiError(res, 404, `template '${templateID}' not found`);
  if (overLimit(res)) return undefined;
  const now = Date.now();
  const ttl = timeout !== undefined ? timeout : v2 ? 300 : 15;
  const sb = newSandbox(randomId(20), {
    templateID,
    alias: /^[a-z0-9][a-z0-9_/-]*$/.test(templateID) ? templateID : undefined,
    secure: v2 ? true : secure === true,
    metadata: metadata || {},
    envVars: envVars || {},
    autoPause: autoPause === true,
    autoPauseMemory: autoPauseMemory !== false,
    autoResume: !!(autoResume && autoResume.enabled),
    allowInternetAccess: allowInternet,
    network,
    startedAt: now,
    endAt: now + ttl * 1000,
    timeoutS: ttl,
  });
  return sendJson(res, 201, sandboxJson(sb));
}

// Every host process started in the sandbox, whatever its group or parent: the ones whose
// environment carries the sandbox's E2B_FAKE_ROOT (a VM's pause or kill reaches them all).
function sandboxPids(sb) {
  const mark = Buffer.from(`\0E2B_FAKE_ROOT=${sb.dir}\0`);
  const pids = [];
  let names;
  try {
    names = fs.readdirSync('/proc');
  } catch (e) {
    return pids;
  }
  for (const name of names) {
    if (!/^[0-9]+$/.test(name)) continue;
    try {
      const env = Buffer.concat([Buffer.from([0]), fs.readFileSync(`/proc/${name}/environ`)]);
      if (env.includes(mark)) pids.push(Number(name));
    } catch (e) {
      // gone, or not ours to read
    }
  }
  return pids;
}

function signalSandbox(sb, sig) {
  for (const p of sb.procs.values()) signalGroup(p, sig);
  for (const pid of sandboxPids(sb)) {
    try {
      process.kill(pid, sig);
    } catch (e) {
      // exited meanwhile
    }
  }
}

function pauseSandbox(sb, keepMemory) {
  sb.state = 'paused';
  sb.memorySnapshot = keepMemory;
  sb.pauses++;
  cutConnections(sb);
  if (!keepMemory) return dropProcesses(sb);
  signalSandbox(sb, 'SIGSTOP');
  for (const p of sb.procs.values()) p.stopped = true;
  return undefined;
}

// Kills every command of the sandbox and forgets them at once (a cold boot or a kill
// leaves no process table behind; their exits come later and go nowhere).
function dropProcesses(sb) {
  signalSandbox(sb, 'SIGKILL');
  for (const p of sb.procs.values()) p.stopped = false;
  sb.procs.clear();
}

function resumeSandbox(sb, timeoutS) {
  sb.state = 'running';
  sb.resumes++;
  sb.endAt = Date.now() + timeoutS * 1000;
  signalSandbox(sb, 'SIGCONT');
  for (const p of sb.procs.values()) p.stopped = false;
}

function killSandbox(sb) {
  cutConnections(sb);
  dropProcesses(sb);
  sandboxes.delete(sb.id);
  killed.push(sb.id);
  fs.rmSync(sb.dir, { recursive: true, force: true });
}

function parseMetadataQuery(q) {
  if (q === null) return null;
  const want = {};
  try {
    for (const [k, v] of new URLSearchParams(q)) want[decodeURIComponent(k)] = decodeURIComponent(v);
  } catch (e) {
    throw new BadRequest(`Error when parsing metadata query: ${e.message}`);
  }
  return want;
}

function matchesMetadata(sb, want) {
  if (!want) return true;
  return Object.entries(want).every(([k, v]) => sb.metadata[k] === v);
}

function listSandboxesV2(res, url) {
  const q = url.searchParams;
  const want = parseMetadataQuery(q.get('metadata'));
  let states = ['running', 'paused'];
  if (q.getAll('state').length) {
    states = q.getAll('state').flatMap(s => s.split(','));
    for (const s of states)
      if (s !== 'running' && s !== 'paused') throw new BadRequest(`invalid state "${s}"`);
  }
  let limit = 100;
  if (q.has('limit')) {
    limit = Number(q.get('limit'));
    if (!Number.isInteger(limit) || limit < 1 || limit > 100)
      throw new BadRequest('limit must be an integer between 1 and 100');
  }
  const order = q.get('order') || 'desc';
  if (order !== 'asc' && order !== 'desc') throw new BadRequest('order must be asc or desc');
  let after = null;
  if (q.has('startedAfter')) {
    after = Date.parse(q.get('startedAfter'));
    if (Number.isNaN(after)) throw new BadRequest('startedAfter must be an RFC 3339 date-time');
  }
  const template = q.get('template');
  let offset = 0;
  if (q.has('nextToken')) {
    offset = Number(Buffer.from(q.get('nextToken'), 'base64url').toString());
    if (!Number.isInteger(offset) || offset < 0) throw new BadRequest('invalid nextToken');
  }
  const all = [...sandboxes.values()]
    .filter(sb => !sb.debug)
    .filter(sb => states.includes(sb.state))
    .filter(sb => matchesMetadata(sb, want))
    .filter(sb => after === null || sb.startedAt >= after)
    .filter(sb => !template || sb.templateID === template || sb.alias === template)
    .sort((a, b) => (order === 'asc' ? a.startedAt - b.startedAt : b.startedAt - a.startedAt));
  const page = all.slice(offset, offset + limit);
  const headers = {
    'X-Total-Running': String([...sandboxes.values()].filter(s => !s.debug && s.state === 'running').length),
  };
  if (offset + limit < all.length) headers['X-Next-Token'] = Buffer.from(String(offset + limit)).toString('base64url');
  sendJson(res, 200, page.map(listedJson), headers);
}

async function handleControl(req, res, url) {
  const key = req.headers['x-api-key'];
  if (!key || key !== opts.apiKey) {
    req.resume();
    return apiError(res, 401, key ? 'Invalid API key' : 'Missing API key, pass it in the X-API-Key header');
  }
  const p = url.pathname;
  const m = /^\/(v2\/)?sandboxes(?:\/([^/]+)(?:\/([a-z]+))?)?$/.exec(p);
  if (!m) {
    req.resume();
    return apiError(res, 404, `no route for ${req.method} ${p}`);
  }
  const [, v2, id, action] = m;
  const method = req.method;
  let op = null;
  if (!id && method === 'POST') op = 'create';
  else if (!id && method === 'GET') op = 'list';
  else if (id && !action && method === 'GET' && !v2) op = 'get';
  else if (id && !action && method === 'DELETE' && !v2) op = 'kill';
  else if (id && action === 'connect' && method === 'POST') op = 'connect';
  else if (id && !v2 && action === 'pause' && method === 'POST') op = 'pause';
  else if (id && !v2 && action === 'resume' && method === 'POST') op = 'resume';
  else if (id && !v2 && action === 'timeout' && method === 'POST') op = 'timeout';
  else if (id && !v2 && action === 'refreshes' && method === 'POST') op = 'refresh';
  if (!op) {
    req.resume();
    return apiError(res, id && !action ? 405 : 404, `no route for ${method} ${p}`);
  }
  const body = await readBody(req);
  const fault = takeFault(op);
  if (fault) {
    const extra = { body: {} };
    if (fault.error_code) extra.body.error_code = fault.error_code;
    if (fault.retryAfter !== undefined) extra.headers = { 'Retry-After': String(fault.retryAfter) };
    return apiError(res, fault.status, fault.message || `injected ${fault.status}`, extra);
  }
  const sb = id ? sandboxes.get(id) : undefined;
  if (sb && sb.debug) return notFound(res, id);
  switch (op) {
    case 'create':
      return createSandbox(res, parseJsonBody(body, false), !!v2);
    case 'list':
      if (v2) return listSandboxesV2(res, url);
      {
        const want = parseMetadataQuery(url.searchParams.get('metadata'));
        const list = [...sandboxes.values()].filter(s => !s.debug && s.state === 'running' && matchesMetadata(s, want));
        return sendJson(res, 200, list.map(listedJson));
      }
    case 'get':
      if (!sb) return notFound(res, id);
      return sendJson(res, 200, detailJson(sb));
    case 'kill':
      if (!sb) return notFound(res, id);
      killSandbox(sb);
      return sendEmpty(res, 204);
    case 'pause': {
      const b = parseJsonBody(body, true);
      const memory = checkType(b, 'memory', 'bool');
      if (!sb) return notFound(res, id);
      if (sb.state === 'paused') return apiError(res, 409, `Error pausing sandbox - sandbox "${id}" is already paused`);
      pauseSandbox(sb, memory !== false);
      return sendEmpty(res, 204);
    }
    case 'connect': {
      const b = parseJsonBody(body, !!v2);
      const timeout = checkType(b, 'timeout', 'int32', { required: !v2, min: 0 });
      const memory = checkType(b, 'memory', 'bool');
      if (!sb) return notFound(res, id);
      const ttl = timeout !== undefined ? timeout : 300;
      if (sb.state === 'running') {
        sb.endAt = Math.max(sb.endAt, Date.now() + ttl * 1000);
        return sendJson(res, 200, sandboxJson(sb));
      }
      if (overLimit(res)) return undefined;
      if (memory === false) dropProcesses(sb); // cold boot from the disk state
      resumeSandbox(sb, ttl);
      return sendJson(res, 201, sandboxJson(sb));
    }
    case 'resume': {
      const b = parseJsonBody(body, true);
      const timeout = checkType(b, 'timeout', 'int32', { min: 0 });
      const autoPause = checkType(b, 'autoPause', 'bool');
      if (!sb) return notFound(res, id);
      if (sb.state === 'running') return apiError(res, 409, `sandbox "${id}" is already running`);
      if (overLimit(res)) return undefined;
      if (autoPause !== undefined) sb.autoPause = autoPause;
      resumeSandbox(sb, timeout !== undefined ? timeout : 15);
      return sendJson(res, 201, sandboxJson(sb));
    }
    case 'timeout': {
      const b = parseJsonBody(body, false);
      const timeout = checkType(b, 'timeout', 'int32', { required: true, min: 0 });
      if (!sb || sb.state !== 'running') return notFound(res, id);
      sb.endAt = Date.now() + timeout * 1000;
      return sendEmpty(res, 204);
    }
    case 'refresh': {
      const b = parseJsonBody(body, true);
      const duration = checkType(b, 'duration', 'int32', { min: 0, max: 3600 });
      if (!sb || sb.state !== 'running') return notFound(res, id);
      sb.endAt = Math.max(sb.endAt, Date.now() + (duration || 0) * 1000);
      return sendEmpty(res, 204);
    }
    default:
      return apiError(res, 500, 'unreachable');
  }
}

// Sandbox TTLs: an expired running sandbox is paused (autoPause) or killed.
setInterval(() => {
  const now = Date.now();
  for (const sb of [...sandboxes.values()]) {
    if (sb.debug || sb.state !== 'running' || sb.endAt > now) continue;
    if (sb.autoPause) pauseSandbox(sb, sb.autoPauseMemory);
    else killSandbox(sb);
  }
}, 100).unref();

// ---- fake-only hooks ----

async function handleFake(req, res, url) {
  const p = url.pathname;
  const body = await readBody(req);
  if (p === '/_fake/fail' && req.method === 'POST') {
    const b = parseJsonBody(body, false);
    const status = checkType(b, 'status', 'int32', { required: true, min: 400, max: 599 });
    const count = checkType(b, 'count', 'int32', { min: 1 }) || 1;
    const op = checkType(b, 'op', 'string') || 'create';
    const ops = ['create', 'connect', 'resume', 'pause', 'kill', 'get', 'list', 'timeout', 'refresh', 'any'];
    if (!ops.includes(op)) throw new BadRequest(`op must be one of ${ops.join(', ')}`);
    const retryAfter = checkType(b, 'retryAfter', 'int32', { min: 0 });
    faults.push({
      status,
      count,
      op,
      retryAfter,
      error_code: checkType(b, 'error_code', 'string'),
      message: checkType(b, 'message', 'string'),
    });
    return sendEmpty(res, 204);
  }
  if (p === '/_fake/limits' && req.method === 'POST') {
    const b = parseJsonBody(body, false);
    const n = checkType(b, 'maxRunning', 'int32', { required: true, min: 0 });
    opts.maxRunning = n;
    return sendEmpty(res, 204);
  }
  if (p === '/_fake/sandboxes' && req.method === 'GET') {
    const list = [...sandboxes.values()].map(sb => ({
      sandboxID: sb.id,
      state: sb.state,
      debug: sb.debug,
      dir: sb.dir,
      templateID: sb.templateID,
      metadata: sb.metadata,
      secure: sb.secure,
      autoPause: sb.autoPause,
      startedAt: new Date(sb.startedAt).toISOString(),
      endAt: Number.isFinite(sb.endAt) ? new Date(sb.endAt).toISOString() : null,
      pauses: sb.pauses,
      resumes: sb.resumes,
      openRequests: sb.active.size,
      processes: [...sb.procs.values()].map(pr => ({
        pid: pr.pid,
        tag: pr.tag,
        cmd: pr.config.cmd,
        args: pr.config.args,
        attached: pr.subs.size,
        stopped: pr.stopped,
        stdoutTail: pr.tail.stdout.toString('utf8'),
        stderrTail: pr.tail.stderr.toString('utf8'),
        droppedBytes: pr.dropped,
      })),
    }));
    return sendJson(res, 200, { sandboxes: list, killed });
  }
  if (p === '/_fake/log' && req.method === 'GET') return sendJson(res, 200, requestLog);
  const m = /^\/_fake\/sandboxes\/([^/]+)\/(forget|expire|drop)$/.exec(p);
  if (m && req.method === 'POST') {
    const sb = sandboxes.get(m[1]);
    if (!sb) return notFound(res, m[1]);
    if (m[2] === 'forget') killSandbox(sb);
    else if (m[2] === 'expire') sb.endAt = Date.now();
    else cutConnections(sb);
    return sendEmpty(res, 204);
  }
  return apiError(res, 404, `no route for ${req.method} ${p}`);
}

// ---- envd: filesystem mapping ----

function homeOf(user) {
  return user === 'root' ? '/root' : '/home/user';
}

// Sandbox path (absolute, normalised) for what a client sent.
function sandboxPath(p, user) {
  let s = p || '';
  if (s === '~' || s.startsWith('~/')) s = homeOf(user) + s.slice(1);
  if (!s.startsWith('/')) s = path.posix.join(homeOf(user), s);
  return path.posix.normalize(s).replace(/(.)\/$/, '$1');
}

function hostPath(sb, sbPath) {
  return path.join(sb.dir, sbPath);
}

// ---- envd: Connect protocol ----

const CONNECT_HTTP_STATUS = {
  canceled: 499,
  unknown: 500,
  invalid_argument: 400,
  deadline_exceeded: 504,
  not_found: 404,
  already_exists: 409,
  permission_denied: 403,
  resource_exhausted: 429,
  failed_precondition: 400,
  aborted: 409,
  out_of_range: 400,
  unimplemented: 501,
  internal: 500,
  unavailable: 503,
  data_loss: 500,
  unauthenticated: 401,
};

// Every procedure of envd's services (an unknown one is a plain 404, as connect-go's mux
// answers); those the fake does not implement answer Connect `unimplemented`.
const RPC_METHODS = {
  'process.Process': ['List', 'Connect', 'Start', 'Update', 'StreamInput', 'SendInput', 'SendSignal', 'CloseStdin'],
  'filesystem.Filesystem': ['Stat', 'MakeDir', 'Move', 'ListDir', 'Remove', 'WatchDir', 'CreateWatcher', 'GetWatcherEvents', 'RemoveWatcher'],
};

class RpcError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

function envelope(flags, obj) {
  const json = Buffer.from(JSON.stringify(obj));
  const head = Buffer.alloc(5);
  head[0] = flags;
  head.writeUInt32BE(json.length, 1);
  return Buffer.concat([head, json]);
}

function parseEnvelope(buf) {
  if (buf.length < 5) throw new RpcError('invalid_argument', 'request envelope is truncated');
  const flags = buf[0];
  const len = buf.readUInt32BE(1);
  if (flags & 0x01) throw new RpcError('internal', 'compressed request envelopes are not supported');
  if (buf.length < 5 + len) throw new RpcError('invalid_argument', 'request envelope is truncated');
  if (buf.length > 5 + len) throw new RpcError('invalid_argument', 'a server-streaming call takes exactly one message');
  return parseMessage(buf.subarray(5, 5 + len));
}

function parseMessage(buf) {
  let v;
  try {
    v = JSON.parse(buf.toString('utf8') || '{}');
  } catch (e) {
    throw new RpcError('invalid_argument', `unmarshal message: ${e.message}`);
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v))
    throw new RpcError('invalid_argument', 'unmarshal message: not a JSON object');
  return v;
}

// A server stream: 200 application/connect+json, envelopes, one end-stream envelope.
class Stream {
  constructor(req, res) {
    this.res = res;
    this.done = false;
    this.onClose = null;
    res.writeHead(200, { 'Content-Type': 'application/connect+json' });
    res.flushHeaders();
    res.on('close', () => {
      if (!this.done) {
        this.done = true;
        if (this.onClose) this.onClose();
      }
    });
  }

  // false: the client is not keeping up (the caller may wait for the response's 'drain').
  send(msg) {
    if (this.done) return true;
    return this.res.write(envelope(0x00, msg));
  }

  end(err) {
    if (this.done) return;
    this.done = true;
    const trailer = err ? { error: { code: err.code, message: err.message } } : {};
    this.res.end(envelope(0x02, trailer));
  }
}

// ---- envd: processes ----

const GO_SIGNAL_NAMES = {
  SIGHUP: 'hangup',
  SIGINT: 'interrupt',
  SIGQUIT: 'quit',
  SIGILL: 'illegal instruction',
  SIGTRAP: 'trace/breakpoint trap',
  SIGABRT: 'aborted',
  SIGBUS: 'bus error',
  SIGFPE: 'floating point exception',
  SIGKILL: 'killed',
  SIGUSR1: 'user defined signal 1',
  SIGSEGV: 'segmentation fault',
  SIGUSR2: 'user defined signal 2',
  SIGPIPE: 'broken pipe',
  SIGALRM: 'alarm clock',
  SIGTERM: 'terminated',
};

function signalGroup(p, sig) {
  try {
    process.kill(-p.pid, sig);
  } catch (e) {
    // the group is gone already
  }
}

function appendTail(p, which, chunk) {
  const t = Buffer.concat([p.tail[which], chunk]);
  p.tail[which] = t.length > TAIL_MAX ? t.subarray(t.length - TAIL_MAX) : t;
}

function keepaliveInterval(req) {
  const n = Number(req.headers['keepalive-ping-interval']);
  return Number.isInteger(n) && n > 0 ? n : DEFAULT_KEEPALIVE_S;
}

// Attaches a stream to a process: data and end events go to it from now on.
function subscribe(p, stream, req) {
  const sub = { stream, timer: null, intervalS: keepaliveInterval(req), congested: false };
  const arm = () => {
    clearTimeout(sub.timer);
    sub.timer = setTimeout(() => {
      stream.send({ event: { keepalive: {} } });
      arm();
    }, sub.intervalS * 1000);
  };
  sub.arm = arm;
  arm();
  p.subs.add(sub);
  stream.onClose = () => unsubscribe(p, sub);
  return sub;
}

function unsubscribe(p, sub) {
  clearTimeout(sub.timer);
  p.subs.delete(sub);
  if (sub.congested) uncongest(p, sub);
}

// Back-pressure as envd has it (a subscriber's send blocks the fan-out, a full pipe blocks
// the command): while any attached stream is not draining, the pipes are not read.
function congest(p, sub) {
  sub.congested = true;
  p.congested++;
  sub.stream.res.once('drain', () => {
    if (sub.congested) uncongest(p, sub);
  });
  p.child.stdout.pause();
  p.child.stderr.pause();
}

function uncongest(p, sub) {
  sub.congested = false;
  p.congested--;
  if (p.congested === 0 && !p.ended) {
    p.child.stdout.resume();
    p.child.stderr.resume();
  }
}

function emitData(p, which, chunk) {
  appendTail(p, which, chunk);
  if (p.subs.size === 0) {
    p.dropped += chunk.length;
    return;
  }
  p.lastData = Date.now();
  const ev = { event: { data: { [which]: chunk.toString('base64') } } };
  for (const sub of p.subs) {
    if (!sub.stream.send(ev) && !sub.congested) congest(p, sub);
    sub.arm();
  }
}

function finishProcess(p, code, signal) {
  if (p.ended) return;
  p.ended = true;
  clearTimeout(p.deadline);
  const end = {};
  if (code !== null) {
    if (code !== 0) end.exitCode = code;
    end.exited = true;
    end.status = `exit status ${code}`;
    if (code !== 0) end.error = end.status;
  } else {
    end.exitCode = -1;
    end.status = `signal: ${GO_SIGNAL_NAMES[signal] || signal}`;
    end.error = end.status;
  }
  p.endEvent = end;
  if (p.sb.procs.get(p.pid) === p) p.sb.procs.delete(p.pid);
  for (const sub of [...p.subs]) {
    unsubscribe(p, sub);
    sub.stream.send({ event: { end } });
    sub.stream.end(null);
  }
}

function resolveUser(req) {
  const h = req.headers.authorization;
  if (!h) return 'user';
  const m = /^Basic\s+(.+)$/i.exec(h);
  if (!m) throw new RpcError('unauthenticated', 'invalid authorization header');
  const user = Buffer.from(m[1], 'base64').toString('utf8').split(':')[0];
  if (user !== 'user' && user !== 'root') throw new RpcError('unauthenticated', `error looking up user '${user}': unknown user`);
  return user;
}

function validateProcessConfig(cfg) {
  if (!cfg || typeof cfg !== 'object') throw new RpcError('invalid_argument', 'process config is required');
  if (typeof cfg.cmd !== 'string' || cfg.cmd === '') throw new RpcError('invalid_argument', 'process.cmd is required');
  if (cfg.args !== undefined && (!Array.isArray(cfg.args) || cfg.args.some(a => typeof a !== 'string')))
    throw new RpcError('invalid_argument', 'process.args must be a list of strings');
  if (cfg.envs !== undefined && (typeof cfg.envs !== 'object' || Array.isArray(cfg.envs) || Object.values(cfg.envs).some(v => typeof v !== 'string')))
    throw new RpcError('invalid_argument', 'process.envs must be a map of strings');
  if (cfg.cwd !== undefined && typeof cfg.cwd !== 'string') throw new RpcError('invalid_argument', 'process.cwd must be a string');
}

function startProcess(sb, msg, user) {
  const cfg = msg.process;
  validateProcessConfig(cfg);
  if (msg.pty !== undefined && msg.pty !== null) throw new RpcError('unimplemented', 'pty is not supported by this fake');
  if (msg.tag !== undefined && typeof msg.tag !== 'string') throw new RpcError('invalid_argument', 'tag must be a string');
  if (msg.stdin !== undefined && typeof msg.stdin !== 'boolean') throw new RpcError('invalid_argument', 'stdin must be a bool');
  const cwdSb = cfg.cwd ? sandboxPath(cfg.cwd, user) : homeOf(user);
  const cwd = hostPath(sb, cwdSb);
  let st;
  try {
    st = fs.statSync(cwd);
  } catch (e) {
    st = null;
  }
  if (!st) throw new RpcError('invalid_argument', `cwd '${cwdSb}' does not exist`);
  const env = {
    PATH: process.env.PATH || '/usr/local/bin:/usr/bin:/bin',
    HOME: hostPath(sb, homeOf(user)),
    USER: user,
    LOGNAME: user,
    E2B_SANDBOX: 'true',
    E2B_SANDBOX_ID: sb.id,
  };
  Object.assign(env, sb.envVars, cfg.envs || {});
  env.E2B_FAKE_ROOT = sb.dir; // also how the fake finds the sandbox's processes
  const withStdin = msg.stdin !== false;
  // As envd does, a small sh wrapper execs the command: a missing binary is exit 127.
  const child = spawn('/bin/sh', ['-c', 'exec "$@"', '--', cfg.cmd, ...(cfg.args || [])], {
    cwd,
    env,
    detached: true,
    stdio: [withStdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
  });
  if (!child.pid) throw new RpcError('invalid_argument', `error starting process '${cfg.cmd}'`);
  const p = {
    pid: child.pid,
    tag: msg.tag,
    config: { cmd: cfg.cmd, args: cfg.args || [], envs: cfg.envs || {}, cwd: cfg.cwd },
    child,
    sb,
    subs: new Set(),
    tail: { stdout: Buffer.alloc(0), stderr: Buffer.alloc(0) },
    dropped: 0,
    congested: 0, // attached streams not draining
    lastData: 0, // ms, the last output read
    stopped: false,
    ended: false,
    deadline: null,
  };
  if (child.stdin) child.stdin.on('error', () => {});
  child.on('error', e => {
    emitData(p, 'stderr', Buffer.from(`e2b fake: ${e.message}\n`));
    finishProcess(p, 127, null);
  });
  child.stdout.on('data', c => emitData(p, 'stdout', c));
  child.stderr.on('data', c => emitData(p, 'stderr', c));
  let closed = false;
  child.on('close', (code, signal) => {
    closed = true;
    finishProcess(p, code, signal);
  });
  // Like Go's cmd.Wait with pipes: the end does not wait for descendants that keep the
  // pipes open; what the command wrote is delivered first (pipes quiet for 50 ms, or 1 s
  // after the exit when descendants keep writing, and no stream holding the reading back).
  child.on('exit', (code, signal) => {
    const exitedAt = Date.now();
    const t = setInterval(() => {
      if (closed) {
        clearInterval(t);
        return;
      }
      const now = Date.now();
      if (p.congested > 0 || (now - p.lastData < 50 && now - exitedAt < 1000)) return;
      clearInterval(t);
      child.stdout.destroy();
      child.stderr.destroy();
      finishProcess(p, code, signal);
    }, 50);
  });
  sb.procs.set(p.pid, p);
  return p;
}

function findProcess(sb, selector) {
  if (!selector || typeof selector !== 'object') throw new RpcError('invalid_argument', 'process selector is required');
  if (selector.pid !== undefined) {
    const pid = Number(selector.pid);
    const p = sb.procs.get(pid);
    if (!p) throw new RpcError('not_found', `process with pid ${selector.pid} not found`);
    return p;
  }
  if (selector.tag !== undefined) {
    for (const p of sb.procs.values()) if (p.tag === selector.tag) return p;
    throw new RpcError('not_found', `process with tag ${selector.tag} not found`);
  }
  throw new RpcError('invalid_argument', 'process selector needs pid or tag');
}

function parseSignal(s) {
  const names = { SIGNAL_SIGTERM: 'SIGTERM', SIGNAL_SIGKILL: 'SIGKILL', 15: 'SIGTERM', 9: 'SIGKILL' };
  const sig = names[s];
  if (!sig) throw new RpcError('invalid_argument', `invalid signal: ${JSON.stringify(s)}`);
  return sig;
}

function processConfigJson(c) {
  const o = { cmd: c.cmd };
  if (c.args.length) o.args = c.args;
  if (Object.keys(c.envs).length) o.envs = c.envs;
  if (c.cwd !== undefined) o.cwd = c.cwd;
  return o;
}

async function handleStreamingRpc(sb, req, res, method) {
  const ct = (req.headers['content-type'] || '').split(';')[0].trim();
  if (ct !== 'application/connect+json') {
    req.resume();
    res.writeHead(415, { 'Content-Type': 'text/plain' });
    return res.end(`unsupported content type ${ct || '(none)'}; this fake speaks application/connect+json`);
  }
  const body = await readBody(req);
  const stream = new Stream(req, res);
  if (method !== 'Start' && method !== 'Connect')
    return stream.end(new RpcError('unimplemented', `${method} is not implemented by this fake`));
  let msg;
  let user;
  try {
    msg = parseEnvelope(body);
    user = resolveUser(req);
  } catch (e) {
    return stream.end(e instanceof RpcError ? e : new RpcError('internal', e.message));
  }
  const timeoutMs = req.headers['connect-timeout-ms'];
  let timeout = 0;
  if (timeoutMs !== undefined) {
    timeout = Number(timeoutMs);
    if (!/^[0-9]{1,10}$/.test(timeoutMs)) return stream.end(new RpcError('invalid_argument', `invalid Connect-Timeout-Ms "${timeoutMs}"`));
  }
  if (method === 'Start') {
    let p;
    try {
      p = startProcess(sb, msg, user);
    } catch (e) {
      return stream.end(e instanceof RpcError ? e : new RpcError('internal', e.message));
    }
    stream.send({ event: { start: { pid: p.pid } } });
    const sub = subscribe(p, stream, req);
    if (timeout > 0) {
      p.deadline = setTimeout(() => {
        unsubscribe(p, sub);
        stream.end(new RpcError('deadline_exceeded', 'context deadline exceeded'));
        signalGroup(p, 'SIGKILL');
      }, timeout);
    }
    return undefined;
  }
  // Connect: re-attach to a running process.
  let p;
  try {
    p = findProcess(sb, msg.process);
  } catch (e) {
    return stream.end(e);
  }
  stream.send({ event: { start: { pid: p.pid } } });
  const sub = subscribe(p, stream, req);
  if (timeout > 0) {
    const t = setTimeout(() => {
      unsubscribe(p, sub);
      stream.end(new RpcError('deadline_exceeded', 'context deadline exceeded'));
    }, timeout);
    res.on('close', () => clearTimeout(t));
  }
  return undefined;
}

async function handleUnaryRpc(sb, req, res, service, method) {
  const ct = (req.headers['content-type'] || '').split(';')[0].trim();
  if (ct !== 'application/json') {
    req.resume();
    res.writeHead(415, { 'Content-Type': 'text/plain' });
    return res.end(`unsupported content type ${ct || '(none)'}; this fake speaks application/json`);
  }
  const body = await readBody(req);
  try {
    const msg = parseMessage(body);
    const user = resolveUser(req);
    const out = unaryCall(sb, service, method, msg, user);
    return sendJson(res, 200, out);
  } catch (e) {
    const err = e instanceof RpcError ? e : new RpcError('internal', e.message);
    return sendJson(res, CONNECT_HTTP_STATUS[err.code] || 500, { code: err.code, message: err.message });
  }
}

function unaryCall(sb, service, method, msg, user) {
  if (service === 'process.Process') {
    switch (method) {
      case 'List':
        return {
          processes: [...sb.procs.values()].map(p => {
            const o = { config: processConfigJson(p.config), pid: p.pid };
            if (p.tag !== undefined) o.tag = p.tag;
            return o;
          }),
        };
      case 'SendSignal': {
        const p = findProcess(sb, msg.process);
        const sig = parseSignal(msg.signal);
        if (p.stopped) signalGroup(p, 'SIGCONT');
        signalGroup(p, sig);
        return {};
      }
      case 'SendInput': {
        const p = findProcess(sb, msg.process);
        const input = msg.input || {};
        if (input.pty !== undefined) throw new RpcError('failed_precondition', 'tty not assigned to process');
        if (!p.child.stdin || p.child.stdin.destroyed || p.stdinClosed)
          throw new RpcError('failed_precondition', 'stdin not enabled or closed');
        p.child.stdin.write(Buffer.from(input.stdin || '', 'base64'));
        return {};
      }
      case 'CloseStdin': {
        const p = findProcess(sb, msg.process);
        if (p.child.stdin && !p.stdinClosed) p.child.stdin.end();
        p.stdinClosed = true;
        return {};
      }
      default:
        throw new RpcError('unimplemented', `process.Process/${method} is not implemented by this fake`);
    }
  }
  if (service === 'filesystem.Filesystem') return filesystemCall(sb, method, msg, user);
  throw new RpcError('unimplemented', `${service}/${method} is not implemented by this fake`);
}

// Go's os.FileMode.String() of an lstat result.
function goPermissions(st) {
  let t = '-';
  if (st.isDirectory()) t = 'd';
  else if (st.isSymbolicLink()) t = 'L';
  else if (st.isFIFO()) t = 'p';
  else if (st.isSocket()) t = 'S';
  else if (st.isCharacterDevice()) t = 'Dc';
  else if (st.isBlockDevice()) t = 'D';
  const rwx = 'rwxrwxrwx';
  let bits = '';
  for (let i = 0; i < 9; i++) bits += st.mode & (1 << (8 - i)) ? rwx[i] : '-';
  return t + bits;
}

// filesystem.EntryInfo as proto3 JSON (zero values omitted, int64 size as a string).
function entryJson(sb, sp, user, full) {
  const hp = hostPath(sb, sp);
  let st;
  try {
    st = fs.lstatSync(hp);
  } catch (e) {
    throw new RpcError('not_found', `file not found: stat ${sp}: no such file or directory`);
  }
  let type = 'FILE_TYPE_UNSPECIFIED';
  if (st.isFile()) type = 'FILE_TYPE_FILE';
  else if (st.isDirectory()) type = 'FILE_TYPE_DIRECTORY';
  else if (st.isSymbolicLink()) type = 'FILE_TYPE_SYMLINK';
  const e = { name: path.posix.basename(sp), type };
  if (!full) return e;
  e.path = sp;
  if (st.size) e.size = String(st.size);
  if (st.mode & 0o777) e.mode = st.mode & 0o777;
  e.permissions = goPermissions(st);
  e.owner = user;
  e.group = user;
  e.modifiedTime = st.mtime.toISOString();
  if (st.isSymbolicLink()) e.symlinkTarget = fs.readlinkSync(hp);
  return e;
}

function filesystemCall(sb, method, msg, user) {
  const want = (k, required = true) => {
    const v = msg[k];
    if (v === undefined ? required : typeof v !== 'string') throw new RpcError('invalid_argument', `${k} must be a string`);
    return v;
  };
  switch (method) {
    case 'Stat': {
      const sp = sandboxPath(want('path'), user);
      return { entry: entryJson(sb, sp, user, true) };
    }
    case 'MakeDir': {
      const sp = sandboxPath(want('path'), user);
      const hp = hostPath(sb, sp);
      if (fs.existsSync(hp)) {
        if (fs.statSync(hp).isDirectory()) throw new RpcError('already_exists', `directory already exists: ${sp}`);
        throw new RpcError('invalid_argument', `path already exists but it is not a directory: ${sp}`);
      }
      fs.mkdirSync(hp, { recursive: true });
      return { entry: { name: path.posix.basename(sp), type: 'FILE_TYPE_DIRECTORY', path: sp } };
    }
    case 'Remove': {
      const sp = sandboxPath(want('path'), user);
      if (sp === '/') throw new RpcError('invalid_argument', 'refusing to remove the sandbox root');
      fs.rmSync(hostPath(sb, sp), { recursive: true, force: true });
      return {};
    }
    case 'Move': {
      const from = sandboxPath(want('source'), user);
      const to = sandboxPath(want('destination'), user);
      if (!fs.existsSync(hostPath(sb, from))) throw new RpcError('not_found', `source file not found: ${from}`);
      fs.mkdirSync(path.dirname(hostPath(sb, to)), { recursive: true });
      fs.renameSync(hostPath(sb, from), hostPath(sb, to));
      return { entry: entryJson(sb, to, user, true) };
    }
    case 'ListDir': {
      const sp = sandboxPath(want('path'), user);
      let depth = msg.depth === undefined ? 1 : Number(msg.depth);
      if (!Number.isInteger(depth) || depth < 0) throw new RpcError('invalid_argument', 'depth must be a uint32');
      if (depth === 0) depth = 1;
      const hp = hostPath(sb, sp);
      let st;
      try {
        st = fs.statSync(hp);
      } catch (e) {
        throw new RpcError('not_found', `path not found: ${sp}`);
      }
      if (!st.isDirectory()) throw new RpcError('invalid_argument', `path is not a directory: ${sp}`);
      const entries = [];
      const walk = (dir, level) => {
        for (const name of fs.readdirSync(hostPath(sb, dir)).sort()) {
          const child = path.posix.join(dir, name);
          entries.push(entryJson(sb, child, user, true));
          const cst = fs.lstatSync(hostPath(sb, child));
          if (cst.isDirectory() && level < depth) walk(child, level + 1);
        }
      };
      walk(sp, 1);
      return { entries };
    }
    default:
      throw new RpcError('unimplemented', `filesystem.Filesystem/${method} is not implemented by this fake`);
  }
}

// ---- envd: HTTP API ----

async function signatureOk(sb, url, op, user) {
  const sig = url.searchParams.get('signature');
  if (!sig) return false;
  const exp = url.searchParams.get('signature_expiration');
  const raw = [url.searchParams.get('path') || '', op, url.searchParams.has('username') ? user : '', sb.token];
  if (exp) raw.push(exp);
  const want = 'v1_' + crypto.createHash('sha256').update(raw.join(':')).digest('base64').replace(/=+$/, '');
  if (want !== sig) return false;
  return !exp || Number(exp) >= Math.floor(Date.now() / 1000);
}

function envdError(res, status, message) {
  sendJson(res, status, { code: status, message });
}

async function handleFiles(sb, req, res, url) {
  const user = url.searchParams.get('username') || 'user';
  if (sb.secure && req.headers['x-access-token'] !== sb.token) {
    const op = req.method === 'GET' ? 'read' : 'write';
    if (req.headers['x-access-token'] || !(await signatureOk(sb, url, op, user))) {
      req.resume();
      return envdError(res, 401, req.headers['x-access-token'] ? 'access token present in header but does not match' : 'missing signature query parameter');
    }
  }
  if (user !== 'user' && user !== 'root') {
    req.resume();
    return envdError(res, 401, `error looking up user '${user}': user: unknown user ${user}`);
  }
  const qpath = url.searchParams.get('path');
  if (req.method === 'GET') {
    req.resume();
    const sp = sandboxPath(qpath, user);
    const hp = hostPath(sb, sp);
    let st;
    try {
      st = fs.statSync(hp);
    } catch (e) {
      return envdError(res, 404, `path '${sp}' does not exist`);
    }
    if (st.isDirectory()) return envdError(res, 400, `path '${sp}' is a directory`);
    const data = fs.readFileSync(hp);
    const headers = {
      'Content-Type': 'application/octet-stream',
      'Content-Disposition': `attachment; filename="${path.posix.basename(sp)}"`,
      Vary: 'Accept-Encoding',
    };
    if (wantsGzip(req.headers['accept-encoding'])) {
      const gz = zlib.gzipSync(data);
      headers['Content-Encoding'] = 'gzip';
      headers['Content-Length'] = gz.length;
      res.writeHead(200, headers);
      return res.end(gz);
    }
    headers['Content-Length'] = data.length;
    res.writeHead(200, headers);
    return res.end(data);
  }
  if (req.method !== 'POST') {
    req.resume();
    return envdError(res, 405, `method ${req.method} not allowed`);
  }
  const ct = req.headers['content-type'] || '';
  let body = await readBody(req, 1024 * 1024 * 1024);
  const enc = (req.headers['content-encoding'] || 'identity').trim().toLowerCase();
  if (enc === 'gzip') {
    try {
      body = zlib.gunzipSync(body);
    } catch (e) {
      return envdError(res, 400, `error decompressing request body: ${e.message}`);
    }
  } else if (enc !== 'identity') {
    return envdError(res, 400, `error decompressing request body: unsupported Content-Encoding: ${enc}`);
  }
  const written = [];
  const write = (sp, data) => {
    const hp = hostPath(sb, sp);
    try {
      if (fs.statSync(hp).isDirectory()) throw new RpcError('dir', `path is a directory: ${sp}`);
    } catch (e) {
      if (e instanceof RpcError) throw e;
    }
    fs.mkdirSync(path.dirname(hp), { recursive: true });
    fs.writeFileSync(hp, data);
    written.push({ path: sp, name: path.posix.basename(sp), type: 'file' });
  };
  try {
    if (/^application\/octet-stream\b/i.test(ct)) {
      if (!qpath) return envdError(res, 400, 'path query parameter is required for raw body upload');
      write(sandboxPath(qpath, user), body);
    } else if (/^multipart\//i.test(ct)) {
      const parts = parseMultipart(ct, body);
      if (parts === null) return envdError(res, 500, 'error parsing multipart form: bad boundary');
      const seen = new Set();
      for (const part of parts) {
        if (part.name !== 'file') continue;
        const sp = sandboxPath(qpath !== null ? qpath : part.filename, user);
        if (seen.has(sp)) return envdError(res, 400, `you cannot upload multiple files to the same path '${sp}' in one upload request, only the first specified file was uploaded`);
        seen.add(sp);
        write(sp, part.data);
      }
    } else {
      return envdError(res, 400, `unsupported content type: ${ct}, expected multipart/form-data or application/octet-stream`);
    }
  } catch (e) {
    if (e instanceof RpcError) return envdError(res, 400, e.message);
    return envdError(res, 500, `error writing file: ${e.message}`);
  }
  return sendJson(res, 200, written);
}

// Accept-Encoding allows gzip (q > 0), as envd serves it then.
function wantsGzip(h) {
  if (!h) return false;
  return h.split(',').some(part => {
    const [name, ...params] = part.trim().toLowerCase().split(';');
    if (name.trim() !== 'gzip') return false;
    const q = params.map(x => x.trim()).find(x => x.startsWith('q='));
    return !q || Number(q.slice(2)) > 0;
  });
}

// Minimal multipart/form-data parser: [{name, filename, data}] or null.
function parseMultipart(ct, body) {
  const m = /boundary=(?:"([^"]+)"|([^;]+))/i.exec(ct);
  if (!m) return null;
  const boundary = Buffer.from(`--${m[1] || m[2]}`);
  const parts = [];
  let pos = body.indexOf(boundary);
  if (pos < 0) return null;
  for (;;) {
    pos += boundary.length;
    if (body.subarray(pos, pos + 2).toString() === '--') break;
    pos += 2; // CRLF after the boundary
    const headEnd = body.indexOf('\r\n\r\n', pos);
    if (headEnd < 0) return null;
    const head = body.subarray(pos, headEnd).toString('utf8');
    const next = body.indexOf(Buffer.concat([Buffer.from('\r\n'), boundary]), headEnd + 4);
    if (next < 0) return null;
    const disp = /content-disposition:([^\r\n]*)/i.exec(head);
    const name = disp && /\bname="([^"]*)"/i.exec(disp[1]);
    const filename = disp && /\bfilename="([^"]*)"/i.exec(disp[1]);
    parts.push({
      name: name ? name[1] : '',
      filename: filename ? filename[1] : '',
      data: body.subarray(headEnd + 4, next),
    });
    pos = next + 2;
  }
  return parts;
}

function proxyNotFound(res, id) {
  sendJson(res, 502, { sandboxId: id, message: 'The sandbox was not found', code: 502 });
}

async function handleEnvd(req, res, url, id, port) {
  const sb = sandboxes.get(id);
  // autoResume: traffic resumes a sandbox paused with its memory, for its creation timeout.
  if (sb && sb.state === 'paused' && sb.autoResume && sb.memorySnapshot && !overLimit(null))
    resumeSandbox(sb, sb.timeoutS);
  if (!sb || sb.state !== 'running') {
    req.resume();
    return proxyNotFound(res, id);
  }
  if (port !== ENVD_PORT) {
    req.resume();
    return sendJson(res, 502, { sandboxId: id, message: 'The sandbox is running but port is not open', port, code: 502 });
  }
  // In-flight requests only: one keep-alive connection may serve several sandboxes.
  sb.active.add(res);
  res.once('close', () => sb.active.delete(res));
  const p = url.pathname;
  if (p === '/health' && req.method === 'GET') {
    req.resume();
    return sendEmpty(res, 204);
  }
  if (p === '/files') return handleFiles(sb, req, res, url);
  if (sb.secure && req.headers['x-access-token'] !== sb.token) {
    req.resume();
    return envdError(res, 401, 'unauthorized access, please provide a valid access token or method signing if supported');
  }
  if (p === '/envs' && req.method === 'GET') {
    req.resume();
    return sendJson(res, 200, sb.envVars);
  }
  const m = /^\/([a-z]+\.[A-Za-z]+)\/([A-Za-z]+)$/.exec(p);
  const known = m && RPC_METHODS[m[1]] && RPC_METHODS[m[1]].includes(m[2]);
  if (known && req.method !== 'POST') {
    req.resume();
    res.writeHead(405, { Allow: 'POST', 'Content-Type': 'text/plain' });
    return res.end('method not allowed');
  }
  if (known) {
    const [, service, method] = m;
    if (['Start', 'Connect', 'StreamInput', 'WatchDir'].includes(method)) return handleStreamingRpc(sb, req, res, method);
    return handleUnaryRpc(sb, req, res, service, method);
  }
  req.resume();
  return envdError(res, 404, `no route for ${req.method} ${p}`);
}

function cutConnections(sb) {
  for (const res of sb.active) if (res.socket) res.socket.destroy();
  sb.active.clear();
}

// ---- servers ----

function envdTarget(req) {
  const host = (req.headers.host || '').toLowerCase();
  const hm = /^([0-9]+)-([a-z0-9_]+)\./.exec(host);
  if (hm) return { port: Number(hm[1]), id: hm[2] };
  const hid = req.headers['e2b-sandbox-id'];
  if (hid) return { port: Number(req.headers['e2b-sandbox-port'] || ENVD_PORT), id: String(hid) };
  return null;
}

function serve(handler) {
  return async (req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    const entry = { t: new Date().toISOString(), method: req.method, path: url.pathname, status: 0 };
    // Headers worth asserting on; credentials only as present/absent.
    const h = {};
    for (const k of ['content-type', 'content-encoding', 'accept-encoding', 'connect-timeout-ms', 'keepalive-ping-interval', 'connect-protocol-version', 'e2b-sandbox-id', 'e2b-sandbox-port', 'retry-after'])
      if (req.headers[k] !== undefined) h[k] = req.headers[k];
    for (const k of ['x-api-key', 'x-access-token', 'authorization']) if (req.headers[k] !== undefined) h[k] = '(present)';
    entry.headers = h;
    res.on('finish', () => {
      entry.status = res.statusCode;
    });
    logRequest(entry);
    try {
      await handler(req, res, url, entry);
    } catch (e) {
      if (res.headersSent) {
        res.destroy();
        return;
      }
      if (e instanceof BadRequest) apiError(res, 400, e.message);
      else apiError(res, 500, `fake internal error: ${e.message}`);
    }
  };
}

const mainServer = http.createServer(
  serve(async (req, res, url, entry) => {
    if (url.pathname.startsWith('/_fake/')) {
      entry.kind = 'fake';
      return handleFake(req, res, url);
    }
    const t = envdTarget(req);
    if (t) {
      entry.kind = 'envd';
      entry.sandboxID = t.id;
      return handleEnvd(req, res, url, t.id, t.port);
    }
    entry.kind = 'api';
    const m = /^\/(?:v2\/)?sandboxes\/([^/]+)/.exec(url.pathname);
    if (m) entry.sandboxID = m[1];
    return handleControl(req, res, url);
  }),
);

let debugServer = null;
if (opts.debugPort !== null) {
  newSandbox(DEBUG_SANDBOX_ID, { debug: true, secure: false, endAt: Infinity, templateID: 'debug' });
  debugServer = http.createServer(
    serve(async (req, res, url, entry) => {
      entry.kind = 'envd';
      entry.sandboxID = DEBUG_SANDBOX_ID;
      return handleEnvd(req, res, url, DEBUG_SANDBOX_ID, ENVD_PORT);
    }),
  );
}

for (const s of [mainServer, debugServer]) {
  if (!s) continue;
  s.on('clientError', (err, socket) => {
    if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
    else socket.destroy();
  });
  s.timeout = 0;
  s.requestTimeout = 0;
  s.keepAliveTimeout = 5000;
}

function listen(server, port) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve(server.address().port));
  });
}

(async () => {
  try {
    const port = await listen(mainServer, opts.port);
    const debugPort = debugServer ? await listen(debugServer, opts.debugPort) : null;
    process.stdout.write(
      JSON.stringify({
        port,
        api_url: `http://127.0.0.1:${port}`,
        sandbox_url: `http://127.0.0.1:${port}`,
        domain: opts.domain,
        api_key: opts.apiKey,
        envd_port: ENVD_PORT,
        debug_port: debugPort,
        root: opts.root,
      }) + '\n',
    );
  } catch (e) {
    console.error(`e2b.js: ${e.message}`);
    process.exit(1);
  }
})();

// No command outlives the fake, however it ends ('exit' also follows an uncaught error).
process.on('exit', () => {
  for (const sb of sandboxes.values()) dropProcesses(sb);
});

function stop() {
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.resume();
