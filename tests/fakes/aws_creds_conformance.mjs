// Proves tests/fakes/aws_creds_fake.js faithful: the AWS SDK's own credential providers
// (@aws-sdk/credential-providers) fetch credentials from it and get exactly what it issued, and
// its error answers are understood by the SDK as the errors they stand for. Exits non-zero on
// the first mismatch. Run by tests/integration/test_aws_creds_fake.sh.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import {
  fromContainerMetadata, fromHttp, fromIni, fromInstanceMetadata, fromNodeProviderChain,
  fromTokenFile, fromWebToken,
} from '@aws-sdk/credential-providers';

const here = dirname(fileURLToPath(import.meta.url));
const ROLE = 'arn:aws:iam::123456789012:role/worker';
const CLEAR = ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_PROFILE',
  'AWS_WEB_IDENTITY_TOKEN_FILE', 'AWS_ROLE_ARN', 'AWS_ROLE_SESSION_NAME', 'AWS_REGION',
  'AWS_DEFAULT_REGION', 'AWS_ENDPOINT_URL', 'AWS_ENDPOINT_URL_STS',
  'AWS_CONTAINER_CREDENTIALS_FULL_URI', 'AWS_CONTAINER_CREDENTIALS_RELATIVE_URI',
  'AWS_CONTAINER_AUTHORIZATION_TOKEN', 'AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE',
  'AWS_EC2_METADATA_DISABLED', 'AWS_EC2_METADATA_SERVICE_ENDPOINT',
  'AWS_EC2_METADATA_V1_DISABLED', 'AWS_SHARED_CREDENTIALS_FILE', 'AWS_CONFIG_FILE'];
for (const k of CLEAR) delete process.env[k];

const dir = mkdtempSync(join(tmpdir(), 'aws-creds-conf-'));
process.env.AWS_SHARED_CREDENTIALS_FILE = join(dir, 'credentials');
process.env.AWS_CONFIG_FILE = join(dir, 'config');
writeFileSync(process.env.AWS_SHARED_CREDENTIALS_FILE, '');
writeFileSync(process.env.AWS_CONFIG_FILE, '');

const fake = spawn(process.execPath, [join(here, 'aws_creds_fake.js')],
  { stdio: ['pipe', 'pipe', 'inherit'] });
const port = await new Promise((resolve, reject) => {
  let out = '';
  fake.stdout.on('data', (d) => {
    out += d;
    const m = /listening (\d+)/.exec(out);
    if (m) resolve(Number(m[1]));
  });
  fake.on('exit', (code) => reject(new Error(`fake exited with ${code}`)));
});
const base = `http://127.0.0.1:${port}`;

async function ctl(path, body) {
  const r = await fetch(base + path, body === undefined ? {} : { method: 'POST', body: JSON.stringify(body) });
  assert.equal(r.status, 200, `control ${path}`);
  return r.json();
}

let passed = 0;
async function check(name, fn) {
  await ctl('/__fake/reset', {});
  try {
    await fn();
    passed++;
    console.log(`  ok   ${name}`);
  } catch (e) {
    console.log(`  FAIL ${name}: ${e.stack || e}`);
    process.exitCode = 1;
  }
}

async function sameAsIssued(creds, source) {
  const s = await ctl('/__fake/stats');
  assert.ok(s.issued, 'the fake issued nothing');
  assert.equal(s.issued.source, source);
  assert.equal(creds.accessKeyId, s.issued.AccessKeyId);
  assert.equal(creds.secretAccessKey, s.issued.SecretAccessKey);
  assert.equal(creds.sessionToken, s.issued.Token);
  assert.equal(creds.expiration.toISOString().replace(/\.\d{3}Z$/, 'Z'), s.issued.Expiration);
  return s;
}

async function rejects(promise, pred, what) {
  let err;
  try {
    await promise;
  } catch (e) {
    err = e;
  }
  assert.ok(err, `${what}: expected an error`);
  assert.ok(pred(err), `${what}: unexpected error ${err && (err.name + ': ' + err.message)}`);
}

const stsConfig = { endpoint: base, region: 'us-east-1' };
const tokenFile = join(dir, 'token');
const webToken = (await ctl('/__fake/stats'), 'fake-web-identity-token.eyJhdWQiOiJzdHMuYW1hem9uYXdzLmNvbSJ9');

await check('fromTokenFile (AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN, AWS_ROLE_SESSION_NAME)', async () => {
  writeFileSync(tokenFile, webToken);
  process.env.AWS_WEB_IDENTITY_TOKEN_FILE = tokenFile;
  process.env.AWS_ROLE_ARN = ROLE;
  process.env.AWS_ROLE_SESSION_NAME = 'conformance';
  try {
    const c = await fromTokenFile({ clientConfig: stsConfig })();
    const s = await sameAsIssued(c, 'sts');
    assert.equal(s.last.sts.Action, 'AssumeRoleWithWebIdentity');
    assert.equal(s.last.sts.Version, '2011-06-15');
    assert.equal(s.last.sts.RoleArn, ROLE);
    assert.equal(s.last.sts.RoleSessionName, 'conformance');
  } finally {
    delete process.env.AWS_WEB_IDENTITY_TOKEN_FILE;
    delete process.env.AWS_ROLE_ARN;
    delete process.env.AWS_ROLE_SESSION_NAME;
  }
});

