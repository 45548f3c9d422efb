#!/usr/bin/env node
// A strict fake of AWS Lambda MicroVMs (API 2025-09-09, rest-json, SigV4 service "lambda") on
// loopback, for the lambda-microvm provider's tests. Each microVM is a real `sandbox-agent`
// process in its own folder, reached through a per-microVM endpoint proxy that checks
// `X-aws-proxy-auth` the way the AWS ingress does.
//
// Usage: node lambda_microvm.js --agent PATH --root DIR [--port N] [--region R]
//            [--access-key K] [--secret-key S] [--time-scale F] [--agent-token T]
//            [--plain-agent]  (the upstream Node agent in the microVMs instead of --agent)
// Prints one JSON line {"port":N,"endpoint":"http://127.0.0.1:N"} once listening; stops on
// SIGTERM/SIGINT or when stdin closes, killing every agent it started.
//
// Control plane (all under /2025-09-09, SigV4 verified with the key pair given, service
// "lambda", the region given; a bad or missing signature answers 403 as AWS does):
//   POST   /microvms                        RunMicrovm      200 {microvmId,state:"PENDING",endpoint,…}
//   GET    /microvms/{id}                   GetMicrovm      200; 404 ResourceNotFoundException
//   GET    /microvms?maxResults=&nextToken= ListMicrovms    200 {items,nextToken?}
//   POST   /microvms/{id}/suspend           SuspendMicrovm  200 {}; 409 unless RUNNING
//   POST   /microvms/{id}/resume            ResumeMicrovm   200 {}; 409 unless SUSPENDED
//   DELETE /microvms/{id}                   TerminateMicrovm 200 {} (idempotent)
//   POST   /microvms/{id}/auth-token        CreateMicrovmAuthToken 200 {authToken:{"X-aws-proxy-auth":…}}
// Errors: JSON {"__type","message",…} with X-Amzn-ErrorType, statuses as in the service model.
// States: PENDING → RUNNING once the agent answers /ready and the /run hook (body: the raw
// runHookPayload) returned 200; SUSPENDING → SUSPENDED (the /suspend hook, then every
// process of the microVM is stopped with SIGSTOP); RUNNING again on resume (SIGCONT, then the
// /resume hook) or, with autoResumeEnabled, on inbound traffic; TERMINATED on terminate,
// after suspendedDurationSeconds suspended, after maxIdleDurationSeconds without inbound
// traffic (→ SUSPENDED) or after maximumDurationInSeconds. --time-scale multiplies every such
// duration (and token lifetimes), so a test can see a 60 s idle policy act in 0.6 s.
//
// Endpoint proxy (one loopback port per microVM, given as `endpoint`): requires a live token
// minted for that microVM in X-aws-proxy-auth (403 otherwise), routes to the port named by
// X-aws-proxy-port (default 8080: the agent's main port; 9000: its hook port, when the
// token allows it), strips x-aws-proxy-* headers, streams both ways.
//
// Test controls (no signature needed, under /_fake):
//   POST /_fake/fail {"op":"RunMicrovm","status":500,"type":"InsufficientCapacityException","count":1,"retryAfter":1}
//   GET  /_fake/microvms                    every microVM with its state and pids
//   POST /_fake/expire-tokens/{id}          every token of that microVM stops working
//   POST /_fake/forget/{id}                 the microVM is gone (404 from now on)
//   GET  /_fake/requests                    count of control-plane requests per operation
//   POST /_fake/stall-next                  the next RunMicrovm's microVM stays PENDING
'use strict';

const http = require('http');
const fs = require('fs');
const path = require('path');
const crypto = require('crypto');
const { spawn } = require('child_process');

function arg(name, def) {
  const i = process.argv.indexOf('--' + name);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : def;
}
const AGENT = arg('agent');
const ROOT = arg('root');
const PORT = Number(arg('port', '0'));
const REGION = arg('region', 'eu-west-1');
const ACCESS_KEY = arg('access-key', 'AKIDLAMBDAFAKE');
const SECRET_KEY = arg('secret-key', 'lambda-fake-secret');
const SCALE = Number(arg('time-scale', '1'));
const AGENT_TOKEN = arg('agent-token', '');
// The microVMs run the upstream Node agent's plain protocol (tests/fakes/plain_agent.js)
// instead of sandbox-agent; it serves its hooks on its one port.
const PLAIN_AGENT = process.argv.includes('--plain-agent');
if ((!AGENT && !PLAIN_AGENT) || !ROOT) {
  console.error('usage: lambda_microvm.js --agent PATH --root DIR [--port N] ...');
  process.exit(2);
}
const API = '/2025-09-09';

