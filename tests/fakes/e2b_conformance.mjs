// Conformance test of the E2B fake (e2b.js): the official npm `e2b` SDK and raw HTTP in the
// shape the C provider uses are driven against it; every expectation is what the SDK (or
// E2B's wire contract) requires, so a drift of the fake fails here.
// Usage: node e2b_conformance.mjs   (run by tests/integration/test_e2b_fake.sh)
// Starts its own fake on 127.0.0.1 with a temporary root; prints one line per check.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  Sandbox,
  AuthenticationError,
  CommandExitError,
  FileNotFoundError,
  InvalidArgumentError,
  RateLimitError,
  SandboxNotFoundError,
  ServiceBusyError,
  TimeoutError,
} from 'e2b';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'e2b-fake-'));
const API_KEY = 'e2b_conformance_key';

// ---- the fake ----

const fake = spawn(process.execPath, [path.join(here, 'e2b.js'), '--root', root, '--api-key', API_KEY, '--debug-port', '0'], {
  stdio: ['pipe', 'pipe', 'inherit'],
});
const info = await new Promise((resolve, reject) => {
  let buf = '';
  fake.stdout.on('data', d => {
    buf += d;
    const nl = buf.indexOf('\n');
    if (nl >= 0) resolve(JSON.parse(buf.slice(0, nl)));
  });
  fake.on('exit', code => reject(new Error(`fake exited with ${code} before listening`)));
  setTimeout(() => reject(new Error('fake did not print its ports within 10 s')), 10000).unref();
});
const base = `http://127.0.0.1:${info.port}`;
const conn = { apiKey: API_KEY, apiUrl: base, sandboxUrl: base, requestTimeoutMs: 10000 };

// ---- tiny harness ----

let passed = 0;
let failed = 0;
const cleanups = [];

function assert(cond, what) {
  if (!cond) throw new Error(`expected ${what}`);
}

function eq(got, want, what) {
  if (JSON.stringify(got) !== JSON.stringify(want))
    throw new Error(`${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
}

async function rejects(promise, cls, what) {
  try {
    await promise;
  } catch (e) {
    if (!(e instanceof cls)) throw new Error(`${what}: got ${e && e.name}: ${e && e.message}, want ${cls.name}`);
    return e;
  }
  throw new Error(`${what}: resolved, want ${cls.name}`);
}

async function check(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    passed++;
    console.log(`  ok   ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    failed++;
    console.log(`  FAIL ${name}: ${e && e.stack ? e.stack.split('\n').slice(0, 3).join(' | ') : e}`);
  }
}

const sleep = ms => new Promise(r => setTimeout(r, ms));

async function create(opts = {}) {
  const sb = await Sandbox.create('base', Object.assign({ timeoutMs: 600000 }, conn, opts));
  cleanups.push(sb.sandboxId);
  return sb;
}