await check('fromWebToken, and AWS_ENDPOINT_URL_STS picks the endpoint', async () => {
  process.env.AWS_ENDPOINT_URL_STS = base;
  try {
    const c = await fromWebToken({ roleArn: ROLE, webIdentityToken: webToken,
                                   clientConfig: { region: 'eu-west-1' } })();
    await sameAsIssued(c, 'sts');
  } finally {
    delete process.env.AWS_ENDPOINT_URL_STS;
  }
});

await check('STS errors: InvalidIdentityToken, AccessDenied, ValidationError', async () => {
  await rejects(fromWebToken({ roleArn: ROLE, webIdentityToken: 'wrong-token',
                               clientConfig: stsConfig })(),
    (e) => e.name === 'InvalidIdentityTokenException' && e.$metadata.httpStatusCode === 400,
    'wrong token');
  await ctl('/__fake/config', { roleArn: 'arn:aws:iam::123456789012:role/other' });
  await rejects(fromWebToken({ roleArn: ROLE, webIdentityToken: webToken, clientConfig: stsConfig })(),
    (e) => e.Code === 'AccessDenied' && e.$metadata.httpStatusCode === 403, 'other role');
  await ctl('/__fake/config', { roleArn: null });
  await rejects(fromWebToken({ roleArn: ROLE, webIdentityToken: webToken, roleSessionName: 'bad name!',
                               clientConfig: stsConfig })(),
    (e) => e.Code === 'ValidationError' && /roleSessionName/.test(e.message), 'bad session name');
});

await check('fromContainerMetadata (FULL_URI on loopback, AWS_CONTAINER_AUTHORIZATION_TOKEN)', async () => {
  process.env.AWS_CONTAINER_CREDENTIALS_FULL_URI = `${base}/v2/credentials/fake-task-role`;
  process.env.AWS_CONTAINER_AUTHORIZATION_TOKEN = 'fake-container-authorization-token';
  try {
    const c = await fromContainerMetadata()();
    const s = await sameAsIssued(c, 'container');
    assert.equal(s.last.container.authorization, true);
    process.env.AWS_CONTAINER_AUTHORIZATION_TOKEN = 'wrong';
    await rejects(fromContainerMetadata()(), (e) => /instance metadata service|401/.test(e.message),
      'wrong authorization');
  } finally {
    delete process.env.AWS_CONTAINER_CREDENTIALS_FULL_URI;
    delete process.env.AWS_CONTAINER_AUTHORIZATION_TOKEN;
  }
});

await check('fromHttp (EKS Pod Identity: AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE)', async () => {
  const f = join(dir, 'pod-identity-token');
  writeFileSync(f, 'fake-container-authorization-token');
  process.env.AWS_CONTAINER_CREDENTIALS_FULL_URI = `${base}/v2/credentials/fake-task-role`;
  process.env.AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE = f;
  try {
    const c = await fromHttp({})();
    await sameAsIssued(c, 'container');
    writeFileSync(f, 'wrong');
    await rejects(fromHttp({ maxRetries: 0 })(), (e) => /status: 401/.test(e.message),
      'wrong token file');
  } finally {
    delete process.env.AWS_CONTAINER_CREDENTIALS_FULL_URI;
    delete process.env.AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE;
  }
});

await check('fromInstanceMetadata (IMDSv2 token, role listing, credentials)', async () => {
  process.env.AWS_EC2_METADATA_SERVICE_ENDPOINT = base;
  try {
    const c = await fromInstanceMetadata()();
    const s = await sameAsIssued(c, 'imds');
    assert.equal(s.imdsToken, 1);
    assert.equal(s.imdsRole, 1);
    assert.equal(s.imdsCreds, 1);
    assert.equal(s.issued.token, true, 'credentials were fetched with the IMDSv2 token');
  } finally {
    delete process.env.AWS_EC2_METADATA_SERVICE_ENDPOINT;
  }
});

await check('IMDS without a token is 401 unless IMDSv1 is allowed', async () => {
  const r = await fetch(`${base}/latest/meta-data/iam/security-credentials/`);
  assert.equal(r.status, 401);
  const t = await fetch(`${base}/latest/api/token`, { method: 'PUT' });
  assert.equal(t.status, 400, 'token PUT without the TTL header');
  await ctl('/__fake/config', { imdsV1: true });
  const r2 = await fetch(`${base}/latest/meta-data/iam/security-credentials/`);
  assert.equal(r2.status, 200);
  assert.equal(await r2.text(), 'fake-instance-role');
});

