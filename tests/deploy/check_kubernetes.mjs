// Checks the Kubernetes manifests under deploy/kubernetes/: strict YAML parse (duplicate keys
// are errors) and the fields an operator relies on. Prints one line per problem and exits 1
// when there is any; with --env FILE prints the worker container's environment (secret
// references resolved from secret.example.yaml) as NAME=VALUE lines for --check-config.
//   node check_kubernetes.mjs DIR [--env DEPLOYMENT_FILE]
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const YAML = require(path.resolve(path.dirname(new URL(import.meta.url).pathname),
                                  '../fakes/node_modules/yaml'));

const dir = process.argv[2];
const envFile = process.argv[3] === '--env' ? process.argv[4] : null;
const problems = [];
const bad = (file, msg) => problems.push(`${path.relative(dir, file)}: ${msg}`);

function load(file) {
  const docs = YAML.parseAllDocuments(fs.readFileSync(file, 'utf8'), { uniqueKeys: true, strict: true });
  const out = [];
  for (const d of docs) {
    for (const e of d.errors) bad(file, `YAML: ${e.message}`);
    const v = d.toJS();
    if (v === null || v === undefined) continue;
    out.push(v);
  }
  return out;
}

const files = [];
(function walk(d) {
  for (const n of fs.readdirSync(d).sort()) {
    const p = path.join(d, n);
    if (fs.statSync(p).isDirectory()) walk(p);
    else if (/\.ya?ml$/.test(n)) files.push(p);
  }
})(dir);

const all = [];
for (const f of files) for (const o of load(f)) all.push({ file: f, o });
for (const { file, o } of all) {
  if (!o.apiVersion || !o.kind || !o.metadata || !o.metadata.name)
    bad(file, `a document lacks apiVersion, kind or metadata.name: ${JSON.stringify(o).slice(0, 80)}`);
}

const secret = all.find(x => x.o.kind === 'Secret');
const secretKeys = new Set(secret ? Object.keys(secret.o.stringData || {}) : []);
if (!secret) problems.push('no example Secret (secret.example.yaml)');

const sel = (labels, match) => match && Object.entries(match).every(([k, v]) => labels && labels[k] === v);
const PROVIDER_REQUIRED = {
  'lambda-microvm': ['LAMBDA_MICROVM_DATA_APP_IMAGE_ARN', 'LAMBDA_MICROVM_AI_WRITEBACK_IMAGE_ARN'],
  'azure-container-sessions': ['AZURE_CONTAINER_SESSIONS_DATA_APP_POOL_ENDPOINT',
                               'AZURE_CONTAINER_SESSIONS_AI_WRITEBACK_POOL_ENDPOINT'],
  e2b: ['E2B_API_KEY'],
};
const SECRET_NAME = /(_KEY|_TOKEN|_SECRET|PASSWORD|^REDIS_URL)$/;

