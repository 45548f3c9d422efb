#!/usr/bin/env node
// Strict fake of the AWS credential endpoints on one loopback port, for the credential chain
// tests (tests/integration/test_aws_creds.c) and proven against the AWS SDK's own providers by
// tests/fakes/aws_creds_conformance.mjs:
//   POST /                     STS AssumeRoleWithWebIdentity (query protocol, form body, XML
//                              response, STS's <ErrorResponse> XML on errors)
//   GET  <containerPath>       container credentials (ECS task roles, EKS Pod Identity): checks
//                              the Authorization header, answers the JSON credentials document
//   PUT  /latest/api/token     IMDSv2 session token (X-aws-ec2-metadata-token-ttl-seconds 1..21600)
//   GET  /latest/meta-data/iam/security-credentials/[<role>]  IMDS role listing and credentials;
//                              401 without a valid token unless IMDSv1 is allowed
// Test control (never part of an AWS API):
//   POST /__fake/config  JSON merged into the settings below; GET /__fake/stats; POST /__fake/reset
// Settings: ttl (seconds until the issued credentials expire; small values make refresh
// testable), webToken (the only accepted WebIdentityToken), roleArn (null: any well-formed ARN),
// authToken (the container Authorization value; null: none required), containerPath, role (the
// instance's role name; null: none attached), imdsV1 (allow GETs without a token), keys
// ({id, secret}: issue these instead of fresh ones), delayMs (before each credentials answer),
// expFormat ('seconds' default, 'millis': how Expiration is written),
// fail ({sts|container|imds|imdsToken: status}: answer that status instead of credentials or,
// for imdsToken, of the IMDSv2 token, as an instance metadata endpoint without IMDSv2 would),
// failTimes (> 0: the injected failures stop after that many answers; 0: they last).
// Usage: node aws_creds_fake.js [port]. Prints "listening <port>"; stops on SIGTERM/SIGINT or
// when stdin closes.
'use strict';

const http = require('node:http');
const crypto = require('node:crypto');

const DEFAULTS = {
  ttl: 3600,
  webToken: 'fake-web-identity-token.eyJhdWQiOiJzdHMuYW1hem9uYXdzLmNvbSJ9',
  roleArn: null,
  authToken: 'fake-container-authorization-token',
  containerPath: '/v2/credentials/fake-task-role',
  role: 'fake-instance-role',
  imdsV1: false,
  keys: null,
  expFormat: 'seconds',
  delayMs: 0,
  fail: {},
  failTimes: 0,
};
let settings = structuredClone(DEFAULTS);
let stats;
const imdsTokens = new Map(); // token -> expiry (ms since epoch)
let issued = 0;

function resetStats() {
  stats = { sts: 0, container: 0, imdsToken: 0, imdsRole: 0, imdsCreds: 0, issued: null,
            last: {} };
}
resetStats();

function isoSeconds(ms) {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

// RFC 3339 in UTC as the services write it: whole seconds, or with milliseconds. (The SDK's
// strict parser refuses numeric offsets, so no endpoint sends them.)
function expiration(ms) {
  if (settings.expFormat === 'millis') return new Date(ms).toISOString();
  return isoSeconds(ms);
}

function issue(source, extra) {
  issued++;
  const now = Date.now();
  const c = {
    AccessKeyId: settings.keys ? settings.keys.id : `ASIAFAKE${String(issued).padStart(12, '0')}`,
    SecretAccessKey: settings.keys ? settings.keys.secret :
      `fakeSecret${issued}/${crypto.randomBytes(21).toString('base64')}`,
    Token: `FakeSessionToken${issued}/${crypto.randomBytes(48).toString('base64')}`,
    Expiration: expiration(now + settings.ttl * 1000),
  };
  stats.issued = { source, ...c, ...extra };
  return c;
}

function xmlEscape(s) {
  return String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;').replace(/'/g, '&apos;');
}

function requestId() {
  return crypto.randomUUID();
}

function send(res, status, type, body, headers) {
  res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body),
                          ...(headers || {}) });
  res.end(body);
}