// Raw HTTP against the fake: {status, headers, body Buffer}.
function request(method, p, { headers = {}, body, signal } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port: info.port, method, path: p, headers, signal },
      res => {
        const chunks = [];
        res.on('data', c => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

function apiReq(method, p, body, key = API_KEY) {
  const headers = { 'Content-Type': 'application/json' };
  if (key) headers['X-API-Key'] = key;
  return request(method, p, { headers, body: body === undefined ? undefined : JSON.stringify(body) });
}

function envelope(obj) {
  const json = Buffer.from(JSON.stringify(obj));
  const head = Buffer.alloc(5);
  head.writeUInt32BE(json.length, 1);
  return Buffer.concat([head, json]);
}

function frames(buf) {
  const out = [];
  let pos = 0;
  while (pos + 5 <= buf.length) {
    const len = buf.readUInt32BE(pos + 1);
    out.push({ flags: buf[pos], raw: buf.subarray(pos, pos + 5 + len), msg: JSON.parse(buf.subarray(pos + 5, pos + 5 + len)) });
    pos += 5 + len;
  }
  assert(pos === buf.length, `whole envelopes (${buf.length - pos} stray bytes)`);
  return out;
}

function envdHeaders(sb, extra = {}) {
  return Object.assign({ Host: `49983-${sb.sandboxId}.${info.domain}`, 'X-Access-Token': sb.envdAccessToken }, extra);
}

async function fakeState(id) {
  const r = await request('GET', '/_fake/sandboxes');
  return JSON.parse(r.body).sandboxes.find(s => s.sandboxID === id);
}

// ---- checks ----

try {
  await check('request log: protocol headers recorded, credentials never', async () => {
    await Sandbox.list(conn).nextItems();
    const log = JSON.parse((await request('GET', '/_fake/log')).body);
    const e = log.filter(x => x.kind === 'api' && x.path === '/v2/sandboxes').pop();
    eq(e.headers['x-api-key'], '(present)', 'API key masked');
    assert(!JSON.stringify(log).includes(API_KEY), 'API key never in the log');
  });

  await check('unknown template -> 404 when the fake knows its templates', async () => {
    const f2 = spawn(process.execPath, [path.join(here, 'e2b.js'), '--root', path.join(root, 'f2'), '--templates', 'base,other'], { stdio: ['pipe', 'pipe', 'inherit'] });
    try {
      const line = await new Promise(resolve => f2.stdout.once('data', d => resolve(JSON.parse(d))));
      const c = { apiKey: line.api_key, apiUrl: line.api_url, sandboxUrl: line.sandbox_url };
      const e = await rejects(Sandbox.create('nope', c), Error, 'create');
      eq(e.statusCode, 404, 'status');
      const ok = await Sandbox.create('other', c);
      eq((await ok.commands.run('echo ok')).stdout, 'ok\n', 'known template');
    } finally {
      f2.stdin.end();
      await new Promise(r => (f2.exitCode !== null ? r() : f2.on('exit', r)));
    }
  });

  await check('wrong API key -> AuthenticationError; 401 body {code,message}', async () => {
    await rejects(Sandbox.create('base', Object.assign({}, conn, { apiKey: 'e2b_wrong' })), AuthenticationError, 'create');
    const r = await apiReq('GET', '/v2/sandboxes', undefined, null);
    eq(r.status, 401, 'status without key');
    const b = JSON.parse(r.body);
    eq(b.code, 401, 'code');
    assert(typeof b.message === 'string' && b.message.length > 0, 'a message');
  });

  await check('create validates its body (400 on missing/wrong fields)', async () => {
    for (const [body, what] of [
      [{}, 'no templateID'],
      [{ templateID: 5 }, 'templateID number'],
      [{ templateID: 'base', timeout: -1 }, 'negative timeout'],
      [{ templateID: 'base', timeout: 1.5 }, 'fractional timeout'],
      [{ templateID: 'base', metadata: { a: 1 } }, 'metadata value number'],
      [{ templateID: 'base', autoPause: 'yes' }, 'autoPause string'],
    ]) {
      const r = await apiReq('POST', '/v2/sandboxes', body);
      eq(r.status, 400, what);
      eq(JSON.parse(r.body).code, 400, `${what} body code`);
    }
    const bad = await request('POST', '/sandboxes', { headers: { 'X-API-Key': API_KEY }, body: '{"templateID":' });
    eq(bad.status, 400, 'malformed JSON');
  });

  await check('POST /sandboxes (v1): 201 Sandbox; envdAccessToken only when secure', async () => {
    const r = await apiReq('POST', '/sandboxes', { templateID: 'base', timeout: 60 });
    eq(r.status, 201, 'status');
    const b = JSON.parse(r.body);
    for (const k of ['sandboxID', 'templateID', 'clientID', 'envdVersion']) assert(typeof b[k] === 'string', `${k} string`);
    assert(!('envdAccessToken' in b), 'no token when not secure');
    cleanups.push(b.sandboxID);
    const s = await apiReq('POST', '/sandboxes', { templateID: 'base', timeout: 60, secure: true });
    const sb = JSON.parse(s.body);
    cleanups.push(sb.sandboxID);
    assert(typeof sb.envdAccessToken === 'string' && sb.envdAccessToken.length > 0, 'token when secure');
    eq(sb.domain, info.domain, 'domain');
  });

  const sb = await create({ metadata: { job: 'conf-1', app: 'x y' }, envs: { FOO: 'from-sandbox', BAR: 'b' } });

  await check('Sandbox.create + getInfo (metadata, state, lifecycle, envdVersion >= 0.5.7)', async () => {
    const i = await Sandbox.getInfo(sb.sandboxId, conn);
    eq(i.state, 'running', 'state');
    eq(i.metadata, { job: 'conf-1', app: 'x y' }, 'metadata');
    eq(i.lifecycle && i.lifecycle.onTimeout, 'kill', 'onTimeout');
    const [maj, min, pat] = i.envdVersion.split('.').map(Number);
    assert(maj > 0 || min > 5 || (min === 5 && pat >= 7), `envdVersion >= 0.5.7 (${i.envdVersion})`);
    assert(i.endAt.getTime() > Date.now() + 100000, 'endAt from timeoutMs');
  });

  await check('commands.run streams stdout/stderr through callbacks as it is produced', async () => {
    const seen = [];
    const t0 = Date.now();
    const r = await sb.commands.run('echo one; echo warn >&2; sleep 1; echo two', {
      onStdout: d => seen.push(['out', d, Date.now() - t0]),
      onStderr: d => seen.push(['err', d, Date.now() - t0]),
    });
    const elapsed = Date.now() - t0;
    eq(r.exitCode, 0, 'exitCode');
    eq(r.stdout, 'one\ntwo\n', 'stdout');
    eq(r.stderr, 'warn\n', 'stderr');
    const first = seen.find(s => s[0] === 'out');
    assert(first && first[1] === 'one\n', 'first stdout chunk "one"');
    assert(first[2] < elapsed - 500, `first chunk before the end (${first[2]} ms of ${elapsed} ms)`);
    assert(seen.some(s => s[0] === 'err' && s[1] === 'warn\n'), 'stderr callback');
  });

  await check('environment: sandbox envs, command envs win, nothing of the host leaks', async () => {
    process.env.E2B_FAKE_HOST_SECRET = 'leak';
    const r = await sb.commands.run('echo "$FOO $BAR $BAZ $E2B_SANDBOX $USER ${E2B_FAKE_HOST_SECRET:-none}"', {
      envs: { FOO: 'from-command', BAZ: 'z' },
    });
    eq(r.stdout, 'from-command b z true user none\n', 'env');
    const envs = await request('GET', '/envs', { headers: envdHeaders(sb) });
    eq(JSON.parse(envs.body), { FOO: 'from-sandbox', BAR: 'b' }, 'GET /envs: the sandbox envVars');
  });

  await check('cwd maps into the sandbox; missing cwd -> InvalidArgumentError', async () => {
    await sb.files.write('/home/user/sub/dir/f.txt', 'x');
    const r = await sb.commands.run('pwd; ls', { cwd: '/home/user/sub/dir' });
    assert(r.stdout.endsWith('/home/user/sub/dir\nf.txt\n'), `pwd/ls output (${JSON.stringify(r.stdout)})`);
    const rel = await sb.commands.run('cat dir/f.txt', { cwd: 'sub' });
    eq(rel.stdout, 'x', 'relative cwd resolves against home');
    await rejects(sb.commands.run('true', { cwd: '/nonexistent/dir' }), InvalidArgumentError, 'missing cwd');
  });

  await check('exit 3 -> CommandExitError {exitCode 3, error "exit status 3", stdout, stderr}', async () => {
    const e = await rejects(sb.commands.run('echo partial; echo bad >&2; exit 3'), CommandExitError, 'run');
    eq(e.exitCode, 3, 'exitCode');
    eq(e.error, 'exit status 3', 'error');
    eq(e.stdout, 'partial\n', 'stdout');
    eq(e.stderr, 'bad\n', 'stderr');
    const nf = await rejects(sb.commands.run('no-such-binary-xyz'), CommandExitError, 'missing binary');
    eq(nf.exitCode, 127, 'missing binary exit code');
  });

  await check('background command survives disconnect; connect(pid) streams only new output', async () => {
    const seen = [];
    const h = await sb.commands.run('echo first; sleep 1; echo second; sleep 1; echo third', {
      background: true,
      onStdout: d => seen.push(d),
    });
    assert(Number.isInteger(h.pid) && h.pid > 0, 'pid');
    for (let i = 0; i < 50 && !seen.join('').includes('first'); i++) await sleep(20);
    eq(seen.join(''), 'first\n', 'output before disconnect');
    await h.disconnect();
    const listed = await sb.commands.list();
    const me = listed.find(p => p.pid === h.pid);
    assert(me && me.cmd === '/bin/bash' && me.args[2].startsWith('echo first'), 'listed with its config');
    await sleep(1400); // "second" is produced while nobody is attached
    const again = [];
    const h2 = await sb.commands.connect(h.pid, { onStdout: d => again.push(d) });
    const r = await h2.wait();
    eq(r.exitCode, 0, 'exitCode after re-attach');
    eq(again.join(''), 'third\n', 're-attached output (envd does not replay)');
    eq(seen.join(''), 'first\n', 'no output to the detached handle');
    const gone = (await sb.commands.list()).find(p => p.pid === h.pid);
    assert(!gone, 'finished process no longer listed');
    await rejects(sb.commands.connect(h.pid), Error, 'connect to a finished pid');
  });

  await check('commands.kill: SIGKILL -> exitCode -1 "signal: killed"; second kill false', async () => {
    const h = await sb.commands.run('sleep 30 & sleep 30; echo never', { background: true });
    eq(await sb.commands.kill(h.pid), true, 'kill');
    const e = await rejects(h.wait(), CommandExitError, 'wait after kill');
    eq(e.exitCode, -1, 'exitCode');
    eq(e.error, 'signal: killed', 'error');
    eq(e.stdout, '', 'no output');
    await sleep(100);
    eq(await sb.commands.kill(h.pid), false, 'second kill');
    const st = await fakeState(sb.sandboxId);
    eq(st.processes.length, 0, 'no processes left (group killed)');
  });

  await check('stdin: sendStdin and closeStdin reach the command; stdin:false is /dev/null', async () => {
    const out = [];
    const h = await sb.commands.run('cat; echo " eof"', { background: true, stdin: true, onStdout: d => out.push(d) });
    await h.sendStdin('hello ');
    await h.sendStdin(new TextEncoder().encode('bytes'));
    await h.closeStdin();
    eq((await h.wait()).stdout, 'hello bytes eof\n', 'stdout of cat');
    eq((await sb.commands.run('cat; echo done')).stdout, 'done\n', 'stdin false (the SDK default) reads EOF');
    const g = await sb.commands.run('sleep 5', { background: true });
    await rejects(g.sendStdin('x'), Error, 'sendStdin without stdin');
    await sb.commands.kill(g.pid);
  });

  await check('command timeoutMs -> TimeoutError and the process group is killed', async () => {
    const t0 = Date.now();
    await rejects(sb.commands.run('sleep 20', { timeoutMs: 700 }), TimeoutError, 'run');
    assert(Date.now() - t0 < 5000, 'returns at the deadline');
    await sleep(200);
    eq((await sb.commands.list()).length, 0, 'nothing left running');
  });

  await check('files.write/read: text, bytes, nested dirs, multipart batch, octet-stream', async () => {
    const info1 = await sb.files.write('/home/user/a/b/c.txt', 'hello\n');
    eq(info1.path, '/home/user/a/b/c.txt', 'EntryInfo.path');
    eq(info1.name, 'c.txt', 'EntryInfo.name');
    eq(await sb.files.read('/home/user/a/b/c.txt'), 'hello\n', 'read text');
    eq(await sb.files.read('a/b/c.txt'), 'hello\n', 'relative path resolves against home');
    const bytes = new Uint8Array(256).map((_, i) => i);
    await sb.files.write('/workspace/bin.dat', bytes.buffer);
    const back = await sb.files.read('/workspace/bin.dat', { format: 'bytes' });
    eq(Buffer.from(back).equals(Buffer.from(bytes)), true, 'binary round trip');
    const multi = await sb.files.write([
      { path: '/workspace/m/one.txt', data: '1' },
      { path: '/workspace/m/two.txt', data: '2' },
    ]);
    eq(multi.map(f => f.path), ['/workspace/m/one.txt', '/workspace/m/two.txt'], 'multipart batch');
    await sb.files.write('/workspace/oct.txt', 'octets', { useOctetStream: true });
    eq(await sb.files.read('/workspace/oct.txt'), 'octets', 'octet-stream upload');
    const r = await sb.commands.run('cat "$E2B_FAKE_ROOT/workspace/m/one.txt" "$E2B_FAKE_ROOT/workspace/m/two.txt"');
    eq(r.stdout, '12', 'files visible to commands under E2B_FAKE_ROOT');
    await sb.files.write('/home/user/a/b/c.txt', 'over');
    eq(await sb.files.read('/home/user/a/b/c.txt'), 'over', 'overwrite');
    await rejects(sb.files.read('/home/user/missing.txt'), FileNotFoundError, 'missing file');
  });

  await check('filesystem RPCs: exists, getInfo, makeDir, list, rename, remove', async () => {
    eq(await sb.files.exists('/workspace/m/one.txt'), true, 'exists');
    eq(await sb.files.exists('/workspace/nope'), false, 'not exists');
    const gi = await sb.files.getInfo('/workspace/m/one.txt');
    eq([gi.name, gi.type, gi.path, gi.size], ['one.txt', 'file', '/workspace/m/one.txt', 1], 'getInfo');
    assert(/^-rw/.test(gi.permissions) && gi.modifiedTime instanceof Date, 'permissions and mtime');
    eq(await sb.files.makeDir('/workspace/newdir/deep'), true, 'makeDir');
    eq(await sb.files.makeDir('/workspace/newdir/deep'), false, 'makeDir again (already_exists)');
    const ls = await sb.files.list('/workspace/m');
    eq(ls.map(e => [e.name, e.type]), [['one.txt', 'file'], ['two.txt', 'file']], 'list');
    const deep = await sb.files.list('/workspace', { depth: 2 });
    assert(deep.some(e => e.path === '/workspace/newdir/deep' && e.type === 'dir'), 'list depth 2');
    assert(!deep.some(e => e.path.split('/').length > 4), 'no deeper than 2');
    const mv = await sb.files.rename('/workspace/m/two.txt', '/workspace/moved/2.txt');
    eq(mv.path, '/workspace/moved/2.txt', 'rename');
    eq(await sb.files.read('/workspace/moved/2.txt'), '2', 'moved content');
    await sb.files.remove('/workspace/moved');
    eq(await sb.files.exists('/workspace/moved/2.txt'), false, 'removed');
    await rejects(sb.files.list('/workspace/absent'), FileNotFoundError, 'list a missing dir');
  });

  await check('gzip: upload with Content-Encoding gzip, download with Accept-Encoding gzip', async () => {
    const big = 'compress me '.repeat(5000);
    await sb.files.write('/workspace/gz.txt', big, { gzip: true });
    eq(await sb.files.read('/workspace/gz.txt', { gzip: true }), big, 'round trip');
    const r = await request('GET', '/files?path=%2Fworkspace%2Fgz.txt', { headers: envdHeaders(sb, { 'Accept-Encoding': 'gzip' }) });
    eq(r.headers['content-encoding'], 'gzip', 'gzip answer');
    assert(r.body.length < big.length / 10, 'actually compressed');
    const plain = await request('GET', '/files?path=%2Fworkspace%2Fgz.txt', { headers: envdHeaders(sb) });
    eq([plain.headers['content-encoding'], plain.body.length], [undefined, big.length], 'identity by default');
  });

  await check('Sandbox.list: metadata query and state filter', async () => {
    const other = await create({ metadata: { job: 'conf-2' } });
    const mine = await Sandbox.list(Object.assign({ query: { metadata: { job: 'conf-1', app: 'x y' } } }, conn)).nextItems();
    eq(mine.map(s => s.sandboxId), [sb.sandboxId], 'metadata match');
    const none = await Sandbox.list(Object.assign({ query: { metadata: { job: 'conf-1', app: 'x' } } }, conn)).nextItems();
    eq(none.length, 0, 'all pairs must match');
    const paused = await Sandbox.list(Object.assign({ query: { state: ['paused'] } }, conn)).nextItems();
    assert(!paused.some(s => s.sandboxId === other.sandboxId), 'running sandbox not in the paused list');
    const pager = Sandbox.list(Object.assign({ limit: 1 }, conn));
    const p1 = await pager.nextItems();
    eq(p1.length, 1, 'page of 1');
    assert(pager.hasNext, 'X-Next-Token gives a next page');
    const p2 = await pager.nextItems();
    assert(p2.length === 1 && p2[0].sandboxId !== p1[0].sandboxId, 'second page differs');
    eq(await other.kill(), true, 'kill other');
  });

  await check('pause -> true, again -> false; envd unreachable (502, isRunning false)', async () => {
    await sb.files.write('/home/user/keep.txt', 'survives pause');
    // 2 s of short sleeps: after the resume most of it is still to run.
    const bg = await sb.commands.run('for i in 1 2 3 4 5 6 7 8 9 10; do sleep 0.2; done; echo after-resume', { background: true });
    eq(await sb.pause(), true, 'pause');
    eq(await sb.pause(), false, 'pause again (409)');
    eq(await sb.isRunning(), false, 'isRunning');
    await rejects(sb.commands.run('true'), SandboxNotFoundError, 'run while paused');
    const h = await request('GET', '/health', { headers: envdHeaders(sb) });
    eq(h.status, 502, 'envd through the proxy while paused');
    eq(JSON.parse(h.body).sandboxId, sb.sandboxId, '502 body names the sandbox');
    eq((await Sandbox.getInfo(sb.sandboxId, conn)).state, 'paused', 'state');
    await sleep(1300); // the paused process must not run on
    const st = await fakeState(sb.sandboxId);
    assert(!st.processes[0].stdoutTail.includes('after-resume'), 'frozen while paused');
    sb._bgPid = bg.pid;
  });

  await check('Sandbox.connect resumes (201), files and processes survive', async () => {
    assert(sb._bgPid, 'the pause check to have started a background process');
    const sb2 = await Sandbox.connect(sb.sandboxId, Object.assign({ timeoutMs: 600000 }, conn));
    eq(await sb2.isRunning(), true, 'running again');
    eq(await sb2.files.read('/home/user/keep.txt'), 'survives pause', 'file');
    const out = [];
    const h = await sb2.commands.connect(sb._bgPid, { onStdout: d => out.push(d) });
    eq((await h.wait()).exitCode, 0, 'process resumed and finished');
    eq(out.join(''), 'after-resume\n', 'its output after resume');
    const r = await apiReq('POST', `/v2/sandboxes/${sb.sandboxId}/connect`, { timeout: 60 });
    eq(r.status, 200, 'connect to a running sandbox is 200');
    const v1 = await apiReq('POST', `/sandboxes/${sb.sandboxId}/connect`, {});
    eq(v1.status, 400, 'v1 connect requires timeout');
  });

  await check('Host-header envd (C provider form): health, files, Start envelopes byte-exact', async () => {
    eq((await request('GET', '/health', { headers: envdHeaders(sb) })).status, 204, 'health');
    const up = await request('POST', '/files?path=%2Fworkspace%2Fin.txt', {
      headers: envdHeaders(sb, { 'Content-Type': 'application/octet-stream' }),
      body: 'raw upload',
    });
    eq(up.status, 200, 'upload');
    eq(JSON.parse(up.body), [{ path: '/workspace/in.txt', name: 'in.txt', type: 'file' }], 'upload reply');
    const nopath = await request('POST', '/files', { headers: envdHeaders(sb, { 'Content-Type': 'application/octet-stream' }), body: 'x' });
    eq(nopath.status, 400, 'octet-stream without path');
    const req = { process: { cmd: '/bin/bash', args: ['-l', '-c', 'cat /dev/stdin 2>/dev/null; cat in.txt; echo; exit 0'], cwd: '/workspace' }, stdin: false };
    const r = await request('POST', '/process.Process/Start', {
      headers: envdHeaders(sb, { 'Content-Type': 'application/connect+json', 'Connect-Protocol-Version': '1' }),
      body: envelope(req),
    });
    eq(r.status, 200, 'status');
    eq(r.headers['content-type'], 'application/connect+json', 'content type');
    const f = frames(r.body);
    assert(f[0].flags === 0 && Number.isInteger(f[0].msg.event.start.pid), 'start event first');
    const out = Buffer.concat(f.filter(x => x.msg.event && x.msg.event.data).map(x => Buffer.from(x.msg.event.data.stdout, 'base64')));
    eq(out.toString(), 'raw upload\n', 'stdout data (base64)');
    const end = f[f.length - 2].msg.event.end;
    eq(end, { exited: true, status: 'exit status 0' }, 'end event (proto3 JSON omits exitCode 0)');
    eq(f[f.length - 1].raw.toString('hex'), '02000000027b7d', 'end-stream envelope {}');
    const e3 = frames((await request('POST', '/process.Process/Start', {
      headers: envdHeaders(sb, { 'Content-Type': 'application/connect+json' }),
      body: envelope({ process: { cmd: '/bin/sh', args: ['-c', 'exit 3'] } }),
    })).body);
    eq(e3[e3.length - 2].msg.event.end, { exitCode: 3, exited: true, status: 'exit status 3', error: 'exit status 3' }, 'end event exit 3');
  });

  await check('envd auth: missing/wrong X-Access-Token -> 401; /health open', async () => {
    const h = { Host: `49983-${sb.sandboxId}.${info.domain}`, 'Content-Type': 'application/connect+json' };
    const r = await request('POST', '/process.Process/Start', { headers: h, body: envelope({ process: { cmd: 'true' } }) });
    eq(r.status, 401, 'Start without token');
    const w = await request('POST', '/process.Process/Start', { headers: Object.assign({ 'X-Access-Token': 'nope' }, h), body: envelope({ process: { cmd: 'true' } }) });
    eq(w.status, 401, 'Start with a wrong token');
    const f = await request('GET', '/files?path=%2Fworkspace%2Fin.txt', { headers: { Host: h.Host } });
    eq(f.status, 401, 'files without token or signature');
    eq((await request('GET', '/health', { headers: { Host: h.Host } })).status, 204, 'health needs no token');
    const port = await request('GET', '/health', { headers: { Host: `8080-${sb.sandboxId}.${info.domain}` } });
    eq(port.status, 502, 'closed port');
  });

  await check('envd routing: unknown procedure 404, GET on a procedure 405, wrong codec 415', async () => {
    const j = envdHeaders(sb, { 'Content-Type': 'application/json' });
    eq((await request('POST', '/process.Process/Explode', { headers: j, body: '{}' })).status, 404, 'unknown procedure');
    eq((await request('GET', '/process.Process/List', { headers: envdHeaders(sb) })).status, 405, 'GET');
    eq((await request('POST', '/process.Process/List', { headers: envdHeaders(sb, { 'Content-Type': 'application/proto' }), body: '' })).status, 415, 'binary codec');
    eq((await request('POST', '/process.Process/Start', { headers: j, body: '{}' })).status, 415, 'unary codec on a stream');
  });

  await check('back-pressure: a stream that is not read holds the command back; nothing is lost', async () => {
    const total = 8 * 1024 * 1024;
    const script = `head -c ${total} /dev/zero; echo done > bp-marker`;
    let got = 0;
    let res;
    const ended = new Promise((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port: info.port, method: 'POST', path: '/process.Process/Start',
        headers: envdHeaders(sb, { 'Content-Type': 'application/connect+json' }) }, r => {
        res = r;
        r.pause(); // read nothing for now
        const chunks = [];
        r.on('data', c => chunks.push(c));
        r.on('end', () => resolve(Buffer.concat(chunks)));
      });
      req.on('error', reject);
      req.end(envelope({ process: { cmd: '/bin/sh', args: ['-c', script] }, stdin: false }));
    });
    await sleep(1500);
    eq(await sb.files.exists('/home/user/bp-marker'), false, 'command blocked while the client does not read');
    res.resume();
    const f = frames(await ended);
    for (const x of f) if (x.msg.event && x.msg.event.data) got += Buffer.from(x.msg.event.data.stdout, 'base64').length;
    eq(got, total, 'every byte delivered');
    eq(f[f.length - 2].msg.event.end, { exited: true, status: 'exit status 0' }, 'end event');
    eq(await sb.files.read('/home/user/bp-marker'), 'done\n', 'finished once read');
  });

  await check('signed file URLs (downloadUrl/uploadUrl): no token needed, bad or expired signature 401', async () => {
    const host = { Host: `49983-${sb.sandboxId}.${info.domain}` };
    const rel = u => { const x = new URL(u); return x.pathname + x.search; };
    const down = rel(await sb.downloadUrl('/workspace/in.txt'));
    const g = await request('GET', down, { headers: host });
    eq([g.status, g.body.toString()], [200, 'raw upload'], 'signed download');
    const bad = down.replace(/signature=v1_./, m => m.slice(0, -1) + (m.endsWith('A') ? 'B' : 'A'));
    eq((await request('GET', bad, { headers: host })).status, 401, 'tampered signature');
    const up = rel(await sb.uploadUrl('/workspace/signed.txt', { useSignatureExpiration: 60 }));
    const p = await request('POST', up, { headers: Object.assign({ 'Content-Type': 'application/octet-stream' }, host), body: 'signed' });
    eq(p.status, 200, 'signed upload');
    eq(await sb.files.read('/workspace/signed.txt'), 'signed', 'uploaded content');
    const old = rel(await sb.downloadUrl('/workspace/in.txt', { useSignatureExpiration: -10 }));
    eq((await request('GET', old, { headers: host })).status, 401, 'expired signature');
    eq((await request('GET', down.replace('in.txt', 'signed.txt'), { headers: host })).status, 401, 'signature of another path');
  });

  await check('keepalive events every Keepalive-Ping-Interval seconds', async () => {
    const r = await request('POST', '/process.Process/Start', {
      headers: envdHeaders(sb, { 'Content-Type': 'application/connect+json', 'Keepalive-Ping-Interval': '1' }),
      body: envelope({ process: { cmd: '/bin/sh', args: ['-c', 'sleep 2.5'] }, stdin: false }),
    });
    const f = frames(r.body);
    const n = f.filter(x => x.msg.event && x.msg.event.keepalive).length;
    assert(n >= 2 && n <= 3, `2 or 3 keepalives in 2.5 s (got ${n})`);
  });

  await check('Connect-Timeout-Ms: end-stream deadline_exceeded, process killed', async () => {
    const r = await request('POST', '/process.Process/Start', {
      headers: envdHeaders(sb, { 'Content-Type': 'application/connect+json', 'Connect-Timeout-Ms': '300' }),
      body: envelope({ process: { cmd: '/bin/sh', args: ['-c', 'sleep 10'] } }),
    });
    const f = frames(r.body);
    const last = f[f.length - 1];
    eq(last.flags, 2, 'end-stream flag');
    eq(last.msg.error && last.msg.error.code, 'deadline_exceeded', 'error code');
    assert(!f.some(x => x.msg.event && x.msg.event.end), 'no end event');
    await sleep(200);
    eq((await fakeState(sb.sandboxId)).processes.length, 0, 'process killed');
  });

  await check('client disconnect from Start does not kill the process', async () => {
    const ac = new AbortController();
    const p = new Promise((resolve, reject) => {
      const req = http.request({
        host: '127.0.0.1', port: info.port, method: 'POST', path: '/process.Process/Start',
        headers: envdHeaders(sb, { 'Content-Type': 'application/connect+json' }), signal: ac.signal,
      }, res => res.once('data', () => { ac.abort(); resolve(); }));
      req.on('error', e => (e.name === 'AbortError' ? resolve() : reject(e)));
      req.end(envelope({ process: { cmd: '/bin/sh', args: ['-c', 'sleep 1; echo done > marker'] } }));
    });
    await p;
    await sleep(1500);
    eq(await sb.files.read('/home/user/marker'), 'done\n', 'the command finished after the client left');
  });

  await check('unary RPCs: List, SendSignal by pid (SIGTERM), not_found as HTTP 404', async () => {
    const h = await sb.commands.run('sleep 30', { background: true });
    const hdr = envdHeaders(sb, { 'Content-Type': 'application/json' });
    const l = await request('POST', '/process.Process/List', { headers: hdr, body: '{}' });
    eq(l.status, 200, 'List');
    assert(JSON.parse(l.body).processes.some(p => p.pid === h.pid), 'pid listed');
    const s = await request('POST', '/process.Process/SendSignal', { headers: hdr, body: JSON.stringify({ process: { pid: h.pid }, signal: 'SIGNAL_SIGTERM' }) });
    eq(s.status, 200, 'SendSignal');
    eq(JSON.parse(s.body), {}, 'SendSignal reply');
    const e = await rejects(h.wait(), CommandExitError, 'wait');
    eq(e.error, 'signal: terminated', 'SIGTERM status');
    const nf = await request('POST', '/process.Process/SendSignal', { headers: hdr, body: JSON.stringify({ process: { pid: 999999 }, signal: 'SIGNAL_SIGKILL' }) });
    eq(nf.status, 404, 'unknown pid');
    eq(JSON.parse(nf.body).code, 'not_found', 'Connect error code');
  });

  await check('tag selector: Start with a tag, Connect and SendSignal by tag, List shows it', async () => {
    const hdr = envdHeaders(sb, { 'Content-Type': 'application/connect+json' });
    const ac = new AbortController();
    const started = new Promise((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port: info.port, method: 'POST', path: '/process.Process/Start', headers: hdr, signal: ac.signal },
        res => res.once('data', () => resolve()));
      req.on('error', e => (e.name === 'AbortError' ? undefined : reject(e)));
      req.end(envelope({ process: { cmd: '/bin/sh', args: ['-c', 'sleep 30'] }, tag: 'job-7', stdin: false }));
    });
    await started;
    ac.abort();
    const j = envdHeaders(sb, { 'Content-Type': 'application/json' });
    const l = JSON.parse((await request('POST', '/process.Process/List', { headers: j, body: '{}' })).body);
    const me = l.processes.find(p => p.tag === 'job-7');
    assert(me && me.config.cmd === '/bin/sh' && me.config.args[1] === 'sleep 30', 'listed with tag and config');
    const conn2 = request('POST', '/process.Process/Connect', { headers: hdr, body: envelope({ process: { tag: 'job-7' } }) });
    await sleep(200);
    const s = await request('POST', '/process.Process/SendSignal', { headers: j, body: JSON.stringify({ process: { tag: 'job-7' }, signal: 'SIGNAL_SIGKILL' }) });
    eq(s.status, 200, 'signal by tag');
    const f = frames((await conn2).body);
    eq(f[0].msg.event.start.pid, me.pid, 'Connect by tag starts with the pid');
    eq(f[f.length - 2].msg.event.end, { exitCode: -1, status: 'signal: killed', error: 'signal: killed' }, 'end event of a killed process');
    eq(f[f.length - 1].msg, {}, 'end-stream');
    const nf = frames((await request('POST', '/process.Process/Connect', { headers: hdr, body: envelope({ process: { tag: 'job-7' } }) })).body);
    eq([nf.length, nf[0].flags, nf[0].msg.error.code], [1, 2, 'not_found'], 'Connect to a finished tag');
  });

  await check('deprecated forms: GET /sandboxes lists running only; POST /resume 409/201', async () => {
    const a = await create({ metadata: { dep: '1' } });
    const q = '/sandboxes?metadata=' + encodeURIComponent('dep=1');
    eq(JSON.parse((await apiReq('GET', q)).body).map(x => x.sandboxID), [a.sandboxId], 'running listed');
    eq((await apiReq('POST', `/sandboxes/${a.sandboxId}/resume`, { timeout: 60 })).status, 409, 'resume a running sandbox');
    await a.pause();
    eq(JSON.parse((await apiReq('GET', q)).body).length, 0, 'paused not listed');
    const r = await apiReq('POST', `/sandboxes/${a.sandboxId}/resume`, { timeout: 60 });
    eq(r.status, 201, 'resume a paused sandbox');
    eq(JSON.parse(r.body).sandboxID, a.sandboxId, 'Sandbox body');
    eq((await apiReq('POST', `/sandboxes/nosuchsandbox/resume`, { timeout: 60 })).status, 404, 'unknown');
    eq((await apiReq('POST', `/sandboxes/${a.sandboxId}/timeout`, {})).status, 400, 'timeout requires timeout');
    eq((await apiReq('POST', `/sandboxes/${a.sandboxId}/timeout`, { timeout: 30 })).status, 204, 'timeout');
    await a.kill();
  });

  await check('TTL: onTimeout pause -> paused; default -> killed; setTimeout extends', async () => {
    const p = await create({ timeoutMs: 1000, lifecycle: { onTimeout: 'pause' } });
    const k = await create({ timeoutMs: 1000 });
    const x = await create({ timeoutMs: 1000 });
    await x.setTimeout(30000);
    await sleep(1600);
    eq((await Sandbox.getInfo(p.sandboxId, conn)).state, 'paused', 'auto-paused');
    await rejects(Sandbox.getInfo(k.sandboxId, conn), SandboxNotFoundError, 'killed at TTL');
    eq((await Sandbox.getInfo(x.sandboxId, conn)).state, 'running', 'extended');
    eq((await request('POST', `/_fake/sandboxes/${x.sandboxId}/expire`)).status, 204, 'expire hook');
    await sleep(300);
    await rejects(Sandbox.getInfo(x.sandboxId, conn), SandboxNotFoundError, 'killed once expired');
  });

  await check('injected 503 capacity error -> ServiceBusyError; 429 + Retry-After retried by the SDK', async () => {
    let r = await request('POST', '/_fake/fail', { body: JSON.stringify({ status: 503, error_code: 'sandbox_capacity_unavailable', count: 1 }) });
    eq(r.status, 204, 'fault accepted');
    const e = await rejects(create(), ServiceBusyError, 'create under 503');
    assert(/Service temporarily unavailable/.test(e.message), 'SDK 503 message');
    await create(); // fault used up
    r = await request('POST', '/_fake/fail', { body: JSON.stringify({ status: 429, count: 1, retryAfter: 1 }) });
    const t0 = Date.now();
    await create();
    assert(Date.now() - t0 >= 900, 'SDK waited Retry-After before retrying');
    const raw = await apiReq('POST', '/v2/sandboxes', { templateID: 'base' });
    eq(raw.status, 201, 'faults exhausted');
    cleanups.push(JSON.parse(raw.body).sandboxID);
  });

  await check('concurrency limit: create and resume beyond it -> 429 RateLimitError', async () => {
    const running = JSON.parse((await request('GET', '/_fake/sandboxes')).body).sandboxes.filter(s => s.state === 'running' && !s.debug).length;
    eq((await request('POST', '/_fake/limits', { body: JSON.stringify({ maxRunning: running + 1 }) })).status, 204, 'limit set');
    const a = await create();
    await rejects(create(), RateLimitError, 'create over the limit');
    eq(await a.pause(), true, 'pause frees a slot');
    const b = await create();
    await rejects(Sandbox.connect(a.sandboxId, conn), RateLimitError, 'resume over the limit');
    await b.kill();
    eq(await (await Sandbox.connect(a.sandboxId, conn)).isRunning(), true, 'resume within the limit');
    await request('POST', '/_fake/limits', { body: JSON.stringify({ maxRunning: 0 }) });
    await a.kill();
  });

  await check('pause without memory: files survive, processes do not', async () => {
    const c = await create();
    await c.files.write('/workspace/cold.txt', 'disk');
    const h = await c.commands.run('sleep 30', { background: true });
    eq(await c.pause({ keepMemory: false }), true, 'pause');
    const c2 = await Sandbox.connect(c.sandboxId, conn);
    eq(await c2.files.read('/workspace/cold.txt'), 'disk', 'file');
    eq((await c2.commands.list()).some(p => p.pid === h.pid), false, 'process gone');
    await c2.kill();
  });

  await check('autoResume: envd traffic resumes a sandbox paused on timeout', async () => {
    const a = await create({ timeoutMs: 1000, lifecycle: { onTimeout: 'pause', autoResume: true } });
    await sleep(1500);
    eq((await Sandbox.getInfo(a.sandboxId, conn)).state, 'paused', 'paused at TTL');
    eq((await a.commands.run('echo woke')).stdout, 'woke\n', 'command on the paused sandbox');
    eq((await Sandbox.getInfo(a.sandboxId, conn)).state, 'running', 'resumed by traffic');
    const n = await create({ timeoutMs: 1000, lifecycle: { onTimeout: 'pause' } });
    await sleep(1500);
    eq(await n.isRunning(), false, 'no autoResume: still paused');
  });

  await check('a cut connection: the SDK handle fails, the command goes on, re-attach works', async () => {
    const h = await sb.commands.run('sleep 1; echo late', { background: true });
    eq((await request('POST', `/_fake/sandboxes/${sb.sandboxId}/drop`)).status, 204, 'drop');
    await rejects(h.wait(), Error, 'wait on the cut stream');
    const out = [];
    const h2 = await sb.commands.connect(h.pid, { onStdout: d => out.push(d) });
    eq((await h2.wait()).exitCode, 0, 'exit after re-attach');
    eq(out.join(''), 'late\n', 'output after re-attach');
  });

  await check('background descendants freeze with a pause and die with the sandbox', async () => {
    const d = await create();
    await d.commands.run('(while :; do echo t >> tick; sleep 0.05; done) >/dev/null 2>&1 & echo started');
    await sleep(300);
    eq(await d.pause(), true, 'pause');
    const dir = path.join(root, d.sandboxId, 'home', 'user', 'tick');
    const n1 = fs.statSync(dir).size;
    await sleep(500);
    eq(fs.statSync(dir).size, n1, 'no ticks while paused');
    const d2 = await Sandbox.connect(d.sandboxId, conn);
    await sleep(300);
    assert(fs.statSync(dir).size > n1, 'ticking again after the resume');
    const mark = `E2B_FAKE_ROOT=${path.join(root, d.sandboxId)}\0`;
    const alive = () => fs.readdirSync('/proc').filter(n => /^[0-9]+$/.test(n)).filter(n => {
      try { return fs.readFileSync(`/proc/${n}/environ`, 'utf8').includes(mark); } catch (e) { return false; }
    });
    assert(alive().length > 0, 'the loop runs on the host');
    await d2.kill();
    await sleep(200);
    eq(alive(), [], 'nothing of the sandbox left after kill');
  });

  await check('a paused sandbox E2B forgot -> connect SandboxNotFoundError (404)', async () => {
    const f = await create();
    eq(await f.pause(), true, 'pause');
    eq((await request('POST', `/_fake/sandboxes/${f.sandboxId}/forget`)).status, 204, 'forget');
    await rejects(Sandbox.connect(f.sandboxId, conn), SandboxNotFoundError, 'connect');
  });

  await check('kill -> true, again -> false; then 404 everywhere, envd 502', async () => {
    eq(await sb.kill(), true, 'kill');
    eq(await sb.kill(), false, 'kill again');
    await rejects(Sandbox.getInfo(sb.sandboxId, conn), SandboxNotFoundError, 'getInfo');
    await rejects(Sandbox.connect(sb.sandboxId, conn), SandboxNotFoundError, 'connect');
    eq((await request('GET', '/health', { headers: envdHeaders(sb) })).status, 502, 'envd');
    assert(!fs.existsSync(path.join(root, sb.sandboxId)), 'sandbox directory removed');
  });

  await check('E2B_DEBUG form: SDK without control plane reaches the debug envd', async () => {
    // The SDK reads E2B_DEBUG and E2B_SANDBOX_URL when a sandbox object is built.
    process.env.E2B_DEBUG = 'true';
    process.env.E2B_SANDBOX_URL = `http://127.0.0.1:${info.debug_port}`;
    let d;
    try {
      d = await Sandbox.create();
    } finally {
      delete process.env.E2B_DEBUG;
      delete process.env.E2B_SANDBOX_URL;
    }
    eq(d.sandboxId, 'debug_sandbox_id', 'debug sandbox id');
    const r = await d.commands.run('echo dbg; pwd');
    assert(r.stdout.startsWith('dbg\n') && r.stdout.trim().endsWith('/debug_sandbox_id/home/user'), `debug run (${JSON.stringify(r.stdout)})`);
    await d.files.write('/tmp/d.txt', 'debug file');
    eq(await d.files.read('/tmp/d.txt'), 'debug file', 'debug files');
  });
} finally {
  for (const id of cleanups) await apiReq('DELETE', `/sandboxes/${id}`).catch(() => {});
  fake.stdin.end();
  await new Promise(r => (fake.exitCode !== null ? r() : fake.on('exit', r)));
  fs.rmSync(root, { recursive: true, force: true });
}

console.log(`e2b fake conformance: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