const vms = new Map(); // id -> vm
const byClientToken = new Map(); // clientToken -> {id, body}
const faults = []; // {op, status, type, count, retryAfter, message}
let stallNext = 0; // microVMs to leave PENDING forever (a start that never completes)
const requests = {};

class ApiError extends Error {
  constructor(status, type, message, extra) {
    super(message);
    this.status = status;
    this.type = type;
    this.extra = extra || {};
  }
}
const notFound = (id) =>
  new ApiError(404, 'ResourceNotFoundException', `MicroVM ${id} not found`, {
    resourceId: id,
    resourceType: 'Microvm',
  });
const conflict = (id, msg) =>
  new ApiError(409, 'ConflictException', msg, { resourceId: id, resourceType: 'Microvm' });
const invalid = (msg) => new ApiError(400, 'ValidationException', msg);

function sendJson(res, status, obj, headers) {
  const body = JSON.stringify(obj);
  res.writeHead(status, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(body),
    'x-amzn-RequestId': crypto.randomUUID(),
    ...(headers || {}),
  });
  res.end(body);
}

function sendError(res, e) {
  const headers = { 'X-Amzn-ErrorType': `${e.type}:http://internal.amazon.com/coral/` };
  if (e.retryAfter !== undefined) headers['Retry-After'] = String(e.retryAfter);
  sendJson(res, e.status, { __type: e.type, message: e.message, ...e.extra }, headers);
}

// ---- SigV4 ----

