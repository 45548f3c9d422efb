// Drives AWS's own @aws-sdk/client-lambda-microvms against tests/fakes/lambda_microvm.js, so
// the fake cannot drift from the service model the SDK was generated from: every call below
// is serialised, signed and parsed by the SDK, and its errors are mapped by the SDK.
// Usage: node lambda_microvm_conformance.mjs <sandbox-agent> <scratch-dir>
// Exit 0 when every check held; prints one line per check.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import {
  LambdaMicrovmsClient,
  RunMicrovmCommand,
  GetMicrovmCommand,
  ListMicrovmsCommand,
  SuspendMicrovmCommand,
  ResumeMicrovmCommand,
  TerminateMicrovmCommand,
  CreateMicrovmAuthTokenCommand,
  ResourceNotFoundException,
  ConflictException,
  ValidationException,
} from '@aws-sdk/client-lambda-microvms';

const [agent, scratch] = process.argv.slice(2);
const here = path.dirname(fileURLToPath(import.meta.url));
const REGION = 'eu-west-1';
const creds = { accessKeyId: 'AKIDLAMBDAFAKE', secretAccessKey: 'lambda-fake-secret' };

let failures = 0;
function check(name, ok, detail) {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${name}${ok || !detail ? '' : ': ' + detail}`);
  if (!ok) failures++;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const fake = spawn(
  process.execPath,
  [path.join(here, 'lambda_microvm.js'), '--agent', agent, '--root', scratch, '--time-scale', '0.01', '--region', REGION],
  { stdio: ['pipe', 'pipe', 'inherit'] },
);
const line = await new Promise((resolve, reject) => {
  createInterface({ input: fake.stdout }).once('line', resolve);
  fake.once('exit', (c) => reject(new Error(`fake exited ${c}`)));
});
const { endpoint } = JSON.parse(line);
const client = new LambdaMicrovmsClient({ region: REGION, endpoint, credentials: creds, maxAttempts: 3 });
const fakeCall = (p, body) =>
  fetch(endpoint + p, { method: body ? 'POST' : 'GET', body: body ? JSON.stringify(body) : undefined }).then((r) => r.json());

async function waitState(id, want, ms = 10000) {
  const end = Date.now() + ms;
  let st;
  while (Date.now() < end) {
    st = (await client.send(new GetMicrovmCommand({ microvmIdentifier: id }))).state;
    if (st === want) return st;
    await sleep(20);
  }
  return st;
}

try {
  const run = await client.send(
    new RunMicrovmCommand({
      imageIdentifier: `arn:aws:lambda:${REGION}:123456789012:microvm-image:data-app`,
      executionRoleArn: 'arn:aws:iam::123456789012:role/sandbox',
      ingressNetworkConnectors: [`arn:aws:lambda:${REGION}:aws:network-connector:aws-network-connector:ALL_INGRESS`],
      egressNetworkConnectors: [`arn:aws:lambda:${REGION}:aws:network-connector:aws-network-connector:INTERNET_EGRESS`],
      idlePolicy: { maxIdleDurationSeconds: 60, suspendedDurationSeconds: 3600, autoResumeEnabled: true },
      maximumDurationInSeconds: 28800,
      runHookPayload: JSON.stringify({ envs: { FOO: 'bar' } }),
    }),
  );
  check('RunMicrovm returns PENDING with an id and an endpoint', run.state === 'PENDING' && /^microvm-/.test(run.microvmId) && !!run.endpoint);
  check('startedAt is parsed as a date', run.startedAt instanceof Date);
  const id = run.microvmId;
  check('GetMicrovm reaches RUNNING', (await waitState(id, 'RUNNING')) === 'RUNNING');

  const tok = await client.send(
    new CreateMicrovmAuthTokenCommand({ microvmIdentifier: id, expirationInMinutes: 60, allowedPorts: [{ allPorts: {} }] }),
  );
  const proxyAuth = tok.authToken && tok.authToken['X-aws-proxy-auth'];
  check('CreateMicrovmAuthToken returns an X-aws-proxy-auth header value', typeof proxyAuth === 'string' && proxyAuth.length > 10);

  const r403 = await fetch(run.endpoint + '/ready');
  check('endpoint without a token answers 403', r403.status === 403);
  const hdrs = { 'X-aws-proxy-auth': proxyAuth, 'X-aws-proxy-port': '8080' };
  const ready = await fetch(run.endpoint + '/ready', { headers: hdrs });
  check('endpoint with the token reaches the agent', ready.status === 200);
  const ex = await fetch(run.endpoint + '/exec', {
    method: 'POST',
    headers: { ...hdrs, 'Content-Type': 'application/json' },
    body: JSON.stringify({ cmd: 'printf hi; exit 3' }),
  });
  const lines = (await ex.text()).trim().split('\n').map((l) => JSON.parse(l));
  const out = lines.filter((l) => l.stream === 'stdout').map((l) => Buffer.from(l.data, 'base64').toString()).join('');
  check('exec through the endpoint streams output and the exit code', out === 'hi' && lines.at(-1).exitCode === 3, JSON.stringify(lines));

  try {
    await client.send(new ResumeMicrovmCommand({ microvmIdentifier: id }));
    check('ResumeMicrovm of a RUNNING microVM is a ConflictException', false);
  } catch (e) {
    check('ResumeMicrovm of a RUNNING microVM is a ConflictException', e instanceof ConflictException && e.$metadata.httpStatusCode === 409, e.name);
  }
  await client.send(new SuspendMicrovmCommand({ microvmIdentifier: id }));
  check('SuspendMicrovm reaches SUSPENDED', (await waitState(id, 'SUSPENDED')) === 'SUSPENDED');
  await client.send(new ResumeMicrovmCommand({ microvmIdentifier: id }));
  check('ResumeMicrovm reaches RUNNING', (await waitState(id, 'RUNNING')) === 'RUNNING');

  check('idle policy suspends a microVM without inbound traffic', (await waitState(id, 'SUSPENDED', 5000)) === 'SUSPENDED');
  const woke = await fetch(run.endpoint + '/ready', { headers: hdrs });
  check('inbound traffic auto-resumes a suspended microVM', woke.status === 200 && (await waitState(id, 'RUNNING')) === 'RUNNING');

  const list = await client.send(new ListMicrovmsCommand({ maxResults: 10 }));
  check('ListMicrovms lists it', list.items.some((i) => i.microvmId === id && i.imageArn.includes('data-app')));

  try {
    await client.send(new CreateMicrovmAuthTokenCommand({ microvmIdentifier: id, expirationInMinutes: 61, allowedPorts: [{ port: 8080 }] }));
    check('expirationInMinutes 61 is a ValidationException', false);
  } catch (e) {
    check('expirationInMinutes 61 is a ValidationException', e instanceof ValidationException && e.$metadata.httpStatusCode === 400, e.name);
  }

  await fakeCall('/_fake/fail', { op: 'GetMicrovm', status: 429, type: 'ThrottlingException', count: 1, retryAfter: 0 });
  const before = (await fakeCall('/_fake/requests')).GetMicrovm;
  const got = await client.send(new GetMicrovmCommand({ microvmIdentifier: id }));
  const after = (await fakeCall('/_fake/requests')).GetMicrovm;
  check('a ThrottlingException is retried by the SDK', got.microvmId === id && after - before === 2, `${before}->${after}`);

  await client.send(new TerminateMicrovmCommand({ microvmIdentifier: id }));
  await client.send(new TerminateMicrovmCommand({ microvmIdentifier: id }));
  check('TerminateMicrovm is idempotent and reaches TERMINATED', (await waitState(id, 'TERMINATED')) === 'TERMINATED');

  try {
    await client.send(new GetMicrovmCommand({ microvmIdentifier: 'microvm-00000000-0000-0000-0000-000000000000' }));
    check('an unknown id is a ResourceNotFoundException', false);
  } catch (e) {
    check('an unknown id is a ResourceNotFoundException', e instanceof ResourceNotFoundException && e.$metadata.httpStatusCode === 404, e.name);
  }

  const bad = new LambdaMicrovmsClient({ region: REGION, endpoint, credentials: { ...creds, secretAccessKey: 'wrong' }, maxAttempts: 1 });
  try {
    await bad.send(new ListMicrovmsCommand({}));
    check('a wrong secret key is refused', false);
  } catch (e) {
    check('a wrong secret key is refused', e.$metadata.httpStatusCode === 403 && e.name === 'InvalidSignatureException', e.name);
  }
  const wrongRegion = new LambdaMicrovmsClient({ region: 'us-east-1', endpoint, credentials: creds, maxAttempts: 1 });
  try {
    await wrongRegion.send(new ListMicrovmsCommand({}));
    check('a request signed for another region is refused', false);
  } catch (e) {
    check('a request signed for another region is refused', e.$metadata.httpStatusCode === 403, e.name);
  }

  try {
    await client.send(new RunMicrovmCommand({ imageIdentifier: 'x', idlePolicy: { maxIdleDurationSeconds: 10, suspendedDurationSeconds: 0, autoResumeEnabled: true } }));
    check('maxIdleDurationSeconds below 60 is a ValidationException', false);
  } catch (e) {
    check('maxIdleDurationSeconds below 60 is a ValidationException', e instanceof ValidationException, e.name);
  }
} catch (e) {
  check('unexpected error', false, e && e.stack);
} finally {
  fake.kill('SIGTERM');
}
console.log(failures ? `${failures} check(s) failed` : 'all checks passed');
process.exit(failures ? 1 : 0);
