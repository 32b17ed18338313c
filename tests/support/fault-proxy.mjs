#!/usr/bin/env node
// fault-proxy: a fault-injecting HTTP reverse proxy for calcalert's polling reliability tests.
// Node.js built-ins only. It sits in front of one FHIR server (the upstream), forwards requests
// to it, and, per request, deterministically from --seed and the request's sequence number,
// answers with a fault instead of (or after) forwarding. It can also SIGKILL a process (the
// poller under test) at a chosen request.
//
// Usage:
//   node tests/support/fault-proxy.mjs --upstream http://127.0.0.1:PORT/fhir --port 0 --seed N
//        [--rate KIND=P ...] [--rate all=P] [--retry-after S]
//        [--quirk NAME ...] [--kill-pid PID --kill-at SPEC] [--verbose]
//
// When ready it prints exactly one line to stdout:
//   fault-proxy listening http://127.0.0.1:PORT
// The proxy's base URL has the upstream's path: upstream http://127.0.0.1:8090/fhir ->
// http://127.0.0.1:PORT/fhir. Absolute URLs of the upstream's origin in response bodies and in
// Location / Content-Location headers are rewritten to the proxy's origin, so paging links
// lead back through the proxy.
//
// Fault kinds (KIND), each with its own rate P in [0, 1], the probability per request:
//   503               503 with an OperationOutcome; not forwarded
//   429               429 with Retry-After: S (--retry-after, default 0) and an OperationOutcome; not forwarded
//   reset             the client connection is reset (TCP RST) before any response; not forwarded
//   truncate          forwarded; the upstream's status and headers (real Content-Length), half the body, then the
//                     connection is closed
//   malformed         forwarded; the upstream's 2xx status (otherwise 200), its headers, and its body with a few
//                     bytes damaged (a control character, '#', and the last closing bracket) so no JSON parser accepts it
//   html              an HTML error page (text/html), 502 or 200 (half each); not forwarded
//   drop-after-write  writes only: forwarded, the upstream applies it, then the connection is closed without an answer
// A write is POST, PUT, PATCH or DELETE, except POST .../_search (a read). Reads never get
// drop-after-write. `all=P` is a combined rate P split evenly over the kinds that apply to the
// request (P/6 each for a read, P/7 each for a write); a KIND=P given as well replaces that
// kind's share. The rates of one request must add up to at most 1. Request n (1, 2, ... since
// start or /__proxy/reset) draws one number u(seed, n) in [0, 1) and the kinds take consecutive
// slices of [0, 1) in the order above: a run is reproducible, and with one seed the same request
// numbers are faulted whatever the kind.
// Note for libcurl clients: libcurl re-sends a request once, by itself, when a reused keep-alive
// connection is closed or reset before any byte of the answer (reset, drop-after-write, the
// request:N and after-write:N kills): the proxy then sees (and may fault) a second request, and a
// dropped write reaches the upstream twice.
//
// Server quirks (--quirk NAME, repeatable; or "quirks" in POST /__proxy/config): they make the
// correct upstream look like the odd FHIR servers hospitals run. They are not faults: they draw no
// number from the fault stream (the same seed faults the same request numbers with or without
// quirks) and are applied only to answers the fault decision left clean (no fault, no kill), and
// only to a GET whose answer is 2xx JSON that parses as a Bundle of type searchset. Any other
// answer (reads of one resource, history, POST .../_search, OperationOutcomes) passes untouched.
// A quirked page is re-serialized (compact JSON, new Content-Length). Several quirks combine, in
// this order on each page: drop-version, shuffle, duplicate-entries, loop-next.
//   drop-version       meta.versionId is deleted from every entry[].resource (and from the Bundle's
//                      own meta); a meta left empty is deleted. A server without versions.
//   shuffle            the entries of each page with 2 or more entries are permuted by a seeded
//                      Fisher-Yates shuffle (u(seed, n, stream 16+i), n the request's sequence
//                      number); a draw that leaves the order unchanged is replaced by the reverse, so
//                      the order always changes and meta.lastUpdated is out of order within the page
//                      (a server that ignores _sort). Pages themselves stay as the upstream cut them.
//   duplicate-entries  when the proxy serves a searchset page that has a link[next] URL N and at
//                      least one entry, it remembers N -> (a copy of the page's last entry, as served).
//                      A later GET whose URL is N (same path and query; parameter order and encoding
//                      ignored) gets that copy inserted at the start of entry[] (Bundle.total is
//                      not changed). So every page reached through a next link carries the previous
//                      page's last entry, the same resource version on two pages; fetching a page
//                      again (a retry after a fault) repeats the same copy. A first page, or a page
//                      not reached through a next link this proxy served, gets nothing.
//   loop-next          the last page of a search (a searchset page without link[next]; not for
//                      _summary=count or _count=0) gets a link {"relation":"next","url":FIRST}, FIRST
//                      being the absolute proxy URL (origin + path + query exactly as sent) of the
//                      last first page the proxy served for the same search key; without one, the
//                      page's own URL minus the position parameters. It fires once per search key: a
//                      client that follows it gets the first page again (with its real next link),
//                      pages through the search a second time, and this time the last page has no
//                      next link. A client with no loop guard thus processes every page twice.
//   The search key of a request is its path plus its query parameters sorted by name, without the
//   paging parameters _count, _offset, _page, ct and _cursor: /fhir/Patient?_count=2&_sort=x and
//   /fhir/Patient?_count=2&_offset=2&_sort=x are one search. A first page is a request with no
//   position parameter (_offset, _page, ct, _cursor), or with only _offset=0 / _page=1. (Two searches
//   differing only in _count share a key.)
//   The quirk memory (next URL -> entry, search key -> first URL, keys loop-next fired for; each
//   kept only while its quirk is on; at most 10000 of each, oldest dropped) is cleared by POST
//   /__proxy/reset and by every POST /__proxy/config that has a "quirks" field (even the same
//   list): that re-arms loop-next.
//   /__proxy/stats counts per quirk the answers it changed (quirks:{NAME:n}); each event lists
//   the quirks that changed its answer ("quirks":[...], only when any did).
//
// Kill hook: --kill-pid PID (a negative PID is a process group) with --kill-at SPEC:
//   request:N      SIGKILL when the N-th proxied request arrives, before it is forwarded (the client socket is then destroyed)
//   mid-body:N     forward the N-th request, send its status, headers and half its body, SIGKILL, destroy the socket
//   after-write:N  forward the N-th write, let the upstream apply it, SIGKILL before answering, destroy the socket
// N counts from when the hook was set (start, or the last config that set killAt) and starts at 1;
// request:N and mid-body:N count all proxied requests, after-write:N counts writes. The request
// chosen for the kill gets no other fault. After one kill the hook is disarmed until killAt is set again.
//
// Control endpoints (same port, never proxied, never faulted):
//   GET  /__proxy/stats   {"total","reads","writes","forwarded","clean","faults":{KIND:n},"quirks":{NAME:n},
//                          "upstreamErrors","kills":[...],"killArmed","config":{...},"upstream","baseUrl"}
//   GET  /__proxy/config  the current configuration (with "quirks":[NAME,...])
//   POST /__proxy/config  JSON {"rates":{KIND:P,...},"seed":N,"retryAfter":S,"killPid":PID|null,"killAt":SPEC|null,
//                         "quirks":[NAME,...]}
//                         every field optional; "rates" replaces the whole rate table ({} = no faults),
//                         "quirks" the whole quirk list ([] = none; clears the quirk memory);
//                         answers the new configuration, or 400 {"error":...}
//   POST /__proxy/reset   zeroes the counters, the sequence number, the event log and the quirk memory
//                         (configuration kept)
//   GET  /__proxy/events  {"events":[{"seq","method","url","write","fault","status"[,"quirks"]}]}, the last 5000 requests
//
// Requests are buffered (any size up to 256 MB) and forwarded with Content-Length; the upstream is
// asked for an uncompressed answer (Accept-Encoding is removed; a compressed answer is decoded).
// Keep-alive is supported on both sides. An upstream that cannot be reached gives 502 with an
// OperationOutcome (counted in upstreamErrors, not as a fault). SIGTERM/SIGINT stop it (exit 0).