// The injected status for kind, or 0. With failTimes > 0 the injection ends after that many.
function failing(kind) {
  const status = settings.fail[kind];
  if (!status) return 0;
  if (settings.failTimes > 0 && --settings.failTimes === 0) settings.fail[kind] = 0;
  return status;
}

function later(fn) {
  if (settings.delayMs > 0) setTimeout(fn, settings.delayMs);
  else fn();
}

// ---- STS ----

function stsError(res, status, type, code, message) {
  const id = requestId();
  send(res, status, 'text/xml',
    '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">\n' +
    `  <Error>\n    <Type>${type}</Type>\n    <Code>${code}</Code>\n` +
    `    <Message>${xmlEscape(message)}</Message>\n  </Error>\n` +
    `  <RequestId>${id}</RequestId>\n</ErrorResponse>\n`, { 'x-amzn-RequestId': id });
}

function notNull(res, p, name, field) {
  if (p.get(name) !== null) return true;
  stsError(res, 400, 'Sender', 'ValidationError',
    `1 validation error detected: Value null at '${field}' failed to satisfy constraint: ` +
    'Member must not be null');
  return false;
}

function sts(req, res, body) {
  stats.sts++;
  const ctype = req.headers['content-type'] || '';
  if (!ctype.toLowerCase().startsWith('application/x-www-form-urlencoded')) {
    return stsError(res, 400, 'Sender', 'InvalidParameterValue',
      `Content-Type ${ctype || '(none)'} is not application/x-www-form-urlencoded`);
  }
  const p = new URLSearchParams(body);
  stats.last.sts = Object.fromEntries([...p.entries()].filter(([k]) => k !== 'WebIdentityToken'));
  const action = p.get('Action');
  if (action === null) return stsError(res, 400, 'Sender', 'MissingAction', 'Missing Action');
  if (p.get('Version') !== '2011-06-15') {
    return stsError(res, 400, 'Sender', 'InvalidAction',
      `Could not find operation ${action} for version ${p.get('Version') || 'NO_VERSION_SPECIFIED'}`);
  }
  if (action !== 'AssumeRoleWithWebIdentity') {
    return stsError(res, 400, 'Sender', 'InvalidAction',
      `Could not find operation ${action} for version 2011-06-15`);
  }
  if (!notNull(res, p, 'RoleArn', 'roleArn') || !notNull(res, p, 'RoleSessionName', 'roleSessionName') ||
      !notNull(res, p, 'WebIdentityToken', 'webIdentityToken')) return undefined;
  const roleArn = p.get('RoleArn');
  const session = p.get('RoleSessionName');
  const token = p.get('WebIdentityToken');
  if (roleArn.length < 20 || roleArn.length > 2048 ||
      !/^arn:aws[a-z-]*:iam::\d{12}:role\/[\w+=,.@/-]+$/.test(roleArn)) {
    return stsError(res, 400, 'Sender', 'ValidationError',
      `${roleArn} is invalid`);
  }
  if (!/^[\w+=,.@-]{2,64}$/.test(session)) {
    return stsError(res, 400, 'Sender', 'ValidationError',
      `1 validation error detected: Value '${session}' at 'roleSessionName' failed to satisfy ` +
      'constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]*');
  }
  if (token.length < 4 || token.length > 20000) {
    return stsError(res, 400, 'Sender', 'ValidationError',
      '1 validation error detected: Value at \'webIdentityToken\' failed to satisfy constraint: ' +
      'Member must have length between 4 and 20000');
  }
  const dur = p.get('DurationSeconds');
  if (dur !== null && !(/^\d+$/.test(dur) && +dur >= 900 && +dur <= 43200)) {
    return stsError(res, 400, 'Sender', 'ValidationError',
      `1 validation error detected: Value '${dur}' at 'durationSeconds' failed to satisfy ` +
      'constraint: Member must have value between 900 and 43200');
  }
  if (token !== settings.webToken) {
    return stsError(res, 400, 'Sender', 'InvalidIdentityToken',
      'The web identity token that was passed could not be validated by AWS. Get a new ' +
      'identity token from the identity provider and then retry the request.');
  }
  if (settings.roleArn && roleArn !== settings.roleArn) {
    return stsError(res, 403, 'Sender', 'AccessDenied',
      'Not authorized to perform sts:AssumeRoleWithWebIdentity');
  }
  const failSts = failing('sts');
  if (failSts) {
    return stsError(res, failSts, failSts >= 500 ? 'Receiver' : 'Sender',
      failSts >= 500 ? 'InternalFailure' : 'IDPCommunicationError', 'injected failure');
  }
  later(() => {
    const role = roleArn.split(':role/')[1];
    const account = roleArn.split(':')[4];
    const c = issue('sts', { RoleSessionName: session });
    const id = requestId();
    send(res, 200, 'text/xml',
      '<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">\n' +
      '  <AssumeRoleWithWebIdentityResult>\n' +
      '    <Audience>sts.amazonaws.com</Audience>\n' +
      '    <AssumedRoleUser>\n' +
      `      <AssumedRoleId>AROAFAKEROLEID000000:${xmlEscape(session)}</AssumedRoleId>\n` +
      `      <Arn>arn:aws:sts::${account}:assumed-role/${xmlEscape(role)}/${xmlEscape(session)}</Arn>\n` +
      '    </AssumedRoleUser>\n' +
      '    <Provider>arn:aws:iam::123456789012:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/FAKE</Provider>\n' +
      '    <Credentials>\n' +
      `      <AccessKeyId>${xmlEscape(c.AccessKeyId)}</AccessKeyId>\n` +
      `      <SecretAccessKey>${xmlEscape(c.SecretAccessKey)}</SecretAccessKey>\n` +
      `      <SessionToken>${xmlEscape(c.Token)}</SessionToken>\n` +
      `      <Expiration>${c.Expiration}</Expiration>\n` +
      '    </Credentials>\n' +
      '    <SubjectFromWebIdentityToken>system:serviceaccount:default:worker</SubjectFromWebIdentityToken>\n' +
      '  </AssumeRoleWithWebIdentityResult>\n' +
      `  <ResponseMetadata>\n    <RequestId>${id}</RequestId>\n  </ResponseMetadata>\n` +
      '</AssumeRoleWithWebIdentityResponse>\n', { 'x-amzn-RequestId': id });
  });
  return undefined;
}

