// Validates Kubernetes manifests offline against the Kubernetes API schemas, as the API server
// would with strict field validation:
//   1. each document by the JSON-schema validator of its kind in the pinned `kubernetes-models`
//      package (types, enums, required fields, formats);
//   2. every field known to the API: a field that is not in the kind's type (a misspelling, a
//      field at the wrong level) is an error, read from the package's type declarations;
//   3. the deployment rules of calcalert (--policy): every pod runs as non-root under the seccomp
//      profile RuntimeDefault, without a service account token, with a read-only root filesystem,
//      no privilege escalation, all capabilities dropped, resource requests and limits; every
//      container that listens has readiness and liveness probes, GET /healthz (calcalert's HTTP
//      port) but for the workloads of NON_HTTP_PROBES; a Deployment of more than one replica mounts
//      no PersistentVolumeClaim (a claim holds SQLite state, which replicas cannot share).
//
//   node deploy/k8s/check/validate.mjs [--policy] FILE...
// Prints one line per problem ("FILE#N Kind/name: path: what") and a summary line; exit 0 when
// every document is valid, 1 otherwise, 2 on a usage error.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';

const here = path.dirname(fileURLToPath(import.meta.url));
const modules = path.join(here, 'node_modules');

// ---- the type declarations (.d.ts) of kubernetes-models: property name -> type expression
const typeCache = new Map();
function splitTopLevel(text, sep) {
  const parts = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '{' || c === '<' || c === '(' || c === '[') depth++;
    else if (c === '}' || c === '>' || c === ')' || c === ']') depth--;
    else if (c === sep && depth === 0) {
      parts.push(text.slice(start, i));
      start = i + 1;
    }
  }
  parts.push(text.slice(start));
  return parts.map((p) => p.trim()).filter((p) => p.length > 0);
}
function loadType(file) {
  if (typeCache.has(file)) return typeCache.get(file);
  const src = fs.readFileSync(file, 'utf8').replace(/\/\*[\s\S]*?\*\//g, '');
  const imports = new Map();
  for (const m of src.matchAll(/import \{ ([^}]+) \} from "([^"]+)";/g)) {
    const spec = m[2];
    const target = spec.startsWith('.')
      ? path.resolve(path.dirname(file), spec.replace(/\.js$/, '.d.ts'))
      : path.join(modules, spec.replace(/\.js$/, '') + '.d.ts');
    for (const name of m[1].split(',').map((s) => s.trim())) imports.set(name, target);
  }
  const head = src.match(/export interface \w+(?: extends [\w, ]+)? \{/);
  if (!head) throw new Error(`${file}: no interface`);
  let depth = 0;
  let i = head.index + head[0].length - 1;
  const begin = i + 1;
  for (; i < src.length; i++) {
    if (src[i] === '{') depth++;
    else if (src[i] === '}' && --depth === 0) break;
  }
  const body = src.slice(begin, i).replace(/\s+/g, ' ');
  const props = new Map();
  for (const member of splitTopLevel(body, ';')) {
    const m = member.match(/^"([^"]+)"\??: ([\s\S]+)$/);
    if (m) props.set(m[1], m[2].trim());
  }
  // TypeMeta: apiVersion and kind
  if (/extends TypeMeta/.test(head[0])) {
    props.set('apiVersion', 'string');
    props.set('kind', 'string');
  }
  const t = { props, imports };
  typeCache.set(file, t);
  return t;
}
// Checks every field of value against the type expression expr (declared in file's scope).
function checkFields(value, expr, scope, where, problems) {
  expr = expr.trim();
  const arr = expr.match(/^Array<([\s\S]+)>$/);
  if (arr) {
    if (Array.isArray(value)) value.forEach((v, n) => checkFields(v, arr[1], scope, `${where}[${n}]`, problems));
    return;
  }
  const map = expr.match(/^\{ \[key: string\]: ([\s\S]+?);? \}$/);
  if (map) {
    if (value && typeof value === 'object' && !Array.isArray(value))
      for (const [k, v] of Object.entries(value)) checkFields(v, map[1], scope, `${where}.${k}`, problems);
    return;
  }
  const target = scope.imports.get(expr);
  if (!target || !value || typeof value !== 'object' || Array.isArray(value)) return;
  let type;
  try {
    type = loadType(target);
  } catch {
    return; // a scalar alias (Quantity, IntOrString, Time): no fields
  }
  if (type.props.size === 0) return;
  for (const [k, v] of Object.entries(value)) {
    if (!type.props.has(k)) problems.push(`${where}: unknown field "${k}"`);
    else checkFields(v, type.props.get(k), type, `${where}.${k}`, problems);
  }
}

// ---- the kinds: apiVersion + kind -> model module
function modelPath(apiVersion, kind) {
  const [group, version] = apiVersion.includes('/') ? apiVersion.split('/') : [null, apiVersion];
  const dir = group ? path.join(modules, 'kubernetes-models', group, version) : path.join(modules, 'kubernetes-models', version);
  return path.join(dir, `${kind}.js`);
}

