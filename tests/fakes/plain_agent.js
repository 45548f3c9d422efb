'use strict';
// The upstream (Lightdash) Node microVM agent's plain protocol, for the agent client's degraded
// mode: /ready, the Lambda runtime hooks, POST /exec (NDJSON), GET|POST|DELETE /files. Nothing
// else: no runs, no archives, no signals, no auth (a 404 for every other route).
//
//   node plain_agent.js <port | unix socket path> [--proxy-auth TOKEN]
//                       [--pool-bearer TOKEN --pool-identifier ID]
//
// Prints "listening <port>" (or "listening unix") on stdout once ready; stops when stdin closes.
// The options stand in for what fronts the agent in the cloud (the agent itself has no auth):
// --proxy-auth: the Lambda MicroVM endpoint proxy; a request without "X-aws-proxy-auth: TOKEN"
//   gets 401 and never reaches the agent.
// --pool-bearer/--pool-identifier: an Azure session pool; every request needs
//   "Authorization: Bearer TOKEN" (else 401) and the query parameter identifier=ID (else 400),
//   which the pool strips before forwarding.
const http = require('http');
const fs = require('fs');
const path = require('path');
const { spawn } = require('child_process');

const args = process.argv.slice(2);
const where = args[0];
const ai = args.indexOf('--proxy-auth');
const proxyAuth = ai >= 0 ? args[ai + 1] : null;
const pb = args.indexOf('--pool-bearer');
const poolBearer = pb >= 0 ? args[pb + 1] : null;
const pi = args.indexOf('--pool-identifier');
const poolIdentifier = pi >= 0 ? args[pi + 1] : null;

function text(res, status, body) {
    res.writeHead(status, { 'Content-Type': 'text/plain' });
    res.end(body);
}

function readBody(req) {
    return new Promise((resolve, reject) => {
        const parts = [];
        req.on('data', (c) => parts.push(c));
        req.on('end', () => resolve(Buffer.concat(parts)));
        req.on('error', reject);
    });
}

async function handleExec(req, res) {
    const raw = await readBody(req);
    let body;
    try {
        body = JSON.parse(raw.toString('utf8') || '{}');
    } catch (e) {
        text(res, 400, `invalid JSON body: ${e.message}`);
        return;
    }
    if (typeof body.cmd !== 'string') {
        text(res, 400, 'missing "cmd"');
        return;
    }
    res.writeHead(200, { 'Content-Type': 'application/x-ndjson' });
    const send = (obj) => res.write(JSON.stringify(obj) + '\n');
    let child;
    try {
        child = spawn('/bin/sh', ['-c', body.cmd], {
            cwd: body.cwd || '/',
            env: { ...process.env, ...(body.envs || {}) },
            detached: true,
            stdio: ['ignore', 'pipe', 'pipe'],
        });
    } catch (e) {
        send({ stream: 'stderr', data: Buffer.from(`agent: failed to spawn: ${e.message}\n`).toString('base64') });
        send({ exitCode: 127 });
        res.end();
        return;
    }
    let finished = false;
    let timer = null;
    const killGroup = () => {
        try {
            process.kill(-child.pid, 'SIGKILL');
        } catch (e) {
            /* already gone */
        }
    };
    child.stdout.on('data', (d) => send({ stream: 'stdout', data: d.toString('base64') }));
    child.stderr.on('data', (d) => send({ stream: 'stderr', data: d.toString('base64') }));
    if (body.timeoutMs && body.timeoutMs > 0) {
        timer = setTimeout(() => {
            if (finished) return;
            finished = true;
            killGroup();
            send({ timeout: true });
            res.end();
        }, body.timeoutMs);
    }
    child.on('error', (e) => {
        if (finished) return;
        finished = true;
        if (timer) clearTimeout(timer);
        send({ stream: 'stderr', data: Buffer.from(`agent: failed to spawn: ${e.message}\n`).toString('base64') });
        send({ exitCode: 127 });
        res.end();
    });
    child.on('close', (code) => {
        if (finished) return;
        finished = true;
        if (timer) clearTimeout(timer);
        // upstream: a signal death (code null) is reported as 128 + 1
        send({ exitCode: code === null ? 129 : code });
        res.end();
    });
    res.on('close', () => {
        if (!finished) {
            finished = true;
            if (timer) clearTimeout(timer);
            killGroup();
        }
    });
}

async function handleFiles(req, res, url) {
    const p = url.searchParams.get('path');
    if (!['GET', 'POST', 'DELETE'].includes(req.method)) {
        text(res, 405, 'method not allowed');
        return;
    }
    if (!p) {
        text(res, 400, 'missing "path"');
        return;
    }
    if (req.method === 'GET') {
        try {
            const data = fs.readFileSync(p);
            res.writeHead(200, { 'Content-Type': 'application/octet-stream' });
            res.end(data);
        } catch (e) {
            text(res, e.code === 'ENOENT' ? 404 : 500, e.message);
        }
    } else if (req.method === 'POST') {
        const data = await readBody(req);
        try {
            fs.mkdirSync(path.dirname(p), { recursive: true });
            fs.writeFileSync(p, data);
            res.writeHead(204);
            res.end();
        } catch (e) {
            text(res, 500, e.message);
        }
    } else {
        try {
            fs.unlinkSync(p);
        } catch (e) {
            if (e.code !== 'ENOENT') {
                text(res, 500, e.message);
                return;
            }
        }
        res.writeHead(204);
        res.end();
    }
}

const server = http.createServer(async (req, res) => {
    try {
        if (proxyAuth !== null && req.headers['x-aws-proxy-auth'] !== proxyAuth) {
            text(res, 401, 'Unauthorized');
            return;
        }
        const url = new URL(req.url, 'http://agent');
        if (poolBearer !== null && req.headers.authorization !== `Bearer ${poolBearer}`) {
            text(res, 401, 'Unauthorized');
            return;
        }
        if (poolIdentifier !== null) {
            if (url.searchParams.get('identifier') !== poolIdentifier) {
                text(res, 400, 'identifier is required');
                return;
            }
            url.searchParams.delete('identifier');
        }
        if (url.pathname.startsWith('/aws/lambda-microvms/runtime/v1/') || url.pathname === '/ready') {
            text(res, 200, 'ok');
        } else if (url.pathname === '/exec' && req.method === 'POST') {
            await handleExec(req, res);
        } else if (url.pathname === '/files') {
            await handleFiles(req, res, url);
        } else {
            text(res, 404, 'not found');
        }
    } catch (e) {
        if (!res.headersSent) text(res, 500, `agent error: ${e.message}`);
        else res.destroy();
    }
});

const port = /^\d+$/.test(where) ? Number(where) : null;
if (port === null && fs.existsSync(where)) fs.unlinkSync(where);
server.listen(port === null ? where : { host: '127.0.0.1', port }, () => {
    process.stdout.write(port === null ? 'listening unix\n' : `listening ${server.address().port}\n`);
});
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