await check('fromIni: static keys (credentials file wins over config)', async () => {
  writeFileSync(process.env.AWS_SHARED_CREDENTIALS_FILE,
    '[default]\naws_access_key_id = AKIDEFAULT\naws_secret_access_key = secretdefault\n\n' +
    '[work]\naws_access_key_id=AKIDWORK\naws_secret_access_key=secretwork\naws_session_token=tokwork\n');
  writeFileSync(process.env.AWS_CONFIG_FILE,
    '[profile work]\naws_access_key_id = AKIDFROMCONFIG\nregion = eu-west-1\n');
  try {
    const c = await fromIni({ profile: 'work', ignoreCache: true })();
    assert.equal(c.accessKeyId, 'AKIDWORK');
    assert.equal(c.secretAccessKey, 'secretwork');
    assert.equal(c.sessionToken, 'tokwork');
    const d = await fromIni({ ignoreCache: true })();
    assert.equal(d.accessKeyId, 'AKIDEFAULT');
  } finally {
    writeFileSync(process.env.AWS_SHARED_CREDENTIALS_FILE, '');
    writeFileSync(process.env.AWS_CONFIG_FILE, '');
  }
});

await check('fromIni: role_arn + web_identity_token_file goes to STS', async () => {
  writeFileSync(tokenFile, webToken);
  writeFileSync(process.env.AWS_CONFIG_FILE,
    `[profile irsa]\nrole_arn = ${ROLE}\nweb_identity_token_file = ${tokenFile}\n` +
    'role_session_name = from-profile\nregion = us-west-2\n');
  process.env.AWS_ENDPOINT_URL_STS = base;
  try {
    const c = await fromIni({ profile: 'irsa', ignoreCache: true, clientConfig: stsConfig })();
    const s = await sameAsIssued(c, 'sts');
    assert.equal(s.last.sts.RoleSessionName, 'from-profile');
  } finally {
    delete process.env.AWS_ENDPOINT_URL_STS;
    writeFileSync(process.env.AWS_CONFIG_FILE, '');
  }
});

await check('fromNodeProviderChain: environment first, then the container endpoint', async () => {
  process.env.AWS_CONTAINER_CREDENTIALS_FULL_URI = `${base}/v2/credentials/fake-task-role`;
  process.env.AWS_CONTAINER_AUTHORIZATION_TOKEN = 'fake-container-authorization-token';
  process.env.AWS_EC2_METADATA_DISABLED = 'true';
  try {
    const c = await fromNodeProviderChain()();
    await sameAsIssued(c, 'container');
    process.env.AWS_ACCESS_KEY_ID = 'AKIDENV';
    process.env.AWS_SECRET_ACCESS_KEY = 'secretenv';
    const e = await fromNodeProviderChain()();
    assert.equal(e.accessKeyId, 'AKIDENV');
  } finally {
    for (const k of ['AWS_CONTAINER_CREDENTIALS_FULL_URI', 'AWS_CONTAINER_AUTHORIZATION_TOKEN',
      'AWS_EC2_METADATA_DISABLED', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY']) delete process.env[k];
  }
});

await check('every Expiration spelling of the fake parses to the same instant in the SDK', async () => {
  process.env.AWS_CONTAINER_CREDENTIALS_FULL_URI = `${base}/v2/credentials/fake-task-role`;
  process.env.AWS_CONTAINER_AUTHORIZATION_TOKEN = 'fake-container-authorization-token';
  try {
    for (const expFormat of ['seconds', 'millis']) {
      await ctl('/__fake/config', { expFormat, ttl: 1000 });
      const before = Date.now();
      const c = await fromHttp({})();
      const left = c.expiration.getTime() - before;
      assert.ok(left > 998000 && left <= 1001000, `${expFormat}: expires in ${left} ms`);
    }
  } finally {
    delete process.env.AWS_CONTAINER_CREDENTIALS_FULL_URI;
    delete process.env.AWS_CONTAINER_AUTHORIZATION_TOKEN;
  }
});

await check('short expirations are issued on demand', async () => {
  await ctl('/__fake/config', { ttl: 2 });
  process.env.AWS_EC2_METADATA_SERVICE_ENDPOINT = base;
  try {
    const c = await fromInstanceMetadata()();
    const left = c.expiration.getTime() - Date.now();
    assert.ok(left > 0 && left <= 2000, `expires in ${left} ms`);
  } finally {
    delete process.env.AWS_EC2_METADATA_SERVICE_ENDPOINT;
  }
});

fake.stdin.end();
fake.kill('SIGTERM');
rmSync(dir, { recursive: true, force: true });
console.log(`aws_creds_fake conformance: ${passed} passed${process.exitCode ? ', FAILED' : ''}`);