// ---- container credentials ----

function container(req, res) {
  stats.container++;
  stats.last.container = { authorization: req.headers.authorization !== undefined };
  if (req.method !== 'GET') {
    return send(res, 405, 'application/json',
      JSON.stringify({ Code: 'MethodNotAllowed', Message: 'only GET' }));
  }
  if (settings.authToken !== null && req.headers.authorization !== settings.authToken) {
    return send(res, 401, 'application/json', JSON.stringify({
      Code: 'AccessDeniedException',
      Message: req.headers.authorization === undefined ? 'Authorization header is missing'
        : 'Authorization token is invalid' }));
  }
  const failContainer = failing('container');
  if (failContainer) {
    return send(res, failContainer, 'application/json',
      JSON.stringify({ Code: 'ServiceUnavailable', Message: 'injected failure' }));
  }
  later(() => {
    const c = issue('container');
    send(res, 200, 'application/json', JSON.stringify({
      RoleArn: 'arn:aws:iam::123456789012:role/fake-task-role', ...c }));
  });
  return undefined;
}

// ---- instance metadata ----

function imds(req, res, path) {
  const ttlName = 'x-aws-ec2-metadata-token-ttl-seconds';
  if (path === '/latest/api/token') {
    stats.imdsToken++;
    if (req.method !== 'PUT') return send(res, 405, 'text/plain', '');
    if (req.headers['x-forwarded-for'] !== undefined) return send(res, 403, 'text/plain', '');
    const failToken = failing('imdsToken');
    if (failToken) return send(res, failToken, 'text/plain', '');
    const ttl = req.headers[ttlName];
    if (ttl === undefined || !/^\d+$/.test(ttl) || +ttl < 1 || +ttl > 21600) {
      return send(res, 400, 'text/plain', '');
    }
    const tok = crypto.randomBytes(40).toString('base64');
    imdsTokens.set(tok, Date.now() + ttl * 1000);
    return send(res, 200, 'text/plain', tok, { [ttlName]: ttl });
  }
  if (req.method !== 'GET' && req.method !== 'HEAD') return send(res, 405, 'text/plain', '');
  const tok = req.headers['x-aws-ec2-metadata-token'];
  if (tok !== undefined) {
    if (!(imdsTokens.get(tok) > Date.now())) return send(res, 401, 'text/plain', '');
  } else if (!settings.imdsV1) {
    return send(res, 401, 'text/plain', '');
  }
  const prefix = '/latest/meta-data/iam/security-credentials/';
  if (!path.startsWith(prefix)) return send(res, 404, 'text/html', notFoundHtml());
  const rest = path.slice(prefix.length);
  if (rest === '') {
    stats.imdsRole++;
    stats.last.imds = { token: tok !== undefined };
    if (!settings.role) return send(res, 404, 'text/html', notFoundHtml());
    return send(res, 200, 'text/plain', settings.role);
  }
  stats.imdsCreds++;
  stats.last.imds = { token: tok !== undefined };
  if (rest !== settings.role) return send(res, 404, 'text/html', notFoundHtml());
  const failImds = failing('imds');
  if (failImds) return send(res, failImds, 'text/plain', '');
  later(() => {
    const c = issue('imds', { token: tok !== undefined });
    send(res, 200, 'text/plain', JSON.stringify({
      Code: 'Success', LastUpdated: isoSeconds(Date.now()), Type: 'AWS-HMAC',
      AccessKeyId: c.AccessKeyId, SecretAccessKey: c.SecretAccessKey, Token: c.Token,
      Expiration: c.Expiration }, null, 2));
  });
  return undefined;
}

