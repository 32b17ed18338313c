// A CDS Hooks load client: keep-alive connections sending the same request back to back (or at a
// fixed total rate) for a fixed time, and the answers' latency. With --key every call carries its own
// JWT (a new jti each), all signed BEFORE the timed phase (by two worker threads), so that the client
// does not sign while it measures. Plain sockets (node:net) with a minimal HTTP/1.1 reader, so the
// client spends as little of the shared CPU as it can. Prints one JSON line: requests, req/s,
// p50/p90/p99 in ms, statuses, and whether the token pool ran out (the run then ends early and
// req/s is over the time it lasted).
//
//   node bench/cds-load.mjs --url URL [--body FILE] [--method GET|POST] [--seconds N] [--connections N]
//                           [--key JWK_FILE --iss ISS [--alg ES384|RS384] [--pool N]]
//                           [--rate N]       (calls per second in all; default: as fast as answered)
//                           [--pid PID]      (the server's: its CPU time per call is reported, which
//                                             other work on a shared machine does not change much)
import net from 'node:net';
import { readFileSync } from 'node:fs';

// CPU seconds (user + system) of a process so far, from /proc (clock ticks of 1/100 s).
function cpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
}
import { createPrivateKey, randomUUID, sign } from 'node:crypto';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';

const b64 = (s) => Buffer.from(s).toString('base64url');