// ---- calcalert's rules for its pods
// The one exception to "every container that listens probes GET /healthz": a workload that speaks
// another protocol than HTTP, named here with the probe handlers it must use instead.
const NON_HTTP_PROBES = new Map([
  // deploy/k8s/scaled/postgres.yaml: PostgreSQL's protocol on 5432; pg_isready in the image.
  ['StatefulSet/calcalert-postgres', ['exec', 'tcpSocket']],
]);
function podSpecOf(doc) {
  if (doc.kind === 'Deployment' || doc.kind === 'StatefulSet' || doc.kind === 'DaemonSet' || doc.kind === 'Job')
    return ['spec.template.spec', doc.spec?.template?.spec];
  if (doc.kind === 'CronJob') return ['spec.jobTemplate.spec.template.spec', doc.spec?.jobTemplate?.spec?.template?.spec];
  if (doc.kind === 'Pod') return ['spec', doc.spec];
  return [null, null];
}
function policyProblems(doc) {
  const out = [];
  const [where, pod] = podSpecOf(doc);
  if (!pod) return out;
  if (pod.securityContext?.runAsNonRoot !== true) out.push(`${where}.securityContext.runAsNonRoot: must be true`);
  if (pod.automountServiceAccountToken !== false) out.push(`${where}.automountServiceAccountToken: must be false`);
  const podSeccomp = pod.securityContext?.seccompProfile?.type;
  const nonHttp = NON_HTTP_PROBES.get(`${doc.kind}/${doc.metadata?.name}`);
  if (doc.kind === 'Deployment' && (doc.spec?.replicas ?? 1) > 1)
    for (const [n, v] of (pod.volumes ?? []).entries())
      if (v.persistentVolumeClaim)
        out.push(`${where}.volumes[${n}].persistentVolumeClaim: replicas ${doc.spec.replicas} cannot share a claim (state of several replicas: PostgreSQL)`);
  for (const [n, c] of (pod.containers ?? []).entries()) {
    const at = `${where}.containers[${n}]`;
    const sc = c.securityContext ?? {};
    const seccomp = sc.seccompProfile?.type ?? podSeccomp;
    if (seccomp !== 'RuntimeDefault') out.push(`${at}.securityContext.seccompProfile.type: must be RuntimeDefault (here or in the pod's)`);
    if (sc.readOnlyRootFilesystem !== true) out.push(`${at}.securityContext.readOnlyRootFilesystem: must be true`);
    if (sc.allowPrivilegeEscalation !== false) out.push(`${at}.securityContext.allowPrivilegeEscalation: must be false`);
    if (!(sc.capabilities?.drop ?? []).includes('ALL')) out.push(`${at}.securityContext.capabilities.drop: must include ALL`);
    if ((sc.capabilities?.add ?? []).length) out.push(`${at}.securityContext.capabilities.add: must be empty`);
    for (const r of ['cpu', 'memory']) {
      if (!c.resources?.requests?.[r]) out.push(`${at}.resources.requests.${r}: missing`);
      if (!c.resources?.limits?.[r]) out.push(`${at}.resources.limits.${r}: missing`);
    }
    if ((c.ports ?? []).length) {
      for (const probe of ['readinessProbe', 'livenessProbe']) {
        if (!nonHttp) {
          if (c[probe]?.httpGet?.path !== '/healthz') out.push(`${at}.${probe}: must GET /healthz`);
        } else if (!nonHttp.some((handler) => c[probe]?.[handler])) {
          out.push(`${at}.${probe}: must be ${nonHttp.join(' or ')} (${doc.kind}/${doc.metadata.name} is not HTTP)`);
        }
      }
    }
  }
  return out;
}

// ---- main
const args = process.argv.slice(2);
const policy = args[0] === '--policy';
const files = policy ? args.slice(1) : args;
if (files.length === 0 || files.some((f) => f.startsWith('-'))) {
  console.error('usage: validate.mjs [--policy] FILE...');
  process.exit(2);
}
let documents = 0;
let failed = 0;
for (const file of files) {
  const parsed = parseAllDocuments(fs.readFileSync(file, 'utf8'));
  for (const [n, ydoc] of parsed.entries()) {
    const problems = ydoc.errors.map((e) => `YAML: ${e.message.split('\n')[0]}`);
    const doc = problems.length ? null : ydoc.toJS();
    if (doc === null && problems.length === 0) continue; // an empty document
    documents++;
    const label = `${file}#${n + 1} ${doc?.kind ?? '?'}/${doc?.metadata?.name ?? '?'}`;
    if (doc) {
      if (typeof doc.apiVersion !== 'string' || typeof doc.kind !== 'string') {
        problems.push('apiVersion and kind are required');
      } else {
        const mp = modelPath(doc.apiVersion, doc.kind);
        if (!fs.existsSync(mp)) {
          problems.push(`unknown kind ${doc.kind} of ${doc.apiVersion}`);
        } else {
          const cls = Object.values(await import(mp)).find((v) => typeof v === 'function' && v.kind === doc.kind);
          try {
            new cls(doc).validate();
          } catch (e) {
            for (const line of String(e.message).split(/, (?=data)/)) problems.push(line.replace(/^data/, '$'));
          }
          checkFields(doc, 'I', { imports: new Map([['I', mp.replace(/\.js$/, '.d.ts')]]) }, '$', problems);
          if (policy) problems.push(...policyProblems(doc));
        }
      }
    }
    if (problems.length) {
      failed++;
      for (const p of problems) console.log(`${label}: ${p}`);
    }
  }
}
console.log(`k8s: ${documents - failed} valid, ${failed} invalid (${documents} documents)`);
process.exit(failed || documents === 0 ? 1 : 0);