import http from 'node:http';
import zlib from 'node:zlib';

const HOST = '127.0.0.1';
const KINDS = ['503', '429', 'reset', 'truncate', 'malformed', 'html', 'drop-after-write'];
const READ_KINDS = KINDS.filter((k) => k !== 'drop-after-write');
const QUIRKS = ['duplicate-entries', 'loop-next', 'shuffle', 'drop-version'];
const PAGING_PARAMS = new Set(['_count', '_offset', '_page', 'ct', '_cursor']); // left out of the search key
const POSITION_PARAMS = ['_offset', '_page', 'ct', '_cursor']; // present (but _offset=0, _page=1): not a first page
const MAX_QUIRK_KEYS = 10000;
const MAX_BODY_BYTES = 256 * 1024 * 1024;
const MAX_EVENTS = 5000;
const HOP_BY_HOP = new Set([
  'connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization', 'proxy-connection',
  'te', 'trailer', 'transfer-encoding', 'upgrade', 'expect',
]);

// ---- command line -----------------------------------------------------------------------

function usage() {
  return 'usage: node fault-proxy.mjs --upstream URL --port N --seed N [--rate KIND=P ...] [--rate all=P]\n' +
    '                            [--retry-after S] [--quirk NAME ...] [--kill-pid PID --kill-at SPEC] [--verbose]\n' +
    `  KIND: ${KINDS.join(' | ')} | all\n` +
    `  NAME: ${QUIRKS.join(' | ')}\n` +
    '  SPEC: request:N | mid-body:N | after-write:N\n';
}

