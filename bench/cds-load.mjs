// A CDS Hooks load client: one or more keep-alive connections sending the same patient-view call
// back to back for a fixed time, each call with a freshly signed ES384 JWT (a new jti every time)
// or none, and the answers' latency. Prints one JSON line: requests, req/s, p50/p90/p99 in ms,
// statuses. bench/cds-load runs it against a real `calcalert serve`.
//
//   node bench/cds-load.mjs --url URL --body FILE [--seconds N] [--connections N]
//                           [--key JWK_FILE --iss ISS]     (a private EC P-384 JWK: sign each call)
//                           [--rate N]                     (calls per second in all; default: as fast as answered)
import http from 'node:http';
import { readFileSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';

const jose = await import(new URL('../deploy/sandbox/node_modules/jose/dist/webapi/index.js', import.meta.url));

function args(argv) {
  const o = { seconds: 10, connections: 1, rate: 0 };
  for (let i = 0; i < argv.length; i += 2) {
    const [k, v] = [argv[i], argv[i + 1]];
    if (v === undefined) throw new Error(`${k} needs a value`);
    if (k === '--url') o.url = v;
    else if (k === '--body') o.body = readFileSync(v);
    else if (k === '--seconds') o.seconds = Number(v);
    else if (k === '--connections') o.connections = Number(v);
    else if (k === '--rate') o.rate = Number(v);
    else if (k === '--key') o.key = JSON.parse(readFileSync(v, 'utf8'));
    else if (k === '--iss') o.iss = v;
    else throw new Error(`unknown argument ${k}`);
  }
  if (!o.url || !o.body) throw new Error('--url and --body are required');
  if (Boolean(o.key) !== Boolean(o.iss)) throw new Error('--key and --iss go together');
  return o;
}

const o = args(process.argv.slice(2));
const key = o.key ? await jose.importJWK(o.key, 'ES384') : undefined;
const kid = o.key?.kid;
const url = new URL(o.url);
const agent = new http.Agent({ keepAlive: true, maxSockets: o.connections });

async function token() {
  const now = Math.floor(Date.now() / 1000);
  return new jose.SignJWT({ jti: randomUUID() })
    .setProtectedHeader({ alg: 'ES384', typ: 'JWT', kid })
    .setIssuer(o.iss)
    .setSubject(o.iss)
    .setAudience(o.url)
    .setIssuedAt(now)
    .setExpirationTime(now + 300)
    .sign(key);
}

function call(headers) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: 'POST', agent, headers }, (res) => {
      res.on('data', () => {});
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('error', reject);
    req.end(o.body);
  });
}

const latencies = [];
const statuses = {};
const end = performance.now() + o.seconds * 1000;
const started = performance.now();
const interval = o.rate > 0 ? (1000 * o.connections) / o.rate : 0;

async function worker(n) {
  let next = started + (interval * n) / o.connections;
  while (performance.now() < end) {
    if (interval) {
      const wait = next - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      next += interval;
    }
    const headers = { 'Content-Type': 'application/json', 'Content-Length': o.body.length };
    if (key) headers.Authorization = `Bearer ${await token()}`;
    const t0 = performance.now();
    const status = await call(headers);
    latencies.push(performance.now() - t0);
    statuses[status] = (statuses[status] ?? 0) + 1;
  }
}

await Promise.all(Array.from({ length: o.connections }, (_, n) => worker(n)));
const elapsed = (performance.now() - started) / 1000;
latencies.sort((a, b) => a - b);
const q = (p) => Number((latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] ?? 0).toFixed(3));
process.stdout.write(JSON.stringify({
  requests: latencies.length,
  seconds: Number(elapsed.toFixed(2)),
  rps: Math.round(latencies.length / elapsed),
  p50_ms: q(0.5),
  p90_ms: q(0.9),
  p99_ms: q(0.99),
  jwt: Boolean(key),
  connections: o.connections,
  statuses,
}) + '\n');
agent.destroy();