// Signs `count` compact JWS for the claims template (each with its own jti).
function signTokens({ jwk, alg, iss, aud, count, lifetime }) {
  const key = createPrivateKey({ key: jwk, format: 'jwk' });
  const header = b64(JSON.stringify({ alg, typ: 'JWT', kid: jwk.kid }));
  const now = Math.floor(Date.now() / 1000);
  const out = new Array(count);
  for (let i = 0; i < count; ++i) {
    const payload = b64(JSON.stringify({ iss, sub: iss, aud, iat: now, exp: now + lifetime, jti: randomUUID() }));
    const input = `${header}.${payload}`;
    const sig = alg === 'ES384'
      ? sign('sha384', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' })
      : sign('sha384', Buffer.from(input), key);
    out[i] = `${input}.${sig.toString('base64url')}`;
  }
  return out;
}

function args(argv) {
  const o = { seconds: 10, connections: 1, rate: 0, method: 'POST', alg: 'ES384', pool: 0 };
  for (let i = 0; i < argv.length; i += 2) {
    const [k, v] = [argv[i], argv[i + 1]];
    if (v === undefined) throw new Error(`${k} needs a value`);
    if (k === '--url') o.url = v;
    else if (k === '--body') o.body = readFileSync(v);
    else if (k === '--method') o.method = v;
    else if (k === '--seconds') o.seconds = Number(v);
    else if (k === '--connections') o.connections = Number(v);
    else if (k === '--rate') o.rate = Number(v);
    else if (k === '--key') o.key = JSON.parse(readFileSync(v, 'utf8'));
    else if (k === '--iss') o.iss = v;
    else if (k === '--alg') o.alg = v;
    else if (k === '--pool') o.pool = Number(v);
    else if (k === '--pid') o.pid = Number(v);
    else throw new Error(`unknown argument ${k}`);
  }
  if (!o.url) throw new Error('--url is required');
  if (Boolean(o.key) !== Boolean(o.iss)) throw new Error('--key and --iss go together');
  if (o.alg !== 'ES384' && o.alg !== 'RS384') throw new Error('--alg is ES384 or RS384');
  if (!(o.connections >= 1) || !(o.seconds > 0)) throw new Error('--connections >= 1 and --seconds > 0');
  return o;
}

async function pool(o) {
  // Enough for the whole run: the rate, or a generous upper bound of what this machine answers.
  // (ES384 verification alone caps the server at about 2,600/s on two cores of this machine.)
  const bound = o.alg === 'ES384' ? 4000 : 12000;
  const count = o.pool > 0 ? o.pool : Math.ceil((o.rate > 0 ? o.rate * 1.05 : bound) * o.seconds) + 1000;
  const parts = [Math.ceil(count / 2), Math.floor(count / 2)];
  const job = (n) => new Promise((resolve, reject) => {
    const w = new Worker(new URL(import.meta.url), {
      workerData: { jwk: o.key, alg: o.alg, iss: o.iss, aud: o.url, count: n, lifetime: 290 },
    });
    w.once('message', resolve);
    w.once('error', reject);
  });
  const t0 = performance.now();
  const tokens = (await Promise.all(parts.map(job))).flat();
  return { tokens, signSeconds: (performance.now() - t0) / 1000 };
}

// One keep-alive connection: send(request) resolves with the status once the whole answer is read.
class Conn {
  constructor(url) {
    this.url = url;
    this.buf = Buffer.alloc(0);
    this.waiting = null;
  }
  open() {
    return new Promise((resolve, reject) => {
      const sock = net.connect({ host: this.url.hostname, port: Number(this.url.port) }, resolve);
      this.sock = sock;
      sock.setNoDelay(true);
      sock.once('error', reject);
      sock.on('data', (d) => { if (this.sock === sock) this.onData(d); });
      // Only for the socket in use: a socket destroyed after a "Connection: close" reports its close
      // later, when its successor is already open (which that report must not mark closed, or the
      // next call would open a third socket and leave the second one open).
      sock.on('close', () => {
        if (this.sock !== sock) return;
        this.closed = true;
        if (this.waiting) this.waiting.reject(new Error('connection closed before the answer'));
      });
    });
  }
  onData(d) {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    if (!this.waiting) return;
    const end = this.buf.indexOf('\r\n\r\n');
    if (end < 0) return;
    const head = this.buf.subarray(0, end).toString('latin1');
    const m = /\r\ncontent-length:\s*(\d+)/i.exec(head);
    const length = m ? Number(m[1]) : 0;
    if (this.buf.length < end + 4 + length) return;
    const status = Number(head.slice(9, 12));
    const close = /\r\nconnection:\s*close/i.test(head);
    this.buf = this.buf.subarray(end + 4 + length);
    const w = this.waiting;
    this.waiting = null;
    w.resolve({ status, close });
  }
  async send(request) {
    if (!this.sock || this.closed) {
      this.closed = false;
      this.buf = Buffer.alloc(0);
      await this.open();
    }
    const answer = new Promise((resolve, reject) => { this.waiting = { resolve, reject }; });
    this.sock.write(request);
    const r = await answer;
    if (r.close) {
      this.sock.destroy();
      this.closed = true;
    }
    return r.status;
  }
  close() { this.sock?.destroy(); }
}

async function main() {
  const o = args(process.argv.slice(2));
  const url = new URL(o.url);
  const signed = o.key ? await pool(o) : null;
  const tokens = signed?.tokens ?? [];
  let nextToken = 0;
  let exhausted = false;
  const head = `${o.method} ${url.pathname}${url.search} HTTP/1.1\r\nHost: ${url.host}\r\n`;
  const body = o.body ?? Buffer.alloc(0);
  const fixed = Buffer.concat([
    Buffer.from(`${head}${o.body ? 'Content-Type: application/json\r\n' : ''}Content-Length: ${body.length}\r\n\r\n`),
    body,
  ]);
  const request = () => {
    if (!o.key) return fixed;
    if (nextToken >= tokens.length) return null;
    return Buffer.concat([
      Buffer.from(`${head}Authorization: Bearer ${tokens[nextToken++]}\r\n${o.body ? 'Content-Type: application/json\r\n' : ''}` +
        `Content-Length: ${body.length}\r\n\r\n`),
      body,
    ]);
  };

  const latencies = [];
  const statuses = {};
  const conns = Array.from({ length: o.connections }, () => new Conn(url));
  const cpu0 = o.pid ? cpuSeconds(o.pid) : 0;
  const started = performance.now();
  const end = started + o.seconds * 1000;
  const interval = o.rate > 0 ? (1000 * o.connections) / o.rate : 0;
  let late = 0;  // paced calls sent after their slot (the client or server fell behind)

  async function worker(n) {
    let next = started + (interval * n) / o.connections;
    while (performance.now() < end) {
      if (interval) {
        const wait = next - performance.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        else if (wait < -interval) ++late;
        next += interval;
      }
      const req = request();
      if (!req) {
        exhausted = true;
        return;
      }
      const t0 = performance.now();
      const status = await conns[n].send(req);
      latencies.push(performance.now() - t0);
      statuses[status] = (statuses[status] ?? 0) + 1;
    }
  }

  await Promise.all(conns.map((_, n) => worker(n)));
  const elapsed = (performance.now() - started) / 1000;
  const cpu = o.pid ? cpuSeconds(o.pid) - cpu0 : 0;
  conns.forEach((c) => c.close());
  latencies.sort((a, b) => a - b);
  const q = (p) => Number((latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] ?? 0).toFixed(3));
  process.stdout.write(JSON.stringify({
    requests: latencies.length,
    seconds: Number(elapsed.toFixed(2)),
    rps: Math.round(latencies.length / elapsed),
    p50_ms: q(0.5),
    p90_ms: q(0.9),
    p99_ms: q(0.99),
    jwt: o.key ? o.alg : false,
    connections: o.connections,
    rate: o.rate || undefined,
    late: o.rate ? late : undefined,
    presigned: signed ? tokens.length : undefined,
    sign_s: signed ? Number(signed.signSeconds.toFixed(1)) : undefined,
    pool_exhausted: o.key ? exhausted : undefined,
    server_cpu_us_per_call: o.pid && latencies.length ? Math.round((cpu * 1e6) / latencies.length) : undefined,
    statuses,
  }) + '\n', () => process.exit(0));  // not held open by a handle that outlives the run
}

if (!isMainThread) {
  parentPort.postMessage(signTokens(workerData));
} else {
  await main();
}