function parseRate(text, into) {
  const m = /^([a-z0-9-]+)=(.+)$/i.exec(text ?? '');
  if (!m) {
    throw new Error(`invalid --rate value: ${text} (expected KIND=P)`);
  }
  into[m[1]] = Number(m[2]);
}

function parseArgs(argv) {
  const opts = { upstream: undefined, port: undefined, seed: undefined, rates: {}, quirks: [], retryAfter: 0, killPid: null, killAt: null, verbose: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const eq = a.startsWith('--') ? a.indexOf('=') : -1;
    const name = eq > 0 ? a.slice(0, eq) : a;
    const take = () => {
      const v = eq > 0 ? a.slice(eq + 1) : argv[++i];
      if (v === undefined) {
        throw new Error(`${name} needs a value`);
      }
      return v;
    };
    const integer = (v) => {
      if (!/^-?\d+$/.test(v)) {
        throw new Error(`invalid ${name} value: ${v} (an integer)`);
      }
      return Number(v);
    };
    switch (name) {
      case '--upstream':
        opts.upstream = take();
        break;
      case '--port':
        opts.port = integer(take());
        if (opts.port < 0 || opts.port > 65535) {
          throw new Error(`invalid --port value: ${opts.port}`);
        }
        break;
      case '--seed':
        opts.seed = integer(take());
        break;
      case '--rate':
        parseRate(take(), opts.rates);
        break;
      case '--quirk':
        opts.quirks.push(take());
        break;
      case '--retry-after':
        opts.retryAfter = integer(take());
        break;
      case '--kill-pid':
        opts.killPid = integer(take());
        break;
      case '--kill-at':
        opts.killAt = take();
        break;
      case '--verbose':
        opts.verbose = true;
        break;
      case '-h':
      case '--help':
        process.stdout.write(usage());
        process.exit(0);
        break;
      default:
        throw new Error(`unknown argument: ${a}`);
    }
  }
  if (!opts.upstream) {
    throw new Error('--upstream is required');
  }
  if (opts.port === undefined) {
    throw new Error('--port is required');
  }
  if (opts.seed === undefined) {
    throw new Error('--seed is required');
  }
  return opts;
}

// ---- configuration ------------------------------------------------------------------------

function validateRates(rates) {
  if (!rates || typeof rates !== 'object' || Array.isArray(rates)) {
    throw new Error('rates must be an object {KIND: P}');
  }
  const out = {};
  for (const [kind, p] of Object.entries(rates)) {
    if (kind !== 'all' && !KINDS.includes(kind)) {
      throw new Error(`unknown fault kind: ${kind} (one of ${KINDS.join(', ')}, all)`);
    }
    if (typeof p !== 'number' || !Number.isFinite(p) || p < 0 || p > 1) {
      throw new Error(`rate of ${kind} must be a number in [0, 1], got ${JSON.stringify(p)}`);
    }
    out[kind] = p;
  }
  for (const write of [false, true]) {
    const sum = effectiveRates(out, write).reduce((acc, [, p]) => acc + p, 0);
    if (sum > 1 + 1e-9) {
      throw new Error(`rates for a ${write ? 'write' : 'read'} add up to ${sum}, more than 1`);
    }
  }
  return out;
}

/** The per-kind probabilities for one request (a read or a write), as [kind, p] in KINDS order. */
function effectiveRates(rates, write) {
  const kinds = write ? KINDS : READ_KINDS;
  const share = rates.all !== undefined ? rates.all / kinds.length : 0;
  return kinds.map((k) => [k, rates[k] !== undefined ? rates[k] : share]);
}

function validateQuirks(quirks) {
  if (!Array.isArray(quirks) || !quirks.every((q) => typeof q === 'string')) {
    throw new Error('quirks must be an array of quirk names');
  }
  for (const q of quirks) {
    if (!QUIRKS.includes(q)) {
      throw new Error(`unknown quirk: ${q} (one of ${QUIRKS.join(', ')})`);
    }
  }
  return [...new Set(quirks)];
}