function checkDeployment(file, d) {
  const spec = d.spec || {}, pod = (spec.template || {}).spec || {};
  const podLabels = ((spec.template || {}).metadata || {}).labels || {};
  if (!sel(podLabels, (spec.selector || {}).matchLabels)) bad(file, 'Deployment selector does not match the pod labels');
  const c = (pod.containers || []).find(x => x.name === 'worker');
  if (!c) { bad(file, 'Deployment has no container "worker"'); return null; }
  const env = {};
  for (const e of c.env || []) {
    if (e.name in env) bad(file, `env ${e.name} set twice`);
    env[e.name] = e;
    if ('value' in e && SECRET_NAME.test(e.name)) bad(file, `${e.name} is a literal value, not a secretKeyRef`);
    const ref = e.valueFrom && e.valueFrom.secretKeyRef;
    if (ref && !secretKeys.has(ref.key)) bad(file, `${e.name}: secret key "${ref.key}" is not in the example Secret`);
  }
  const val = n => env[n] && env[n].value;
  const prov = val('SANDBOX_PROVIDER');
  if (!prov) bad(file, 'SANDBOX_PROVIDER is not set explicitly (its default, e2b, may not be built in)');
  else if (!PROVIDER_REQUIRED[prov]) bad(file, `SANDBOX_PROVIDER=${prov} is not a production provider`);
  else for (const n of PROVIDER_REQUIRED[prov]) if (!env[n]) bad(file, `SANDBOX_PROVIDER=${prov} needs ${n}`);
  if (val('NODE_ENV') !== 'production') bad(file, 'NODE_ENV should be production');
  for (const n of ['REDIS_URL', 'SANDBOX_QUEUE_PREFIX', 'WORKER_SHUTDOWN_GRACE_MS', 'WORKER_HTTP_ADDR', 'WORKER_CONCURRENCY'])
    if (!env[n]) bad(file, `${n} is not set`);
  if (env.REDIS_URL && !(env.REDIS_URL.valueFrom || {}).secretKeyRef) bad(file, 'REDIS_URL must come from a Secret');
  if (!(env.WORKER_NAME && env.WORKER_NAME.valueFrom && env.WORKER_NAME.valueFrom.fieldRef))
    bad(file, 'WORKER_NAME should be the pod name (fieldRef metadata.name)');

  const grace = Number(val('WORKER_SHUTDOWN_GRACE_MS')) / 1000;
  if (!(pod.terminationGracePeriodSeconds >= grace + 15))
    bad(file, `terminationGracePeriodSeconds ${pod.terminationGracePeriodSeconds} leaves under 15 s after the ${grace} s drain`);

  const ports = Object.fromEntries((c.ports || []).map(p => [p.name, p.containerPort]));
  const http = String(val('WORKER_HTTP_ADDR') || '').split(':').pop();
  if (ports.status === undefined || String(ports.status) !== http) bad(file, `port "status" (${ports.status}) is not WORKER_HTTP_ADDR's port (${http})`);
  for (const [probe, p] of [['livenessProbe', '/healthz'], ['readinessProbe', '/readyz']]) {
    const g = (c[probe] || {}).httpGet;
    if (!g || g.path !== p || !(g.port in ports)) bad(file, `${probe} should GET ${p} on a declared port`);
  }
  const r = c.resources || {};
  for (const k of ['requests', 'limits'])
    if (!(r[k] && r[k].memory)) bad(file, `resources.${k}.memory is not set`);
  if (!(r.requests && r.requests.cpu)) bad(file, 'resources.requests.cpu is not set');
  const ps = pod.securityContext || {}, cs = c.securityContext || {};
  if (ps.runAsNonRoot !== true) bad(file, 'pod securityContext.runAsNonRoot is not true');
  if (!((ps.seccompProfile || cs.seccompProfile || {}).type)) bad(file, 'no seccompProfile');
  if (cs.allowPrivilegeEscalation !== false) bad(file, 'allowPrivilegeEscalation is not false');
  if (cs.readOnlyRootFilesystem !== true) bad(file, 'readOnlyRootFilesystem is not true');
  if (cs.privileged) bad(file, 'privileged container');
  if (!((cs.capabilities || {}).drop || []).includes('ALL')) bad(file, 'capabilities do not drop ALL');
  return { env, podLabels, ports };
}

const deployments = all.filter(x => x.o.kind === 'Deployment');
if (!deployments.length) problems.push('no Deployment');
const info = new Map();
for (const { file, o } of deployments) info.set(file, checkDeployment(file, o));

