#!/usr/bin/env node
// s3rver (npm) on a loopback port for the integration tests, with what the npm release lacks:
//  - SigV4 header signatures are verified (s3rver 3.x only checks the access key id): the
//    request is re-signed with the aws4 package using the SignedHeaders it names and the
//    secret of its key pair (S3RVER / S3RVER); a mismatch answers 403 SignatureDoesNotMatch.
//  - Fault injection for retry tests, keyed on the object key:
//      key contains "slowdown-once": the first PUT of each (key, partNumber) answers 503 SlowDown;
//      key contains "complete-error": CompleteMultipartUpload answers 200 with an <Error> body.
// Usage: node s3rver.js <data-dir> <bucket>[,<bucket>...] [port]
// Prints "listening <port>" on stdout once ready; stops on SIGTERM/SIGINT or when stdin closes.
'use strict';

const S3rver = require('s3rver');
const aws4 = require('aws4');

const [dir, buckets, portArg] = process.argv.slice(2);
if (!dir || !buckets) {
  console.error('usage: s3rver.js <data-dir> <bucket>[,<bucket>...] [port]');
  process.exit(2);
}
const SECRETS = { S3RVER: 'S3RVER' };

function xmlError(ctx, status, code, message) {
  ctx.req.resume();
  ctx.status = status;
  ctx.type = 'application/xml';
  ctx.body =
    '<?xml version="1.0" encoding="UTF-8"?>\n' +
    `<Error><Code>${code}</Code><Message>${message}</Message>` +
    `<Resource>${ctx.path}</Resource><RequestId>fake</RequestId></Error>`;
}

const AUTH_RE = /^AWS4-HMAC-SHA256 Credential=([^/]+)\/(\d{8})\/([^/]+)\/([^/]+)\/aws4_request, ?SignedHeaders=([^,]+), ?Signature=([0-9a-f]{64})$/;

function verifySigV4(ctx) {
  const authz = ctx.get('authorization');
  if (!authz) return null; // anonymous: s3rver's own rules apply
  const m = AUTH_RE.exec(authz);
  if (!m) return ['AuthorizationHeaderMalformed', 'The authorization header is malformed.'];
  const [, keyId, , region, service, signedHeaders, signature] = m;
  const secret = SECRETS[keyId];
  if (!secret) return null; // s3rver answers InvalidAccessKeyId
  const headers = {};
  for (const name of signedHeaders.split(';')) {
    const v = ctx.req.headers[name];
    if (v === undefined) return ['SignatureDoesNotMatch', `Signed header ${name} is missing.`];
    headers[name] = Array.isArray(v) ? v.join(',') : v;
  }
  const opts = {
    host: headers.host,
    method: ctx.method,
    path: ctx.req.url,
    service,
    region,
    headers,
  };
  aws4.sign(opts, { accessKeyId: keyId, secretAccessKey: secret });
  const want = /Signature=([0-9a-f]{64})/.exec(opts.headers.Authorization)[1];
  if (want !== signature) {
    return [
      'SignatureDoesNotMatch',
      'The request signature we calculated does not match the signature you provided. ' +
        'Check your key and signing method.',
    ];
  }
  return null;
}

const seenSlowdown = new Set();

const server = new S3rver({
  address: '127.0.0.1',
  port: portArg ? Number(portArg) : 0,
  silent: true,
  directory: dir,
  serviceEndpoint: 'localhost', // <bucket>.s3.localhost is virtual-host style
  configureBuckets: buckets.split(',').map(name => ({ name })),
});

// Runs before s3rver's own middleware.
server.middleware.unshift(async (ctx, next) => {
  const bad = verifySigV4(ctx);
  if (bad) return xmlError(ctx, 403, bad[0], bad[1]);
  const path = decodeURIComponent(ctx.path);
  if (ctx.method === 'PUT' && path.includes('slowdown-once')) {
    const id = `${path}#${ctx.query.partNumber || ''}`;
    if (!seenSlowdown.has(id)) {
      seenSlowdown.add(id);
      ctx.req.resume();
      return xmlError(ctx, 503, 'SlowDown', 'Please reduce your request rate.');
    }
  }
  if (ctx.method === 'POST' && 'uploadId' in ctx.query && path.includes('complete-error')) {
    ctx.req.resume();
    ctx.status = 200;
    ctx.type = 'application/xml';
    ctx.body =
      '<?xml version="1.0" encoding="UTF-8"?>\n\n\n' +
      '<Error><Code>InternalError</Code><Message>We encountered an internal error. ' +
      'Please try again.</Message><RequestId>fake</RequestId></Error>';
    return undefined;
  }
  return next();
});

server.run().then(
  ({ port }) => {
    process.stdout.write(`listening ${port}\n`);
  },
  err => {
    console.error(`s3rver: ${err.message}`);
    process.exit(1);
  },
);

const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.resume();
