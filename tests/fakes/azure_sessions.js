#!/usr/bin/env node
// A strict fake of Azure Container Apps dynamic sessions (custom-container pools) and of the
// Microsoft Entra token endpoints the worker uses, on loopback. Each session is a real
// `sandbox-agent` process in its own folder, allocated on the first request that names its
// identifier, as the pool does.
//
// Usage: node azure_sessions.js --agent PATH --root DIR [--pools data-app,ai-writeback]
//            [--tls-cert F --tls-key F] [--tenant T] [--client-id C] [--client-secret S]
//            [--federated-token-file F] [--identity-header H] [--token-ttl SECONDS]
//            [--cooldown-s N] [--max-sessions N] [--private-dir DIR] [--max-request-s N]
// Prints one JSON line once listening:
//   {"login":"https://127.0.0.1:N","metadata":"http://127.0.0.1:N","pools":{"data-app":"https://127.0.0.1:N",…}}
// (https when --tls-cert is given: MSAL refuses an http authority). Stops on SIGTERM/SIGINT
// or when stdin closes, killing every agent it started.
//
// login (the authority host, AZURE_AUTHORITY_HOST):
//   POST /{tenant}/oauth2/v2.0/token  form, grant_type=client_credentials, client_id, scope
//        (must be https://dynamicsessions.io/.default), and client_secret or a jwt-bearer
//        client_assertion equal to the federated token file's content. 200
//        {"token_type":"Bearer","expires_in":N,"ext_expires_in":N,"access_token":…}; errors as
//        Entra: 400/401 {"error","error_description":"AADSTS…","error_codes":[…],…}.
//   GET  /{tenant}/v2.0/.well-known/openid-configuration, GET /common/discovery/instance (MSAL).
// metadata (plain http, as the real ones are):
//   GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=  (IMDS; header Metadata: true)
//   GET /msi/token?api-version=2019-08-01&resource=  (App Service / Container Apps; X-IDENTITY-HEADER)
// pools (one port each): every request needs `Authorization: Bearer <token from above>` with
//   audience https://dynamicsessions.io (401 otherwise) and `identifier` (4..128 characters
//   of A-Z a-z 0-9 | - & ^ % $ # ( ) { } [ ] ; < >; 400 otherwise). The path and body are
//   forwarded to the session's agent (its main port stands for the target port) without the
//   Authorization header and without the identifier and api-version parameters. A session
//   idle for --cooldown-s is destroyed. With --max-sessions reached, a new identifier gets 404.
//   POST /.management/stopSession?api-version=…&identifier=… → 200 text/plain
//   "Session <id> in session pool <pool> stopped."; 404 for an unknown session.
// Test controls (plain, on the metadata port):
//   POST /_fake/fail {"where":"token"|"pool","status":503,"count":1,"body":"…"}
//   GET  /_fake/sessions   POST /_fake/expire-tokens   POST /_fake/destroy/{pool}/{identifier}
//   GET  /_fake/requests   counts per endpoint kind
'use strict';

const http = require('http');
const https = require('https');
const fs = require('fs');
const path = require('path');
const crypto = require('crypto');
const net = require('net');
const { spawn } = require('child_process');

function arg(name, def) {
  const i = process.argv.indexOf('--' + name);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : def;
}
const AGENT = arg('agent');
const ROOT = arg('root');
const POOLS = arg('pools', 'data-app,ai-writeback').split(',');
const CERT = arg('tls-cert');
const KEY = arg('tls-key');
const TENANT = arg('tenant', '72f988bf-86f1-41af-91ab-2d7cd011db47');
const CLIENT_ID = arg('client-id', '11111111-2222-3333-4444-555555555555');
const CLIENT_SECRET = arg('client-secret', 'fake-client-secret');
const FED_FILE = arg('federated-token-file');
const IDENTITY_HEADER = arg('identity-header', 'fake-identity-header');
const TOKEN_TTL = Number(arg('token-ttl', '3599'));
const COOLDOWN_S = Number(arg('cooldown-s', '300'));
const MAX_SESSIONS = Number(arg('max-sessions', '0'));
// Each session sees its own empty DIR (a tmpfs in a private mount namespace; needs root and
// util-linux unshare), as a real session has its own disk: what the worker restores there
// must come from its snapshot, not from a previous session.
const PRIVATE_DIR = arg('private-dir');
// Azure's gateway ends requests that run longer than this (seconds; 0: never), as a long
// turn's exec stream would be: the worker must pick the command up again without loss.
const MAX_REQUEST_S = Number(arg('max-request-s', '0'));
const AUDIENCE = 'https://dynamicsessions.io';
if (!AGENT || !ROOT) {
  console.error('usage: azure_sessions.js --agent PATH --root DIR ...');
  process.exit(2);
}