const main = all.find(x => x.o.kind === 'Deployment' && path.basename(x.file) === 'worker.yaml');
const mainInfo = main && info.get(main.file);
const mainFile = main ? main.file : dir;
const kinds = k => all.filter(x => x.o.kind === k && x.file === mainFile).map(x => x.o);
if (mainInfo) {
  const prefix = mainInfo.env.SANDBOX_QUEUE_PREFIX && mainInfo.env.SANDBOX_QUEUE_PREFIX.value;
  const svc = kinds('Service')[0];
  if (!svc) bad(mainFile, 'no Service');
  else {
    if (!sel(mainInfo.podLabels, svc.spec.selector)) bad(mainFile, 'Service selector does not match the pods');
    for (const p of svc.spec.ports || [])
      if (!(p.targetPort in mainInfo.ports)) bad(mainFile, `Service port ${p.name} targets an undeclared port`);
  }
  const sm = kinds('ServiceMonitor')[0] || kinds('PodMonitor')[0];
  if (!sm) bad(mainFile, 'no ServiceMonitor or PodMonitor');
  else if (svc) {
    if (!sel(svc.metadata.labels, (sm.spec.selector || {}).matchLabels)) bad(mainFile, 'ServiceMonitor selector does not match the Service');
    const names = (svc.spec.ports || []).map(p => p.name);
    for (const e of sm.spec.endpoints || [])
      if (!names.includes(e.port) || e.path !== '/metrics') bad(mainFile, 'ServiceMonitor endpoint should scrape /metrics on a Service port');
  }
  const pdb = kinds('PodDisruptionBudget')[0];
  if (!pdb) bad(mainFile, 'no PodDisruptionBudget');
  else if (!sel(mainInfo.podLabels, pdb.spec.selector.matchLabels)) bad(mainFile, 'PodDisruptionBudget selector does not match the pods');
  const so = kinds('ScaledObject')[0];
  const tas = new Map(kinds('TriggerAuthentication').map(t => [t.metadata.name, t]));
  if (!so) bad(mainFile, 'no KEDA ScaledObject');
  else {
    if (so.spec.scaleTargetRef.name !== main.o.metadata.name) bad(mainFile, 'ScaledObject does not target the Deployment');
    if (main.o.spec.replicas !== undefined) bad(mainFile, 'Deployment sets replicas while KEDA owns the count');
    const trig = so.spec.triggers || [];
    const has = k => trig.some(t => t.type === 'redis-streams' && t.metadata && t.metadata[k]);
    if (!has('lagCount')) bad(mainFile, 'no redis-streams trigger on lagCount');
    if (!has('pendingEntriesCount')) bad(mainFile, 'no redis-streams trigger on pendingEntriesCount');
    for (const t of trig) {
      const m = t.metadata || {};
      if (m.stream !== `{${prefix}}:jobs`) bad(mainFile, `trigger stream "${m.stream}" is not "{${prefix}}:jobs" (SANDBOX_QUEUE_PREFIX=${prefix})`);
      if (m.consumerGroup !== 'workers') bad(mainFile, `trigger consumerGroup "${m.consumerGroup}" is not "workers"`);
      if (m.password || m.passwordFromEnv) bad(mainFile, 'trigger password in metadata; use the TriggerAuthentication');
      if (m.enableTLS !== 'true') bad(mainFile, 'trigger does not enable TLS');
      const ta = t.authenticationRef && tas.get(t.authenticationRef.name);
      if (!ta) { bad(mainFile, 'trigger has no TriggerAuthentication in the file'); continue; }
      const params = Object.fromEntries((ta.spec.secretTargetRef || []).map(s => [s.parameter, s]));
      for (const p of ['password', 'address'])
        if (!params[p]) bad(mainFile, `TriggerAuthentication lacks ${p} from a Secret`);
      for (const s of Object.values(params))
        if (!secretKeys.has(s.key)) bad(mainFile, `TriggerAuthentication key "${s.key}" is not in the example Secret`);
    }
  }
  const sa = kinds('ServiceAccount')[0];
  if (!sa || !((sa.metadata.annotations || {})['eks.amazonaws.com/role-arn'])) bad(mainFile, 'no IRSA ServiceAccount (eks.amazonaws.com/role-arn)');
}
const azure = all.find(x => x.o.kind === 'ServiceAccount' && ((x.o.metadata.annotations || {})['azure.workload.identity/client-id']));
if (!azure) problems.push('no Azure workload identity example (azure.workload.identity/client-id)');
else {
  const d = all.find(x => x.file === azure.file && x.o.kind === 'Deployment');
  if (!d || (d.o.spec.template.metadata.labels || {})['azure.workload.identity/use'] !== 'true')
    bad(azure.file, 'the Azure example pods lack the azure.workload.identity/use label');
}

if (envFile) {
  const d = deployments.find(x => path.resolve(x.file) === path.resolve(envFile));
  const c = d && d.o.spec.template.spec.containers.find(x => x.name === 'worker');
  if (!c) { console.error(`no worker Deployment in ${envFile}`); process.exit(1); }
  for (const e of c.env) {
    let v = e.value;
    const ref = e.valueFrom && e.valueFrom.secretKeyRef;
    if (ref) v = secret.o.stringData[ref.key];
    if (e.valueFrom && e.valueFrom.fieldRef) v = 'sandbox-worker-0';
    if (v !== undefined) process.stdout.write(`${e.name}=${String(v).replace(/\n/g, ' ')}\n`);
  }
  process.exit(0);
}
for (const p of problems) console.log(`  ${p}`);
console.log(`  ${files.length} files, ${all.length} objects, ${problems.length} problems`);
process.exit(problems.length ? 1 : 0);