// RFC 3986 encoding as SigV4 wants it (everything but unreserved characters).
const enc = (v) => encodeURIComponent(v).replace(/[!'()*]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase());
const sha256 = (b) => crypto.createHash('sha256').update(b).digest('hex');
const hmac = (k, v) => crypto.createHmac('sha256', k).update(v).digest();

// The signature AWS computes for req (services other than S3: the path as sent is encoded
// once more; the query is sorted; signed headers trimmed, runs of spaces folded).
function signature4(req, body, names, date, region, service, secret) {
  const u = new URL(req.url, 'http://x');
  const rawPath = req.url.split('?')[0];
  const canonPath = rawPath.split('/').map(enc).join('/') || '/';
  const query = [...u.searchParams.entries()]
    .map(([k, v]) => [enc(k), enc(v)])
    .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`)
    .join('&');
  const sorted = [...names].sort();
  const canonHeaders = sorted
    .map((n) => {
      const v = req.headers[n];
      return `${n}:${(Array.isArray(v) ? v.join(',') : String(v)).trim().replace(/\s+/g, ' ')}\n`;
    })
    .join('');
  const payload = req.headers['x-amz-content-sha256'] || sha256(body);
  const creq = [req.method, canonPath, query, canonHeaders, sorted.join(';'), payload].join('\n');
  const scope = `${date}/${region}/${service}/aws4_request`;
  const sts = ['AWS4-HMAC-SHA256', req.headers['x-amz-date'], scope, sha256(creq)].join('\n');
  let k = hmac('AWS4' + secret, date);
  k = hmac(k, region);
  k = hmac(k, service);
  k = hmac(k, 'aws4_request');
  return crypto.createHmac('sha256', k).update(sts).digest('hex');
}

const AUTH_RE =
  /^AWS4-HMAC-SHA256 Credential=([^/]+)\/(\d{8})\/([^/]+)\/([^/]+)\/aws4_request, ?SignedHeaders=([^,]+), ?Signature=([0-9a-f]{64})$/;

function verifySigV4(req, body) {
  const authz = req.headers.authorization;
  if (!authz) throw new ApiError(403, 'AccessDeniedException', 'Missing Authentication Token');
  const m = AUTH_RE.exec(authz);
  if (!m) throw new ApiError(403, 'AccessDeniedException', 'Authorization header is malformed');
  const [, keyId, date, region, service, signedHeaders, signature] = m;
  if (keyId !== ACCESS_KEY)
    throw new ApiError(403, 'AccessDeniedException', 'The security token included in the request is invalid.');
  if (service !== 'lambda')
    throw new ApiError(403, 'AccessDeniedException', `Credential should be scoped to correct service: 'lambda'.`);
  if (region !== REGION)
    throw new ApiError(403, 'AccessDeniedException', `Credential should be scoped to a valid region, not '${region}'.`);
  const amzDate = req.headers['x-amz-date'];
  if (!amzDate || !amzDate.startsWith(date))
    throw new ApiError(403, 'AccessDeniedException', 'X-Amz-Date is missing or does not match the credential scope');
  const t = Date.parse(amzDate.replace(/^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/, '$1-$2-$3T$4:$5:$6Z'));
  if (!(Math.abs(Date.now() - t) < 15 * 60 * 1000))
    throw new ApiError(403, 'AccessDeniedException', 'Signature expired');
  const names = signedHeaders.split(';');
  if (!names.includes('host') || !names.includes('x-amz-date'))
    throw new ApiError(403, 'AccessDeniedException', 'host and x-amz-date must be signed');
  if (req.headers['x-amz-security-token'] && !names.includes('x-amz-security-token'))
    throw new ApiError(403, 'AccessDeniedException', 'x-amz-security-token must be signed');
  for (const name of names) {
    if (req.headers[name] === undefined)
      throw new ApiError(403, 'InvalidSignatureException', `Signed header ${name} is missing.`);
  }
  const want = signature4(req, body, names, date, region, service, SECRET_KEY);
  if (want !== signature)
    throw new ApiError(
      403,
      'InvalidSignatureException',
      'The request signature we calculated does not match the signature you provided.',
    );
}

// ---- microVM processes ----

function freePort() {
  return new Promise((resolve, reject) => {
    const s = require('net').createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
}

// pid and every descendant (walks /proc), so suspend freezes the whole microVM.
function processTree(pid) {
  const children = new Map();
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (!children.has(ppid)) children.set(ppid, []);
      children.get(ppid).push(Number(d));
    } catch (_) {
      /* exited meanwhile */
    }
  }
  const out = [];
  const walk = (p) => {
    out.push(p);
    for (const c of children.get(p) || []) walk(c);
  };
  walk(pid);
  return out;
}

function signalTree(vm, sig) {
  if (!vm.proc || vm.proc.exitCode !== null) return;
  for (const p of processTree(vm.proc.pid)) {
    try {
      process.kill(p, sig);
    } catch (_) {
      /* gone */
    }
  }
}

function localRequest(port, method, p, body, timeoutMs) {
  return new Promise((resolve) => {
    const req = http.request(
      { host: '127.0.0.1', port, method, path: p, headers: body ? { 'Content-Length': Buffer.byteLength(body) } : {} },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode));
      },
    );
    req.setTimeout(timeoutMs || 5000, () => req.destroy());
    req.on('error', () => resolve(0));
    req.end(body || undefined);
  });
}

const hook = (vm, name, body) =>
  localRequest(vm.hookPort, 'POST', `/aws/lambda-microvms/runtime/v1/${name}`, body, 60000);

async function bootVm(vm, payload) {
  vm.agentPort = await freePort();
  vm.hookPort = PLAIN_AGENT ? vm.agentPort : await freePort();
  const env = {
    PATH: process.env.PATH,
    HOME: vm.dir,
    LD_AGENT_BIND: '127.0.0.1',
    LD_AGENT_PORT: String(vm.agentPort),
    LD_AGENT_HOOK_PORT: String(vm.hookPort),
    LIGHTDASH_LOG_LEVEL: 'warn',
    SANDBOX_AGENT_SPOOL_DIR: path.join(vm.dir, '.agent-spool'),
  };
  if (AGENT_TOKEN) env.SANDBOX_AGENT_TOKEN = AGENT_TOKEN;
  vm.proc = PLAIN_AGENT
    ? spawn(process.execPath, [path.join(__dirname, 'plain_agent.js'), String(vm.agentPort)], {
        cwd: vm.dir,
        env,
        stdio: ['pipe', 'ignore', 'inherit'], // it stops when its stdin closes
      })
    : spawn(AGENT, [], { cwd: vm.dir, env, stdio: ['ignore', 'ignore', 'inherit'] });
  vm.proc.on('exit', () => {
    if (vm.state !== 'TERMINATED' && vm.state !== 'TERMINATING') {
      vm.stateReason = 'the microVM stopped unexpectedly';
      setTerminated(vm);
    }
  });
  for (let i = 0; i < 200; i++) {
    if ((await localRequest(vm.agentPort, 'GET', '/ready', null, 1000)) === 200) break;
    await new Promise((r) => setTimeout(r, 25));
  }
  if (vm.state !== 'PENDING') return;
  const st = await hook(vm, 'run', payload || '');
  if (vm.state !== 'PENDING') return;
  if (st !== 200) {
    vm.stateReason = `run hook failed with status ${st}`;
    terminate(vm);
    return;
  }
  vm.state = 'RUNNING';
  vm.lastTraffic = Date.now();
  armTimers(vm);
}

function clearTimers(vm) {
  for (const k of ['idleTimer', 'suspendedTimer']) {
    if (vm[k]) clearTimeout(vm[k]);
    vm[k] = null;
  }
}

function armTimers(vm) {
  clearTimers(vm);
  const ip = vm.idlePolicy;
  if (vm.state === 'RUNNING' && ip) {
    const check = () => {
      vm.idleTimer = null;
      if (vm.state !== 'RUNNING') return;
      const idleMs = ip.maxIdleDurationSeconds * 1000 * SCALE;
      const since = Date.now() - vm.lastTraffic;
      if (vm.activeProxied === 0 && since >= idleMs) suspend(vm).catch(() => {});
      else vm.idleTimer = setTimeout(check, Math.max(10, idleMs - since));
    };
    vm.idleTimer = setTimeout(check, ip.maxIdleDurationSeconds * 1000 * SCALE);
  }
  if (vm.state === 'SUSPENDED' && ip) {
    vm.suspendedTimer = setTimeout(() => terminate(vm), ip.suspendedDurationSeconds * 1000 * SCALE);
  }
}

async function suspend(vm) {
  vm.state = 'SUSPENDING';
  clearTimers(vm);
  await hook(vm, 'suspend', '');
  if (vm.state !== 'SUSPENDING') return;
  signalTree(vm, 'SIGSTOP');
  vm.state = 'SUSPENDED';
  armTimers(vm);
}

async function resume(vm) {
  clearTimers(vm);
  signalTree(vm, 'SIGCONT');
  vm.state = 'RUNNING';
  vm.lastTraffic = Date.now();
  await hook(vm, 'resume', '');
  armTimers(vm);
}

function setTerminated(vm) {
  clearTimers(vm);
  if (vm.lifetimeTimer) clearTimeout(vm.lifetimeTimer);
  vm.state = 'TERMINATED';
  vm.terminatedAt = Date.now() / 1000;
  vm.tokens.clear();
  if (vm.proxy) {
    vm.proxy.close();
    vm.proxy.closeAllConnections && vm.proxy.closeAllConnections();
  }
}

async function terminate(vm) {
  if (vm.state === 'TERMINATED' || vm.state === 'TERMINATING') return;
  const wasSuspended = vm.state === 'SUSPENDED';
  vm.state = 'TERMINATING';
  clearTimers(vm);
  if (wasSuspended) signalTree(vm, 'SIGCONT');
  if (vm.proc && vm.proc.exitCode === null && vm.hookPort) await hook(vm, 'terminate', '');
  signalTree(vm, 'SIGKILL');
  setTerminated(vm);
}

// ---- endpoint proxy ----

function startProxy(vm) {
  return new Promise((resolve) => {
    vm.proxy = http.createServer((req, res) => proxyRequest(vm, req, res));
    vm.proxy.listen(0, '127.0.0.1', () => resolve(vm.proxy.address().port));
  });
}

function tokenAllows(t, port) {
  return t.allowedPorts.some(
    (p) =>
      (p.port !== undefined && p.port === port) ||
      (p.range && port >= p.range.startPort && port <= p.range.endPort) ||
      p.allPorts !== undefined,
  );
}

async function proxyRequest(vm, req, res) {
  const deny = (status, msg) => {
    req.resume();
    sendJson(res, status, { message: msg });
  };
  const tok = req.headers['x-aws-proxy-auth'];
  const t = tok && vm.tokens.get(tok);
  const port = Number(req.headers['x-aws-proxy-port'] || '8080');
  if (!t || t.expires <= Date.now()) return deny(403, 'Forbidden');
  if (!Number.isInteger(port) || !tokenAllows(t, port)) return deny(403, 'Forbidden');
  if (vm.state === 'SUSPENDED' || vm.state === 'SUSPENDING') {
    if (!vm.idlePolicy || !vm.idlePolicy.autoResumeEnabled) return deny(502, 'Bad Gateway');
    while (vm.state === 'SUSPENDING') await new Promise((r) => setTimeout(r, 10));
    if (vm.state === 'SUSPENDED') await resume(vm);
  }
  if (vm.state !== 'RUNNING') return deny(502, 'Bad Gateway');
  const target = port === 8080 ? vm.agentPort : port === 9000 ? vm.hookPort : 0;
  if (!target) return deny(502, 'Bad Gateway');
  const headers = {};
  for (const [k, v] of Object.entries(req.headers)) if (!k.startsWith('x-aws-proxy-')) headers[k] = v;
  vm.activeProxied++;
  vm.lastTraffic = Date.now();
  let done = false;
  const finish = () => {
    if (done) return;
    done = true;
    vm.activeProxied--;
    vm.lastTraffic = Date.now();
  };
  const up = http.request({ host: '127.0.0.1', port: target, method: req.method, path: req.url, headers }, (ur) => {
    res.writeHead(ur.statusCode, ur.headers);
    ur.on('data', () => (vm.lastTraffic = Date.now()));
    ur.pipe(res);
    ur.on('end', finish);
    ur.on('error', finish);
  });
  up.on('error', () => {
    finish();
    if (!res.headersSent) deny(502, 'Bad Gateway');
    else res.destroy();
  });
  res.on('close', () => {
    finish();
    up.destroy();
  });
  req.pipe(up);
}

// ---- control plane ----

function publicVm(vm) {
  const o = {
    microvmId: vm.id,
    state: vm.state,
    endpoint: vm.endpoint,
    imageArn: vm.imageArn,
    imageVersion: vm.imageVersion,
    maximumDurationInSeconds: vm.maximumDurationInSeconds,
    startedAt: vm.startedAt,
    ingressNetworkConnectors: vm.ingress,
    egressNetworkConnectors: vm.egress,
  };
  if (vm.executionRoleArn) o.executionRoleArn = vm.executionRoleArn;
  if (vm.idlePolicy) o.idlePolicy = vm.idlePolicy;
  if (vm.terminatedAt) o.terminatedAt = vm.terminatedAt;
  if (vm.stateReason) o.stateReason = vm.stateReason;
  return o;
}

const ROLE_RE = /^arn:aws[a-z-]*:iam::[0-9]{12}:role\/?[a-zA-Z_0-9+=,.@\-_/]+$/;
const isInt = (v) => Number.isInteger(v);

function validateRun(b) {
  if (typeof b !== 'object' || b === null || Array.isArray(b)) throw invalid('Request body must be a JSON object');
  const known = [
    'clientToken', 'egressNetworkConnectors', 'executionRoleArn', 'idlePolicy', 'imageIdentifier',
    'imageVersion', 'ingressNetworkConnectors', 'logging', 'maximumDurationInSeconds', 'runHookPayload',
  ];
  for (const k of Object.keys(b)) if (!known.includes(k)) throw invalid(`Unknown field: ${k}`);
  if (typeof b.imageIdentifier !== 'string' || b.imageIdentifier.length < 1 || b.imageIdentifier.length > 256)
    throw invalid('1 validation error detected: Value at \'imageIdentifier\' failed to satisfy constraint: Member must not be null');
  if (b.imageVersion !== undefined && (typeof b.imageVersion !== 'string' || !/^[^\s]{1,2048}$/.test(b.imageVersion)))
    throw invalid('imageVersion: invalid');
  if (b.executionRoleArn !== undefined && (typeof b.executionRoleArn !== 'string' || !ROLE_RE.test(b.executionRoleArn)))
    throw invalid('executionRoleArn: must be an IAM role ARN');
  if (b.idlePolicy !== undefined) {
    const p = b.idlePolicy;
    if (typeof p !== 'object' || p === null) throw invalid('idlePolicy: must be an object');
    if (!isInt(p.maxIdleDurationSeconds) || p.maxIdleDurationSeconds < 60)
      throw invalid('idlePolicy.maxIdleDurationSeconds: must be an integer >= 60');
    if (!isInt(p.suspendedDurationSeconds) || p.suspendedDurationSeconds < 0)
      throw invalid('idlePolicy.suspendedDurationSeconds: must be an integer >= 0');
    if (typeof p.autoResumeEnabled !== 'boolean') throw invalid('idlePolicy.autoResumeEnabled: must be a boolean');
  }
  if (b.maximumDurationInSeconds !== undefined &&
      (!isInt(b.maximumDurationInSeconds) || b.maximumDurationInSeconds < 1 || b.maximumDurationInSeconds > 28800))
    throw invalid('maximumDurationInSeconds: must be an integer between 1 and 28800');
  if (b.runHookPayload !== undefined && (typeof b.runHookPayload !== 'string' || Buffer.byteLength(b.runHookPayload) > 16384))
    throw invalid('runHookPayload: must be a string of at most 16 KB');
  for (const k of ['ingressNetworkConnectors', 'egressNetworkConnectors']) {
    const a = b[k];
    if (a === undefined) continue;
    if (!Array.isArray(a) || a.length > 10 || a.some((s) => typeof s !== 'string' || s.length < 1 || s.length > 2048))
      throw invalid(`${k}: must be an array of at most 10 ARNs`);
  }
  if (b.clientToken !== undefined && (typeof b.clientToken !== 'string' || b.clientToken.length < 1 || b.clientToken.length > 128))
    throw invalid('clientToken: 1..128 characters');
  if (b.logging !== undefined) {
    const l = b.logging;
    const keys = l && typeof l === 'object' ? Object.keys(l) : [];
    if (keys.length !== 1 || !['disabled', 'cloudWatch'].includes(keys[0])) throw invalid('logging: exactly one of disabled, cloudWatch');
  }
}

async function runMicrovm(b) {
  validateRun(b);
  if (b.clientToken && byClientToken.has(b.clientToken)) {
    const prev = byClientToken.get(b.clientToken);
    const same = JSON.stringify({ ...prev.body, clientToken: undefined }) === JSON.stringify({ ...b, clientToken: undefined });
    if (!same) throw new ApiError(409, 'ConflictException', 'clientToken was already used with different parameters');
    const vm = vms.get(prev.id);
    if (vm) return publicVm(vm);
  }
  const id = `microvm-${crypto.randomUUID()}`;
  const dir = path.join(ROOT, id);
  fs.mkdirSync(dir, { recursive: true });
  const imageArn = b.imageIdentifier.startsWith('arn:')
    ? b.imageIdentifier
    : `arn:aws:lambda:${REGION}:123456789012:microvm-image:${b.imageIdentifier}`;
  const vm = {
    id,
    dir,
    state: 'PENDING',
    imageArn,
    imageVersion: b.imageVersion || '1',
    executionRoleArn: b.executionRoleArn,
    idlePolicy: b.idlePolicy,
    maximumDurationInSeconds: b.maximumDurationInSeconds || 28800,
    startedAt: Math.floor(Date.now() / 1000),
    ingress: b.ingressNetworkConnectors || [],
    egress: b.egressNetworkConnectors || [],
    runHookPayload: b.runHookPayload,
    tokens: new Map(),
    activeProxied: 0,
    lastTraffic: Date.now(),
  };
  const proxyPort = await startProxy(vm);
  vm.endpoint = `http://127.0.0.1:${proxyPort}`;
  vms.set(id, vm);
  if (b.clientToken) byClientToken.set(b.clientToken, { id, body: b });
  vm.lifetimeTimer = setTimeout(() => terminate(vm), vm.maximumDurationInSeconds * 1000 * SCALE);
  if (stallNext > 0) {
    stallNext--;
    return publicVm(vm);
  }
  bootVm(vm, b.runHookPayload).catch((e) => {
    vm.stateReason = String(e);
    terminate(vm);
  });
  return publicVm(vm);
}

function getVm(id) {
  const vm = vms.get(id);
  if (!vm) throw notFound(id);
  return vm;
}

function mintToken(vm, b) {
  if (typeof b !== 'object' || b === null) throw invalid('Request body must be a JSON object');
  if (!isInt(b.expirationInMinutes) || b.expirationInMinutes < 1 || b.expirationInMinutes > 60)
    throw invalid('expirationInMinutes: must be an integer between 1 and 60');
  if (!Array.isArray(b.allowedPorts) || b.allowedPorts.length < 1) throw invalid('allowedPorts: at least one item');
  for (const p of b.allowedPorts) {
    const keys = p && typeof p === 'object' ? Object.keys(p) : [];
    if (keys.length !== 1) throw invalid('allowedPorts: each item sets exactly one of port, range, allPorts');
    if (keys[0] === 'port' && !(isInt(p.port) && p.port >= 1 && p.port <= 65535)) throw invalid('allowedPorts.port: 1..65535');
    if (keys[0] === 'range' && !(p.range && isInt(p.range.startPort) && isInt(p.range.endPort) && p.range.startPort <= p.range.endPort))
      throw invalid('allowedPorts.range: startPort <= endPort');
    if (!['port', 'range', 'allPorts'].includes(keys[0])) throw invalid(`allowedPorts: unknown member ${keys[0]}`);
  }
  if (vm.state === 'TERMINATED' || vm.state === 'TERMINATING') throw conflict(vm.id, `MicroVM ${vm.id} is ${vm.state}`);
  const token = 'eyJ' + crypto.randomBytes(48).toString('base64url');
  vm.tokens.set(token, { expires: Date.now() + b.expirationInMinutes * 60000 * SCALE, allowedPorts: b.allowedPorts });
  return { authToken: { 'X-aws-proxy-auth': token } };
}

const ROUTES = [
  ['POST', /^\/microvms$/, 'RunMicrovm', (m, b) => runMicrovm(b)],
  ['GET', /^\/microvms$/, 'ListMicrovms', (m, b, q) => {
    const max = q.get('maxResults') ? Number(q.get('maxResults')) : 50;
    if (!isInt(max) || max < 1 || max > 1000) throw invalid('maxResults: 1..1000');
    const all = [...vms.values()].filter(
      (vm) => !q.get('imageIdentifier') || vm.imageArn === q.get('imageIdentifier') || vm.imageArn.endsWith(':' + q.get('imageIdentifier')),
    );
    const start = q.get('nextToken') ? Number(Buffer.from(q.get('nextToken'), 'base64url').toString()) : 0;
    if (!isInt(start) || start < 0) throw invalid('nextToken: invalid');
    const items = all.slice(start, start + max).map((vm) => ({
      microvmId: vm.id, state: vm.state, imageArn: vm.imageArn, imageVersion: vm.imageVersion, startedAt: vm.startedAt,
    }));
    const out = { items };
    if (start + max < all.length) out.nextToken = Buffer.from(String(start + max)).toString('base64url');
    return out;
  }],
  ['GET', /^\/microvms\/([^/]+)$/, 'GetMicrovm', (m) => publicVm(getVm(m[1]))],
  ['POST', /^\/microvms\/([^/]+)\/suspend$/, 'SuspendMicrovm', async (m) => {
    const vm = getVm(m[1]);
    if (vm.state !== 'RUNNING') throw conflict(vm.id, `MicroVM ${vm.id} is ${vm.state}, not RUNNING`);
    suspend(vm).catch(() => {});
    return {};
  }],
  ['POST', /^\/microvms\/([^/]+)\/resume$/, 'ResumeMicrovm', async (m) => {
    const vm = getVm(m[1]);
    if (vm.state !== 'SUSPENDED') throw conflict(vm.id, `MicroVM ${vm.id} is ${vm.state}, not SUSPENDED`);
    resume(vm).catch(() => {});
    return {};
  }],
  ['DELETE', /^\/microvms\/([^/]+)$/, 'TerminateMicrovm', async (m) => {
    const vm = getVm(m[1]);
    terminate(vm).catch(() => {});
    return {};
  }],
  ['POST', /^\/microvms\/([^/]+)\/auth-token$/, 'CreateMicrovmAuthToken', (m, b) => mintToken(getVm(m[1]), b)],
];

async function control(req, res, body) {
  const u = new URL(req.url, 'http://x');
  if (!u.pathname.startsWith(API + '/')) throw new ApiError(404, 'UnknownOperationException', 'Unknown operation');
  const rel = u.pathname.slice(API.length);
  for (const [method, re, op, fn] of ROUTES) {
    const m = re.exec(rel);
    if (!m || method !== req.method) continue;
    verifySigV4(req, body);
    requests[op] = (requests[op] || 0) + 1;
    const f = faults.find((x) => x.op === op && x.count > 0);
    if (f) {
      f.count--;
      const e = new ApiError(f.status, f.type, f.message || `injected ${f.type}`);
      if (f.retryAfter !== undefined) e.retryAfter = f.retryAfter;
      throw e;
    }
    let parsed = {};
    if (body.length) {
      if (!/^application\/json/.test(req.headers['content-type'] || ''))
        throw invalid('Content-Type must be application/json');
      try {
        parsed = JSON.parse(body.toString('utf8'));
      } catch (_) {
        throw new ApiError(400, 'SerializationException', 'Could not parse the request body as JSON');
      }
    } else if (op === 'RunMicrovm' || op === 'CreateMicrovmAuthToken') {
      throw invalid('Request body is required');
    }
    m[1] = m[1] && decodeURIComponent(m[1]);
    return fn(m, parsed, u.searchParams);
  }
  throw new ApiError(404, 'UnknownOperationException', `No operation ${req.method} ${u.pathname}`);
}

function fakeControl(req, res, body) {
  const u = new URL(req.url, 'http://x');
  if (req.method === 'POST' && u.pathname === '/_fake/fail') {
    const f = JSON.parse(body.toString('utf8'));
    faults.push({ count: 1, ...f });
    return sendJson(res, 200, { ok: true });
  }
  if (req.method === 'GET' && u.pathname === '/_fake/microvms') {
    return sendJson(res, 200, [...vms.values()].map((vm) => ({
      ...publicVm(vm), dir: vm.dir, pid: vm.proc ? vm.proc.pid : null, agentPort: vm.agentPort,
      runHookPayload: vm.runHookPayload, tokens: vm.tokens.size,
    })));
  }
  if (req.method === 'GET' && u.pathname === '/_fake/requests') return sendJson(res, 200, requests);
  if (req.method === 'POST' && u.pathname === '/_fake/stall-next') {
    stallNext++;
    return sendJson(res, 200, {});
  }
  let m = /^\/_fake\/expire-tokens\/(.+)$/.exec(u.pathname);
  if (req.method === 'POST' && m) {
    const vm = vms.get(m[1]);
    if (vm) for (const t of vm.tokens.values()) t.expires = 0;
    return sendJson(res, vm ? 200 : 404, {});
  }
  m = /^\/_fake\/forget\/(.+)$/.exec(u.pathname);
  if (req.method === 'POST' && m) {
    const vm = vms.get(m[1]);
    if (vm) {
      terminate(vm).catch(() => {});
      vms.delete(m[1]);
    }
    return sendJson(res, vm ? 200 : 404, {});
  }
  sendJson(res, 404, { message: 'unknown fake control' });
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', async () => {
    const body = Buffer.concat(chunks);
    try {
      if (req.url.startsWith('/_fake/')) return fakeControl(req, res, body);
      const out = await control(req, res, body);
      sendJson(res, 200, out);
    } catch (e) {
      if (e instanceof ApiError) sendError(res, e);
      else sendError(res, new ApiError(500, 'InternalServerException', String(e && e.message)));
    }
  });
});

function shutdown() {
  for (const vm of vms.values()) {
    if (vm.state === 'SUSPENDED') signalTree(vm, 'SIGCONT');
    signalTree(vm, 'SIGKILL');
  }
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
process.stdin.on('end', shutdown);
process.stdin.resume();

server.listen(PORT, '127.0.0.1', () => {
  const port = server.address().port;
  process.stdout.write(JSON.stringify({ port, endpoint: `http://127.0.0.1:${port}` }) + '\n');
});