const tokens = new Map(); // access token -> {aud, exp (ms), client}
const pools = new Map(); // name -> {name, sessions: Map(identifier -> session), url}
const faults = [];
const requests = {};
const count = (k) => (requests[k] = (requests[k] || 0) + 1);

function sendJson(res, status, obj, headers) {
  const body = JSON.stringify(obj);
  res.writeHead(status, { 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': Buffer.byteLength(body), ...(headers || {}) });
  res.end(body);
}
function sendText(res, status, text) {
  res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}
function readBody(req) {
  return new Promise((resolve) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks)));
  });
}
function takeFault(where) {
  const f = faults.find((x) => x.where === where && x.count > 0);
  if (f) f.count--;
  return f;
}

function issue(client) {
  const now = Math.floor(Date.now() / 1000);
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const tok = `${b64({ typ: 'JWT', alg: 'RS256' })}.${b64({ aud: AUDIENCE, iss: `https://sts.windows.net/${TENANT}/`, iat: now, exp: now + TOKEN_TTL, appid: client, tid: TENANT })}.${crypto.randomBytes(32).toString('base64url')}`;
  tokens.set(tok, { aud: AUDIENCE, exp: Date.now() + TOKEN_TTL * 1000, client });
  return tok;
}

function entraError(res, status, error, code, description) {
  sendJson(res, status, {
    error,
    error_description: `AADSTS${code}: ${description} Trace ID: ${crypto.randomUUID()} Correlation ID: ${crypto.randomUUID()} Timestamp: ${new Date().toISOString()}`,
    error_codes: [code],
    timestamp: new Date().toISOString().replace('T', ' ').replace('Z', 'Z'),
    trace_id: crypto.randomUUID(),
    correlation_id: crypto.randomUUID(),
  });
}

// ---- login: the authority host ----