function notFoundHtml() {
  return '<?xml version="1.0" encoding="iso-8859-1"?>\n<!DOCTYPE html>\n<html><head>' +
    '<title>404 - Not Found</title></head><body><h1>404 - Not Found</h1></body></html>\n';
}

// ---- control ----

function control(req, res, path, body) {
  if (path === '/__fake/stats' && req.method === 'GET') {
    return send(res, 200, 'application/json', JSON.stringify(stats));
  }
  if (path === '/__fake/reset' && req.method === 'POST') {
    settings = structuredClone(DEFAULTS);
    imdsTokens.clear();
    resetStats();
    return send(res, 200, 'application/json', '{}');
  }
  if (path === '/__fake/config' && req.method === 'POST') {
    let patch;
    try {
      patch = JSON.parse(body);
    } catch (e) {
      return send(res, 400, 'application/json', JSON.stringify({ error: String(e) }));
    }
    settings = { ...settings, ...patch, fail: { ...settings.fail, ...(patch.fail || {}) } };
    if (patch.resetStats) resetStats();
    return send(res, 200, 'application/json', JSON.stringify(settings));
  }
  return send(res, 404, 'application/json', '{"error":"no such control route"}');
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks).toString('utf8');
    const path = new URL(req.url, 'http://fake').pathname;
    try {
      if (path.startsWith('/__fake/')) return control(req, res, path, body);
      if (path.startsWith('/latest/')) return imds(req, res, path);
      if (path === settings.containerPath) return container(req, res);
      if (path === '/' && req.method === 'POST') return sts(req, res, body);
      return send(res, 404, 'text/plain', 'not found\n');
    } catch (e) {
      console.error(e);
      return send(res, 500, 'text/plain', 'fake error\n');
    }
  });
});

server.listen(Number(process.argv[2] || 0), '127.0.0.1', () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
const stop = () => server.close(() => process.exit(0)) && setTimeout(() => process.exit(0), 500);
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.resume();
