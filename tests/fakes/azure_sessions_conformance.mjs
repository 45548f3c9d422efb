// Drives Microsoft's own @azure/identity against tests/fakes/azure_sessions.js, so the token
// fakes cannot drift from what Entra ID, IMDS and the App Service identity endpoint answer:
// the SDK builds every request and parses every reply. The tokens it gets are then used on the
// pool endpoint as the worker uses them.
// Usage: NODE_EXTRA_CA_CERTS=ca.pem node azure_sessions_conformance.mjs <sandbox-agent> <dir> <cert> <key>
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import fs from 'node:fs';
import path from 'node:path';
import {
  ClientSecretCredential,
  WorkloadIdentityCredential,
  ManagedIdentityCredential,
  DefaultAzureCredential,
} from '@azure/identity';

const [agent, dir, cert, key] = process.argv.slice(2);
const here = path.dirname(fileURLToPath(import.meta.url));
const TENANT = '72f988bf-86f1-41af-91ab-2d7cd011db47';
const CLIENT = '11111111-2222-3333-4444-555555555555';
const SCOPE = 'https://dynamicsessions.io/.default';
const fedFile = path.join(dir, 'federated-token');
fs.writeFileSync(fedFile, 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6bGQ6d29ya2VyIn0.c2ln\n');

let failures = 0;
function check(name, ok, detail) {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${name}${ok || !detail ? '' : ': ' + detail}`);
  if (!ok) failures++;
}

const fake = spawn(
  process.execPath,
  [path.join(here, 'azure_sessions.js'), '--agent', agent, '--root', path.join(dir, 'sessions'), '--tls-cert', cert, '--tls-key', key,
    '--federated-token-file', fedFile, '--identity-header', 'hdr-secret', '--cooldown-s', '1'],
  { stdio: ['pipe', 'pipe', 'inherit'] },
);
const urls = JSON.parse(
  await new Promise((resolve, reject) => {
    createInterface({ input: fake.stdout }).once('line', resolve);
    fake.once('exit', (c) => reject(new Error(`fake exited ${c}`)));
  }),
);
const pool = urls.pools['data-app'];
// A private authority: MSAL would otherwise ask login.microsoftonline.com to validate it.
const opts = { authorityHost: urls.login, disableInstanceDiscovery: true };

async function poolGet(token, p) {
  const r = await fetch(pool + p, { headers: token ? { Authorization: `Bearer ${token}` } : {} });
  return { status: r.status, text: await r.text() };
}

try {
  const cs = await new ClientSecretCredential(TENANT, CLIENT, 'fake-client-secret', opts).getToken(SCOPE);
  check('client secret: the SDK gets a token with an expiry', !!cs.token && cs.expiresOnTimestamp > Date.now() + 3000 * 1000);
  const ready = await poolGet(cs.token, '/ready?identifier=session-0001');
  check('pool: the token opens a session and reaches its agent', ready.status === 200, `${ready.status} ${ready.text}`);
  const ex = await fetch(pool + '/exec?identifier=session-0001', {
    method: 'POST',
    headers: { Authorization: `Bearer ${cs.token}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ cmd: 'printf state > kept.txt; printf ok' }),
  });
  check('pool: exec runs in the session', ex.status === 200 && (await ex.text()).includes('"exitCode":0'));
  const kept = await poolGet(cs.token, `/files?identifier=session-0001&path=${encodeURIComponent(path.join(dir, 'x'))}`);
  check('pool: a missing file is the agent\'s 404', kept.status === 404, `${kept.status}`);
  check('pool: no token is 401', (await poolGet(null, '/ready?identifier=session-0001')).status === 401);
  check('pool: a bad identifier is 400', (await poolGet(cs.token, '/ready?identifier=ab')).status === 400);
  const stop = await fetch(pool + '/.management/stopSession?api-version=2025-02-02-preview&identifier=session-0001', {
    method: 'POST', headers: { Authorization: `Bearer ${cs.token}` },
  });
  check('pool: stopSession answers 200 text/plain', stop.status === 200 && /stopped\.$/.test(await stop.text()));

  try {
    await new ClientSecretCredential(TENANT, CLIENT, 'wrong', opts).getToken(SCOPE);
    check('client secret: a wrong secret fails', false);
  } catch (e) {
    check('client secret: a wrong secret fails with the Entra error', /AADSTS7000215/.test(e.message), e.message);
  }
  try {
    await new ClientSecretCredential(TENANT, CLIENT, 'fake-client-secret', opts).getToken('https://management.azure.com/.default');
    check('client secret: another scope fails', false);
  } catch (e) {
    check('client secret: another scope fails with invalid_scope', /AADSTS70011/.test(e.message), e.message);
  }

  const wi = await new WorkloadIdentityCredential({ tenantId: TENANT, clientId: CLIENT, tokenFilePath: fedFile, ...opts }).getToken(SCOPE);
  check('workload identity: the federated assertion is exchanged for a token', !!wi.token);
  check('workload identity: the token works on the pool', (await poolGet(wi.token, '/ready?identifier=session-0002')).status === 200);

  process.env.IDENTITY_ENDPOINT = `${urls.metadata}/msi/token`;
  process.env.IDENTITY_HEADER = 'hdr-secret';
  const msi = await new ManagedIdentityCredential().getToken(SCOPE);
  check('managed identity (App Service style): a token', !!msi.token && msi.expiresOnTimestamp > Date.now());
  check('managed identity token works on the pool', (await poolGet(msi.token, '/ready?identifier=session-0003')).status === 200);
  delete process.env.IDENTITY_ENDPOINT;
  delete process.env.IDENTITY_HEADER;

  process.env.AZURE_POD_IDENTITY_AUTHORITY_HOST = urls.metadata;
  const imds = await new ManagedIdentityCredential({ clientId: CLIENT }).getToken(SCOPE);
  check('managed identity (IMDS): a token for a user-assigned identity', !!imds.token);
  delete process.env.AZURE_POD_IDENTITY_AUTHORITY_HOST;

  Object.assign(process.env, { AZURE_TENANT_ID: TENANT, AZURE_CLIENT_ID: CLIENT, AZURE_CLIENT_SECRET: 'fake-client-secret', AZURE_AUTHORITY_HOST: urls.login });
  const def = await new DefaultAzureCredential({ disableInstanceDiscovery: true }).getToken(SCOPE);
  check('DefaultAzureCredential takes the client secret from the environment', !!def.token);

  await new Promise((r) => setTimeout(r, 1500));
  const sessions = await (await fetch(`${urls.metadata}/_fake/sessions`)).json();
  check('pool: idle sessions are destroyed after the cooldown', sessions['data-app'].length === 0, JSON.stringify(sessions));
} catch (e) {
  check('unexpected error', false, e && e.stack);
} finally {
  fake.kill('SIGTERM');
}
console.log(failures ? `${failures} check(s) failed` : 'all checks passed');
process.exit(failures ? 1 : 0);