function parseKillAt(spec) {
  if (spec === null || spec === undefined || spec === '') {
    return null;
  }
  const m = /^(request|mid-body|after-write):([1-9]\d*)$/.exec(String(spec));
  if (!m) {
    throw new Error(`invalid killAt: ${JSON.stringify(spec)} (request:N, mid-body:N or after-write:N, N >= 1)`);
  }
  return { spec: String(spec), type: m[1], n: Number(m[2]) };
}

function validatePid(pid) {
  if (pid === null || pid === undefined) {
    return null;
  }
  if (!Number.isInteger(pid) || pid === 0 || pid === 1 || pid === -1 || pid === process.pid || pid === -process.pid) {
    throw new Error(`invalid killPid: ${JSON.stringify(pid)}`);
  }
  return pid;
}

// ---- deterministic randomness ----------------------------------------------------------------

// A uniform number in [0, 1) from (seed, seq, stream), by murmur3's 32-bit finalizer.
function fmix32(h) {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

function uniform(seed, seq, stream = 0) {
  const h = fmix32((fmix32((fmix32((seed | 0) ^ 0x9e3779b9) ^ (seq | 0)) >>> 0) + Math.imul(stream + 1, 0x632be5ab)) >>> 0);
  return h / 4294967296;
}

function chooseFault(rates, seed, seq, write) {
  const u = uniform(seed, seq, 0);
  let acc = 0;
  for (const [kind, p] of effectiveRates(rates, write)) {
    acc += p;
    if (p > 0 && u < acc) {
      return kind;
    }
  }
  return null;
}

// ---- the proxy ----------------------------------------------------------------------------------

function operationOutcome(code, text) {
  return JSON.stringify({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, details: { text } }] });
}

function htmlPage(status) {
  const title = status === 502 ? '502 Bad Gateway' : 'Service temporarily unavailable';
  return `<!DOCTYPE html>\n<html><head><title>${title}</title></head>\n<body><h1>${title}</h1>\n` +
    '<p>The server is temporarily unable to service your request. Please try again later.</p>\n' +
    '<hr><address>fault-proxy (injected html fault)</address></body></html>\n';
}

// Damages a JSON body so that no JSON parser accepts it: two bytes at seeded positions become a
// control character (never allowed in JSON, in or out of strings) and '#', and the last closing
// bracket becomes '#'.
function damage(body, seed, seq) {
  const buf = Buffer.from(body.length ? body : Buffer.from('{"resourceType":"OperationOutcome"}'));
  const n = buf.length;
  buf[Math.floor(uniform(seed, seq, 2) * n)] = 0x01;
  buf[Math.floor(uniform(seed, seq, 3) * n)] = 0x23;
  const last = Math.max(buf.lastIndexOf(0x7d), buf.lastIndexOf(0x5d));
  buf[last >= 0 ? last : n - 1] = 0x23;
  return buf;
}

// ---- server quirks -----------------------------------------------------------------------------

// Query parameters sorted by name (values of one name keep their order), as a canonical string.
function sortedQuery(params) {
  const copy = new URLSearchParams(params);
  copy.sort();
  return copy.toString();
}

/** Identifies one page: path and query (order and encoding ignored). */
function pageKey(u) {
  return `${u.pathname.replace(/\/+$/, '')}?${sortedQuery(u.searchParams)}`;
}

/** Identifies one search: path and query without the paging parameters. */
function searchKey(u) {
  const params = new URLSearchParams();
  for (const [k, v] of u.searchParams) {
    if (!PAGING_PARAMS.has(k)) {
      params.append(k, v);
    }
  }
  return `${u.pathname.replace(/\/+$/, '')}?${sortedQuery(params)}`;
}

function isFirstPage(u) {
  return POSITION_PARAMS.every((k) => {
    const values = u.searchParams.getAll(k);
    return values.length === 0 || (k === '_offset' && values.every((v) => v === '0')) || (k === '_page' && values.every((v) => v === '1'));
  });
}

function isCountOnly(u) {
  return u.searchParams.getAll('_summary').includes('count') || u.searchParams.getAll('_count').includes('0');
}

/** The URL without its position parameters: the first page of the same search. */
function firstPageOf(u) {
  const first = new URL(u.href);
  for (const k of POSITION_PARAMS) {
    first.searchParams.delete(k);
  }
  return first.href;
}

// A Map used as a bounded memory: the oldest key goes when there are more than MAX_QUIRK_KEYS.
function remember(map, key, value) {
  map.delete(key);
  map.set(key, value);
  if (map.size > MAX_QUIRK_KEYS) {
    map.delete(map.keys().next().value);
  }
}

function isTextual(contentType) {
  return /json|html|text|xml|javascript/i.test(contentType ?? '');
}