async function login(req, res, base) {
  const u = new URL(req.url, base);
  let m = /^\/([^/]+)\/oauth2\/v2\.0\/token$/.exec(u.pathname);
  if (m && req.method === 'POST') {
    count('token');
    const body = (await readBody(req)).toString();
    const f = takeFault('token');
    if (f) return sendText(res, f.status, f.body || 'injected failure');
    if (!/^application\/x-www-form-urlencoded/.test(req.headers['content-type'] || ''))
      return entraError(res, 400, 'invalid_request', 900144, "The request body must contain the following parameter: 'grant_type'.");
    const p = new URLSearchParams(body);
    if (m[1] !== TENANT) return entraError(res, 400, 'invalid_tenant', 90002, `Tenant '${m[1]}' not found.`);
    if (p.get('grant_type') !== 'client_credentials')
      return entraError(res, 400, 'unsupported_grant_type', 70003, 'The app requested an unsupported grant type.');
    if (p.get('client_id') !== CLIENT_ID)
      return entraError(res, 400, 'unauthorized_client', 700016, `Application with identifier '${p.get('client_id')}' was not found in the directory.`);
    if (p.get('scope') !== `${AUDIENCE}/.default`)
      return entraError(res, 400, 'invalid_scope', 70011, `The provided value for the input parameter 'scope' is not valid.`);
    if (p.has('client_secret')) {
      if (p.get('client_secret') !== CLIENT_SECRET)
        return entraError(res, 401, 'invalid_client', 7000215, 'Invalid client secret provided.');
    } else if (p.has('client_assertion')) {
      if (p.get('client_assertion_type') !== 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer')
        return entraError(res, 400, 'invalid_request', 90014, "The request body must contain the parameter 'client_assertion_type'.");
      const want = FED_FILE ? fs.readFileSync(FED_FILE, 'utf8').trim() : null;
      if (!want || p.get('client_assertion') !== want)
        return entraError(res, 400, 'invalid_client', 700211, 'No matching federated identity record found for presented assertion.');
    } else {
      return entraError(res, 401, 'invalid_client', 7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.");
    }
    return sendJson(res, 200, { token_type: 'Bearer', expires_in: TOKEN_TTL, ext_expires_in: TOKEN_TTL, access_token: issue(CLIENT_ID) });
  }
  m = /^\/([^/]+)\/v2\.0\/\.well-known\/openid-configuration$/.exec(u.pathname);
  if (m && req.method === 'GET') {
    const t = m[1];
    return sendJson(res, 200, {
      token_endpoint: `${base}/${t}/oauth2/v2.0/token`,
      token_endpoint_auth_methods_supported: ['client_secret_post', 'private_key_jwt', 'client_secret_basic'],
      jwks_uri: `${base}/${t}/discovery/v2.0/keys`,
      response_modes_supported: ['query', 'fragment', 'form_post'],
      subject_types_supported: ['pairwise'],
      id_token_signing_alg_values_supported: ['RS256'],
      response_types_supported: ['code', 'id_token', 'code id_token', 'id_token token'],
      scopes_supported: ['openid', 'profile', 'email', 'offline_access'],
      issuer: `${base}/${t}/v2.0`,
      request_uri_parameter_supported: false,
      authorization_endpoint: `${base}/${t}/oauth2/v2.0/authorize`,
      device_authorization_endpoint: `${base}/${t}/oauth2/v2.0/devicecode`,
      http_logout_supported: true,
      frontchannel_logout_supported: true,
      end_session_endpoint: `${base}/${t}/oauth2/v2.0/logout`,
      claims_supported: ['sub', 'iss', 'aud', 'exp', 'iat', 'tid'],
      tenant_region_scope: 'EU',
      cloud_instance_name: 'microsoftonline.com',
    });
  }
  if (u.pathname === '/common/discovery/instance' && req.method === 'GET') {
    const host = new URL(base).host;
    return sendJson(res, 200, {
      tenant_discovery_endpoint: `${base}/${TENANT}/v2.0/.well-known/openid-configuration`,
      'api-version': '1.1',
      metadata: [{ preferred_network: host, preferred_cache: host, aliases: [host] }],
    });
  }
  sendJson(res, 404, { error: 'not_found' });
}

// ---- metadata: IMDS and the App Service identity endpoint ----

function managedToken(res, resource, clientId, style) {
  if (resource !== AUDIENCE && resource !== AUDIENCE + '/')
    return sendJson(res, 400, { error: 'invalid_resource', error_description: `AADSTS500011: The resource principal named ${resource} was not found.` });
  if (clientId && clientId !== CLIENT_ID)
    return sendJson(res, 400, { error: 'invalid_request', error_description: 'Identity not found' });
  const tok = issue(clientId || 'system-assigned');
  const exp = String(Math.floor(Date.now() / 1000) + TOKEN_TTL);
  if (style === 'imds')
    return sendJson(res, 200, {
      access_token: tok, refresh_token: '', expires_in: String(TOKEN_TTL), expires_on: exp,
      not_before: String(Math.floor(Date.now() / 1000)), resource: AUDIENCE, token_type: 'Bearer',
    });
  return sendJson(res, 200, { access_token: tok, expires_on: exp, resource: AUDIENCE, token_type: 'Bearer', client_id: clientId || CLIENT_ID });
}

async function metadata(req, res) {
  const u = new URL(req.url, 'http://x');
  const body = await readBody(req);
  if (u.pathname.startsWith('/_fake/')) return fakeControl(req, res, u, body);
  if (u.pathname === '/metadata/identity/oauth2/token' && req.method === 'GET') {
    count('imds');
    if (req.headers.metadata !== 'true')
      return sendJson(res, 400, { error: 'invalid_request', error_description: 'Required metadata header not specified' });
    const f = takeFault('token');
    if (f) return sendText(res, f.status, f.body || 'injected failure');
    if (u.searchParams.get('api-version') !== '2018-02-01')
      return sendJson(res, 400, { error: 'invalid_request', error_description: 'Invalid api-version' });
    return managedToken(res, u.searchParams.get('resource'), u.searchParams.get('client_id'), 'imds');
  }
  if (u.pathname === '/msi/token' && req.method === 'GET') {
    count('msi');
    if (req.headers['x-identity-header'] !== IDENTITY_HEADER) return sendJson(res, 401, { error: 'unauthorized', message: 'X-IDENTITY-HEADER mismatch' });
    const f = takeFault('token');
    if (f) return sendText(res, f.status, f.body || 'injected failure');
    if (u.searchParams.get('api-version') !== '2019-08-01')
      return sendJson(res, 400, { error: 'invalid_request', error_description: 'Invalid api-version' });
    return managedToken(res, u.searchParams.get('resource'), u.searchParams.get('client_id'), 'msi');
  }
  sendJson(res, 404, { error: 'not_found' });
}

// ---- pools ----

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
}

function localGet(port, p) {
  return new Promise((resolve) => {
    const r = http.get({ host: '127.0.0.1', port, path: p, timeout: 1000 }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    r.on('timeout', () => r.destroy());
    r.on('error', () => resolve(0));
  });
}

async function allocate(pool, identifier) {
  const s = { identifier, lastUsed: Date.now(), active: 0 };
  pool.sessions.set(identifier, s);
  s.ready = (async () => {
    s.dir = path.join(ROOT, pool.name, crypto.createHash('sha256').update(identifier).digest('hex').slice(0, 24));
    fs.mkdirSync(s.dir, { recursive: true });
    s.port = await freePort();
    const hookPort = await freePort();
    const [cmd, argv] = PRIVATE_DIR
      ? ['unshare', ['-m', '--propagation', 'private', 'sh', '-c',
          'mkdir -p "$1" && mount -t tmpfs tmpfs "$1" && exec "$0"', AGENT, PRIVATE_DIR]]
      : [AGENT, []];
    s.proc = spawn(cmd, argv, {
      cwd: s.dir,
      env: {
        PATH: process.env.PATH, HOME: s.dir, LD_AGENT_BIND: '127.0.0.1', LD_AGENT_PORT: String(s.port),
        LD_AGENT_HOOK_PORT: String(hookPort), LIGHTDASH_LOG_LEVEL: 'warn', SANDBOX_AGENT_SPOOL_DIR: path.join(s.dir, '.agent-spool'),
      },
      stdio: ['ignore', 'ignore', 'inherit'],
      detached: true,
    });
    s.proc.on('exit', () => destroy(pool, s));
    for (let i = 0; i < 200; i++) {
      if ((await localGet(s.port, '/ready')) === 200) return;
      await new Promise((r) => setTimeout(r, 25));
    }
    throw new Error('session container did not start');
  })();
  armCooldown(pool, s);
  return s;
}

function armCooldown(pool, s) {
  if (s.timer) clearTimeout(s.timer);
  s.timer = setTimeout(() => {
    if (s.active > 0) return armCooldown(pool, s);
    destroy(pool, s);
  }, COOLDOWN_S * 1000);
}

function destroy(pool, s) {
  if (pool.sessions.get(s.identifier) !== s) return;
  pool.sessions.delete(s.identifier);
  if (s.timer) clearTimeout(s.timer);
  if (s.proc && s.proc.exitCode === null) {
    try {
      process.kill(-s.proc.pid, 'SIGKILL'); // the container and everything it started
    } catch (_) {
      /* gone */
    }
  }
  if (s.dir) fs.rmSync(s.dir, { recursive: true, force: true });
}

const ID_RE = /^[A-Za-z0-9|\-&^%$#(){}[\];<>]{4,128}$/;

async function poolRequest(pool, req, res) {
  const u = new URL(req.url, 'http://x');
  const deny = (status, text) => {
    req.resume();
    sendText(res, status, text);
  };
  count('pool');
  const auth = req.headers.authorization || '';
  const m = /^Bearer (.+)$/.exec(auth);
  const t = m && tokens.get(m[1]);
  if (!t || t.exp <= Date.now() || t.aud !== AUDIENCE) {
    res.setHeader('WWW-Authenticate', 'Bearer realm="dynamicsessions.io"');
    return deny(401, 'Unauthorized');
  }
  const f = takeFault('pool');
  if (f) return deny(f.status, f.body || 'injected failure');
  const identifier = u.searchParams.get('identifier');
  if (!identifier || !ID_RE.test(identifier)) return deny(400, 'The identifier query parameter is missing or invalid.');
  if (u.pathname === '/.management/stopSession') {
    if (req.method !== 'POST') return deny(405, 'Method not allowed');
    if (!u.searchParams.get('api-version')) return deny(400, 'The api-version query parameter is required.');
    const s = pool.sessions.get(identifier);
    if (!s) return deny(404, `Session ${identifier} not found in session pool ${pool.name}.`);
    destroy(pool, s);
    return deny(200, `Session ${identifier} in session pool ${pool.name} stopped.`);
  }
  if (u.pathname.startsWith('/.management/')) return deny(404, 'Not found');
  let s = pool.sessions.get(identifier);
  if (!s) {
    if (MAX_SESSIONS && pool.sessions.size >= MAX_SESSIONS) return deny(404, 'No more sessions can be allocated in this session pool.');
    s = await allocate(pool, identifier);
  }
  try {
    await s.ready;
  } catch (e) {
    destroy(pool, s);
    return deny(502, String(e.message));
  }
  s.lastUsed = Date.now();
  s.active++;
  armCooldown(pool, s);
  u.searchParams.delete('identifier');
  u.searchParams.delete('api-version');
  const headers = { ...req.headers };
  delete headers.authorization;
  headers.host = `127.0.0.1:${s.port}`;
  let done = false;
  const finish = () => {
    if (done) return;
    done = true;
    s.active--;
    s.lastUsed = Date.now();
    armCooldown(pool, s);
  };
  const up = http.request({ host: '127.0.0.1', port: s.port, method: req.method, path: u.pathname + u.search, headers }, (ur) => {
    res.writeHead(ur.statusCode, ur.headers);
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
  if (MAX_REQUEST_S > 0) {
    const cut = setTimeout(() => {
      count('cut');
      res.destroy(); // the client sees the stream end without its last chunk
      up.destroy();
    }, MAX_REQUEST_S * 1000);
    res.on('close', () => clearTimeout(cut));
  }
  req.pipe(up);
}

function fakeControl(req, res, u, body) {
  if (req.method === 'POST' && u.pathname === '/_fake/fail') {
    faults.push({ count: 1, ...JSON.parse(body.toString() || '{}') });
    return sendJson(res, 200, { ok: true });
  }
  if (req.method === 'GET' && u.pathname === '/_fake/sessions') {
    const out = {};
    for (const [name, pool] of pools)
      out[name] = [...pool.sessions.values()].map((s) => ({ identifier: s.identifier, dir: s.dir, pid: s.proc && s.proc.pid, active: s.active }));
    return sendJson(res, 200, out);
  }
  if (req.method === 'GET' && u.pathname === '/_fake/requests') return sendJson(res, 200, requests);
  if (req.method === 'POST' && u.pathname === '/_fake/expire-tokens') {
    for (const t of tokens.values()) t.exp = 0;
    return sendJson(res, 200, {});
  }
  const m = /^\/_fake\/destroy\/([^/]+)\/(.+)$/.exec(u.pathname);
  if (req.method === 'POST' && m) {
    const pool = pools.get(m[1]);
    const s = pool && pool.sessions.get(decodeURIComponent(m[2]));
    if (s) destroy(pool, s);
    return sendJson(res, s ? 200 : 404, {});
  }
  sendJson(res, 404, { message: 'unknown fake control' });
}

// ---- listeners ----

const tls = CERT && KEY ? { cert: fs.readFileSync(CERT), key: fs.readFileSync(KEY) } : null;
const scheme = tls ? 'https' : 'http';
function listen(handler, secure) {
  return new Promise((resolve) => {
    const srv = secure ? https.createServer(tls, handler) : http.createServer(handler);
    srv.listen(0, '127.0.0.1', () => resolve(srv));
  });
}
function guard(fn) {
  return (req, res) =>
    fn(req, res).catch((e) => {
      if (!res.headersSent) sendText(res, 500, String(e && e.message));
      else res.destroy();
    });
}

function shutdown() {
  for (const pool of pools.values()) for (const s of [...pool.sessions.values()]) destroy(pool, s);
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
process.stdin.on('end', shutdown);
process.stdin.resume();

(async () => {
  let loginBase = '';
  const loginSrv = await listen(guard((req, res) => login(req, res, loginBase)), !!tls);
  loginBase = `${scheme}://127.0.0.1:${loginSrv.address().port}`;
  const metaSrv = await listen(guard(metadata), false);
  const out = { login: loginBase, metadata: `http://127.0.0.1:${metaSrv.address().port}`, pools: {} };
  for (const name of POOLS) {
    const pool = { name, sessions: new Map() };
    pools.set(name, pool);
    const srv = await listen(guard((req, res) => poolRequest(pool, req, res)), !!tls);
    out.pools[name] = `${scheme}://127.0.0.1:${srv.address().port}`;
  }
  process.stdout.write(JSON.stringify(out) + '\n');
})();