function decode(body, encoding) {
  switch ((encoding ?? '').trim().toLowerCase()) {
    case '':
    case 'identity':
      return body;
    case 'gzip':
    case 'x-gzip':
      return zlib.gunzipSync(body);
    case 'deflate':
      return zlib.inflateSync(body);
    case 'br':
      return zlib.brotliDecompressSync(body);
    default:
      throw new Error(`unsupported upstream Content-Encoding: ${encoding}`);
  }
}

function readAll(stream, limit = MAX_BODY_BYTES) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    stream.on('data', (c) => {
      size += c.length;
      if (size > limit) {
        stream.destroy(new Error(`body larger than ${limit} bytes`));
        return;
      }
      chunks.push(c);
    });
    stream.on('end', () => resolve(Buffer.concat(chunks)));
    stream.on('error', reject);
    stream.on('aborted', () => reject(new Error('aborted')));
  });
}

function resetSocket(socket) {
  if (!socket || socket.destroyed) {
    return;
  }
  if (typeof socket.resetAndDestroy === 'function') {
    try {
      socket.resetAndDestroy();
      return;
    } catch {
      // fall through
    }
  }
  socket.destroy();
}

async function main() {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`fault-proxy: ${err.message}\n${usage()}`);
    process.exit(2);
  }

  let upstream;
  try {
    upstream = new URL(opts.upstream);
    if (upstream.protocol !== 'http:') {
      throw new Error('only http:// upstreams are supported');
    }
  } catch (err) {
    process.stderr.write(`fault-proxy: invalid --upstream ${opts.upstream}: ${err.message}\n`);
    process.exit(2);
  }
  const upstreamOrigin = upstream.origin;
  const upstreamPath = upstream.pathname.replace(/\/+$/, '');

  const config = { seed: opts.seed, rates: {}, quirks: [], retryAfter: 0, killPid: null, killAt: null };
  let kill = null; // { spec, type, n, seen } while armed
  try {
    config.rates = validateRates(opts.rates);
    config.quirks = validateQuirks(opts.quirks);
    config.retryAfter = checkRetryAfter(opts.retryAfter);
    config.killPid = validatePid(opts.killPid);
    const k = parseKillAt(opts.killAt);
    if (k && config.killPid === null) {
      throw new Error('--kill-at needs --kill-pid');
    }
    config.killAt = k?.spec ?? null;
    kill = k ? { ...k, seen: 0 } : null;
  } catch (err) {
    process.stderr.write(`fault-proxy: ${err.message}\n`);
    process.exit(2);
  }

  const log = (obj) => {
    if (opts.verbose) {
      process.stderr.write(JSON.stringify({ time: new Date().toISOString(), ...obj }) + '\n');
    }
  };

  const newStats = () => ({
    total: 0, reads: 0, writes: 0, forwarded: 0, clean: 0,
    faults: Object.fromEntries(KINDS.map((k) => [k, 0])),
    quirks: Object.fromEntries(QUIRKS.map((q) => [q, 0])),
    upstreamErrors: 0, kills: [],
  });
  let stats = newStats();
  let seq = 0;
  let events = [];
  let proxyOrigin = '';
  // Quirk memory: next-page key -> entry (duplicate-entries), search key -> first page URL and
  // search keys loop-next fired for (loop-next).
  const newQuirkMemory = () => ({ carried: new Map(), firstUrl: new Map(), looped: new Map() });
  let quirkMemory = newQuirkMemory();

  const agent = new http.Agent({ keepAlive: true, maxSockets: 32 });

  function record(event) {
    events.push(event);
    if (events.length > MAX_EVENTS) {
      events.shift();
    }
    log({ msg: 'request', ...event });
  }

  function doKill(spec, atSeq) {
    const entry = { spec, pid: config.killPid, seq: atSeq, signal: 'SIGKILL', ok: true, time: new Date().toISOString() };
    try {
      process.kill(config.killPid, 'SIGKILL');
    } catch (err) {
      entry.ok = false;
      entry.error = err.code ?? String(err);
    }
    stats.kills.push(entry);
    kill = null; // disarmed until killAt is set again
    log({ msg: 'kill', ...entry });
  }

  // Forwards a buffered request; resolves { status, headers, body } (body decoded and rewritten).
  function forward(req, body) {
    return new Promise((resolve, reject) => {
      const headers = {};
      for (const [k, v] of Object.entries(req.headers)) {
        if (!HOP_BY_HOP.has(k) && k !== 'accept-encoding' && k !== 'host' && k !== 'content-length') {
          headers[k] = v;
        }
      }
      headers.host = upstream.host;
      if (body.length || !['GET', 'HEAD', 'DELETE', 'OPTIONS'].includes(req.method)) {
        headers['content-length'] = String(body.length);
      }
      const up = http.request(
        { host: upstream.hostname, port: upstream.port || 80, method: req.method, path: req.url, headers, agent },
        (res) => {
          readAll(res)
            .then((raw) => {
              let data = decode(raw, res.headers['content-encoding']);
              const out = {};
              for (const [k, v] of Object.entries(res.headers)) {
                if (!HOP_BY_HOP.has(k) && k !== 'content-length' && k !== 'content-encoding') {
                  out[k] = v;
                }
              }
              for (const h of ['location', 'content-location']) {
                if (typeof out[h] === 'string') {
                  out[h] = out[h].split(upstreamOrigin).join(proxyOrigin);
                }
              }
              if (isTextual(res.headers['content-type']) && data.includes(upstreamOrigin)) {
                data = Buffer.from(data.toString('utf8').split(upstreamOrigin).join(proxyOrigin), 'utf8');
              }
              resolve({ status: res.statusCode, headers: out, body: data });
            })
            .catch(reject);
        }
      );
      up.on('error', reject);
      up.end(body);
    });
  }

  // Applies the configured quirks to a clean answer of GET `url`. Returns { body, names } when
  // they changed it, otherwise null (not a searchset Bundle, or nothing to do).
  function applyQuirks(url, up, mySeq) {
    if (up.status < 200 || up.status > 299 || !/json/i.test(up.headers['content-type'] ?? '')) {
      return null;
    }
    let bundle;
    try {
      bundle = JSON.parse(up.body.toString('utf8'));
    } catch {
      return null;
    }
    if (!bundle || typeof bundle !== 'object' || bundle.resourceType !== 'Bundle' || bundle.type !== 'searchset') {
      return null;
    }
    let target;
    try {
      target = new URL(url, proxyOrigin);
    } catch {
      return null;
    }
    const on = new Set(config.quirks);
    const names = [];
    const entries = Array.isArray(bundle.entry) ? bundle.entry : [];

    if (on.has('drop-version')) {
      let dropped = 0;
      const drop = (resource) => {
        const meta = resource?.meta;
        if (meta && typeof meta === 'object' && 'versionId' in meta) {
          delete meta.versionId;
          dropped++;
          if (Object.keys(meta).length === 0) {
            delete resource.meta;
          }
        }
      };
      drop(bundle);
      for (const e of entries) {
        drop(e?.resource);
      }
      if (dropped) {
        names.push('drop-version');
      }
    }

    if (on.has('shuffle') && entries.length >= 2) {
      const order = entries.map((_, i) => i);
      for (let i = order.length - 1; i > 0; i--) {
        const j = Math.floor(uniform(config.seed, mySeq, 16 + i) * (i + 1));
        [order[i], order[j]] = [order[j], order[i]];
      }
      if (order.every((v, i) => v === i)) {
        order.reverse();
      }
      const original = [...entries];
      order.forEach((from, to) => {
        entries[to] = original[from];
      });
      names.push('shuffle');
    }

    if (on.has('duplicate-entries')) {
      const carried = quirkMemory.carried.get(pageKey(target));
      if (carried) {
        entries.unshift(structuredClone(carried));
        bundle.entry = entries;
        names.push('duplicate-entries');
      }
    }

    const links = Array.isArray(bundle.link) ? bundle.link : [];
    const next = links.find((l) => l && l.relation === 'next' && typeof l.url === 'string');
    if (on.has('loop-next')) {
      const key = searchKey(target);
      if (isFirstPage(target)) {
        remember(quirkMemory.firstUrl, key, proxyOrigin + url);
      }
      if (!next && !isCountOnly(target) && !quirkMemory.looped.has(key)) {
        remember(quirkMemory.looped, key, true);
        links.push({ relation: 'next', url: quirkMemory.firstUrl.get(key) ?? firstPageOf(target) });
        bundle.link = links;
        names.push('loop-next');
      }
    }
    if (on.has('duplicate-entries') && next && entries.length) {
      try {
        remember(quirkMemory.carried, pageKey(new URL(next.url, proxyOrigin)), structuredClone(entries[entries.length - 1]));
      } catch {
        // a next link that is no URL: nothing to carry
      }
    }

    if (!names.length) {
      return null;
    }
    for (const q of names) {
      stats.quirks[q]++;
    }
    return { body: Buffer.from(JSON.stringify(bundle), 'utf8'), names };
  }

  function sendHead(res, status, headers, length) {
    res.writeHead(status, { ...headers, 'content-length': String(length) });
  }

  function sendFull(res, status, headers, body) {
    sendHead(res, status, headers, body.length);
    res.end(res.req?.method === 'HEAD' ? undefined : body);
  }

  // Sends status, headers (real Content-Length) and the first half of the body, then calls done.
  function sendHalf(res, up, done) {
    sendHead(res, up.status, up.headers, up.body.length);
    const half = up.body.subarray(0, Math.floor(up.body.length / 2));
    res.flushHeaders();
    const finish = () => setImmediate(done);
    if (half.length) {
      res.write(half, finish);
    } else {
      finish();
    }
  }

  async function proxy(req, res) {
    const mySeq = ++seq;
    const url = req.url ?? '/';
    const pathOnly = url.split('?')[0];
    const write = ['POST', 'PUT', 'PATCH', 'DELETE'].includes(req.method) && !(req.method === 'POST' && /\/_search\/?$/.test(pathOnly));
    stats.total++;
    write ? stats.writes++ : stats.reads++;
    const event = { seq: mySeq, method: req.method, url, write, fault: null, status: null };

    // The kill hook first: the request it picks gets no other fault.
    let killType = null;
    if (kill) {
      const counts = kill.type === 'after-write' ? write : true;
      if (counts && ++kill.seen === kill.n) {
        killType = kill.type;
      }
    }
    const fault = killType ? null : chooseFault(config.rates, config.seed, mySeq, write);
    event.fault = killType ? `kill:${kill.spec}` : fault;
    if (fault) {
      stats.faults[fault]++;
    }

    if (killType === 'request') {
      const spec = kill.spec;
      doKill(spec, mySeq);
      event.status = 'killed';
      record(event);
      req.socket.destroy();
      return;
    }
    if (fault === 'reset') {
      event.status = 'reset';
      record(event);
      resetSocket(req.socket);
      return;
    }

    let body;
    try {
      body = await readAll(req);
    } catch (err) {
      event.status = 'client-error';
      record(event);
      resetSocket(req.socket);
      return;
    }

    if (fault === '503') {
      event.status = 503;
      record(event);
      sendFull(res, 503, { 'content-type': 'application/fhir+json; charset=utf-8' },
        Buffer.from(operationOutcome('transient', 'fault-proxy: injected 503 Service Unavailable')));
      return;
    }
    if (fault === '429') {
      event.status = 429;
      record(event);
      sendFull(res, 429, { 'content-type': 'application/fhir+json; charset=utf-8', 'retry-after': String(config.retryAfter) },
        Buffer.from(operationOutcome('throttled', 'fault-proxy: injected 429 Too Many Requests')));
      return;
    }
    if (fault === 'html') {
      const status = uniform(config.seed, mySeq, 1) < 0.5 ? 502 : 200;
      event.status = status;
      record(event);
      sendFull(res, status, { 'content-type': 'text/html; charset=utf-8' }, Buffer.from(htmlPage(status)));
      return;
    }

    let up;
    try {
      stats.forwarded++;
      up = await forward(req, body);
    } catch (err) {
      stats.upstreamErrors++;
      event.status = 502;
      event.error = err.code ?? err.message;
      record(event);
      if (!res.headersSent && !res.destroyed) {
        sendFull(res, 502, { 'content-type': 'application/fhir+json; charset=utf-8' },
          Buffer.from(operationOutcome('transient', `fault-proxy: upstream error: ${err.code ?? err.message}`)));
      }
      return;
    }
    event.status = up.status;

    if (killType === 'after-write') {
      const spec = kill.spec;
      doKill(spec, mySeq);
      record(event);
      req.socket.destroy();
      return;
    }
    if (killType === 'mid-body') {
      const spec = kill.spec;
      record(event);
      sendHalf(res, up, () => {
        doKill(spec, mySeq);
        req.socket.destroy();
      });
      return;
    }
    if (fault === 'drop-after-write') {
      record(event);
      req.socket.destroy();
      return;
    }
    if (fault === 'truncate') {
      record(event);
      sendHalf(res, up, () => req.socket.destroy());
      return;
    }
    if (fault === 'malformed') {
      const status = up.status >= 200 && up.status < 300 ? up.status : 200;
      event.status = status;
      record(event);
      const headers = { ...up.headers };
      if (!/json/i.test(headers['content-type'] ?? '')) {
        headers['content-type'] = 'application/fhir+json; charset=utf-8';
      }
      sendFull(res, status, headers, damage(up.body, config.seed, mySeq));
      return;
    }
    stats.clean++;
    let answer = up.body;
    if (config.quirks.length && req.method === 'GET') {
      const quirked = applyQuirks(url, up, mySeq);
      if (quirked) {
        answer = quirked.body;
        event.quirks = quirked.names;
      }
    }
    record(event);
    sendFull(res, up.status, up.headers, answer);
  }

  function controlConfig() {
    return { ...config, rates: { ...config.rates }, quirks: [...config.quirks], killArmed: Boolean(kill), killSeen: kill?.seen ?? 0 };
  }

  async function control(req, res) {
    const path = (req.url ?? '').split('?')[0].replace(/\/+$/, '');
    const json = (status, obj) => {
      const body = Buffer.from(JSON.stringify(obj));
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': String(body.length), 'cache-control': 'no-store' });
      res.end(body);
    };
    let body;
    try {
      body = await readAll(req, 1024 * 1024);
    } catch {
      resetSocket(req.socket);
      return;
    }
    if (path === '/__proxy/stats' && req.method === 'GET') {
      json(200, {
        ...stats,
        kills: [...stats.kills],
        killArmed: Boolean(kill),
        config: controlConfig(),
        upstream: upstreamOrigin + upstreamPath,
        baseUrl: proxyOrigin + upstreamPath,
      });
    } else if (path === '/__proxy/events' && req.method === 'GET') {
      json(200, { events });
    } else if (path === '/__proxy/config' && req.method === 'GET') {
      json(200, controlConfig());
    } else if (path === '/__proxy/config' && req.method === 'POST') {
      let patch;
      try {
        patch = body.length ? JSON.parse(body.toString('utf8')) : {};
        if (!patch || typeof patch !== 'object' || Array.isArray(patch)) {
          throw new Error('body must be a JSON object');
        }
        const known = ['rates', 'seed', 'retryAfter', 'killPid', 'killAt', 'quirks'];
        const unknown = Object.keys(patch).filter((k) => !known.includes(k));
        if (unknown.length) {
          throw new Error(`unknown config field(s): ${unknown.join(', ')} (known: ${known.join(', ')})`);
        }
        const next = { ...config };
        if ('rates' in patch) next.rates = validateRates(patch.rates);
        if ('quirks' in patch) next.quirks = validateQuirks(patch.quirks);
        if ('seed' in patch) {
          if (!Number.isInteger(patch.seed)) throw new Error('seed must be an integer');
          next.seed = patch.seed;
        }
        if ('retryAfter' in patch) next.retryAfter = checkRetryAfter(patch.retryAfter);
        if ('killPid' in patch) next.killPid = validatePid(patch.killPid);
        let nextKill = kill;
        if ('killAt' in patch) {
          const k = parseKillAt(patch.killAt);
          nextKill = k ? { ...k, seen: 0 } : null;
          next.killAt = k?.spec ?? null;
        }
        if (nextKill && next.killPid === null) {
          throw new Error('killAt needs killPid');
        }
        Object.assign(config, next);
        kill = nextKill;
        if ('quirks' in patch) {
          quirkMemory = newQuirkMemory();
        }
      } catch (err) {
        json(400, { error: err.message });
        return;
      }
      log({ msg: 'config', config: controlConfig() });
      json(200, controlConfig());
    } else if (path === '/__proxy/reset' && req.method === 'POST') {
      stats = newStats();
      seq = 0;
      events = [];
      quirkMemory = newQuirkMemory();
      if (kill) {
        kill.seen = 0;
      }
      json(200, { reset: true });
    } else {
      json(404, { error: `unknown control endpoint: ${req.method} ${path}` });
    }
  }

  const server = http.createServer({ maxHeaderSize: 64 * 1024 }, (req, res) => {
    const handler = (req.url ?? '').startsWith('/__proxy/') || req.url === '/__proxy' ? control : proxy;
    handler(req, res).catch((err) => {
      process.stderr.write(`fault-proxy: unhandled error: ${err?.stack ?? err}\n`);
      resetSocket(req.socket);
    });
  });
  server.keepAliveTimeout = 5_000;
  server.requestTimeout = 0;
  server.on('clientError', (err, socket) => {
    if (socket.writable && !socket.destroyed && err.code !== 'ECONNRESET') {
      socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    } else {
      socket.destroy();
    }
  });

  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, HOST, resolve);
  });
  proxyOrigin = `http://${HOST}:${server.address().port}`;

  let stopping = false;
  const stop = () => {
    if (stopping) {
      return;
    }
    stopping = true;
    server.close(() => process.exit(0));
    server.closeAllConnections();
    agent.destroy();
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  process.stdout.write(`fault-proxy listening ${proxyOrigin}\n`);
}

function checkRetryAfter(s) {
  if (typeof s !== 'number' || !Number.isInteger(s) || s < 0) {
    throw new Error(`retry-after must be a whole number of seconds >= 0, got ${JSON.stringify(s)}`);
  }
  return s;
}

main().catch((err) => {
  process.stderr.write(`fault-proxy: ${err?.stack ?? err}\n`);
  process.exit(1);
});
