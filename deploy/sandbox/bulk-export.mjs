// Bulk Data Access ($export) for the sandbox: the asynchronous request pattern of the FHIR Bulk
// Data Access IG (v2), over the in-memory repository.
//
//   GET {base}/Patient/$export, GET {base}/Group/{id}/$export   kick-off (Prefer: respond-async)
//       -> 202 Accepted, Content-Location: {base}/$export-status/{job}
//   GET {base}/$export-status/{job}    202 + Retry-After + X-Progress while "in progress", then
//                                      200 + Expires + the manifest (transactionTime, output[])
//   DELETE {base}/$export-status/{job} 202: the job and its files are gone
//   GET {base}/$export-file/{job}/{n}  one NDJSON file (gzip Content-Encoding when asked for; with
//                                      --bulk-gzip-files the file itself is gzip, name .ndjson.gz)
//
// Parameters: _outputFormat (application/fhir+ndjson, application/ndjson, ndjson), _type, _since,
// _typeFilter (each "Type?search", matched with Medplum's in-memory matcher). Any other parameter
// is refused (400) unless the request says `Prefer: handling=lenient`.
// The export is a snapshot taken at kick-off: transactionTime is the time of that snapshot, and
// every resource in the files was last updated at or before it.

import { matchesSearchRequest, parseSearchRequest, isResourceType, deepClone } from '@medplum/core';
import { gzipSync } from 'node:zlib';
import { randomUUID } from 'node:crypto';

const NDJSON = 'application/fhir+ndjson';
const OUTPUT_FORMATS = new Set(['application/fhir+ndjson', 'application/ndjson', 'ndjson']);
// Types in the Patient compartment that the sandbox exports when _type is not given.
const DEFAULT_TYPES = ['Patient', 'Observation', 'Condition', 'Procedure', 'DiagnosticReport', 'MedicationRequest', 'Encounter'];
const MAX_JOBS = 16;

class BulkError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// The patient a resource belongs to ("Patient/x"), or undefined.
function patientOf(resource) {
  if (resource.resourceType === 'Patient') {
    return `Patient/${resource.id}`;
  }
  const ref = resource.subject?.reference ?? resource.patient?.reference;
  if (typeof ref !== 'string') {
    return undefined;
  }
  const m = /(?:^|\/)(Patient\/[^/]+)(?:\/_history\/[^/]+)?$/.exec(ref);
  return m ? m[1] : undefined;
}

function parseKickoff(url, path, headers, repo) {
  const lenient = /handling\s*=\s*lenient/i.test(headers.prefer ?? '');
  if (!/respond-async/i.test(headers.prefer ?? '')) {
    throw new BulkError(400, 'a Bulk Data kick-off needs the header "Prefer: respond-async"');
  }
  const accept = headers.accept;
  if (accept && !/application\/fhir\+json|application\/json|\*\/\*/i.test(accept)) {
    throw new BulkError(400, `Accept must be application/fhir+json for a kick-off, not ${accept}`);
  }
  const req = { types: undefined, since: undefined, typeFilters: [], group: undefined, lenient };
  const segments = path.split('/');
  if (segments[0] === 'Group') {
    req.group = segments[1];
  }
  for (const [key, value] of url.searchParams) {
    if (key === '_outputFormat') {
      if (!OUTPUT_FORMATS.has(value)) {
        throw new BulkError(400, `_outputFormat ${value} is not supported (application/fhir+ndjson is)`);
      }
    } else if (key === '_type') {
      req.types = [...(req.types ?? []), ...value.split(',').map((t) => t.trim()).filter(Boolean)];
      for (const t of req.types) {
        if (!isResourceType(t)) {
          throw new BulkError(400, `_type names an unknown resource type: ${t}`);
        }
      }
    } else if (key === '_since') {
      const at = Date.parse(value);
      if (!/^\d{4}-\d{2}-\d{2}T/.test(value) || Number.isNaN(at)) {
        throw new BulkError(400, `_since must be a FHIR instant, not ${value}`);
      }
      req.since = at;
    } else if (key === '_typeFilter') {
      // Several filters may share one parameter, separated by commas outside the queries' own
      // values: a new filter starts where ",Type?" begins.
      for (const part of value.split(/,(?=[A-Z][A-Za-z]+\?)/)) {
        const q = part.indexOf('?');
        const type = q > 0 ? part.slice(0, q) : '';
        if (!isResourceType(type)) {
          throw new BulkError(400, `_typeFilter must be Type?search, not ${part}`);
        }
        req.typeFilters.push(parseSearchRequest(part));
      }
    } else if (!lenient) {
      throw new BulkError(400, `the sandbox's $export does not support the parameter ${key}`);
    }
  }
  if (req.group !== undefined && !repo.resources.get('Group')?.has(req.group)) {
    throw new BulkError(404, `Group/${req.group} is not on this server`);
  }
  return req;
}

export function createBulkExport({ repo, baseUrl, fileResources = 1000, gzipFiles = false, progressPolls = 1, retryAfterSeconds = 1, expiresSeconds = 3600 }) {
  const jobs = new Map();

  function snapshot(req) {
    const types = req.types ?? DEFAULT_TYPES;
    let members;
    if (req.group !== undefined) {
      const group = repo.resources.get('Group').get(req.group);
      members = new Set((group.member ?? []).map((m) => m.entity?.reference).filter((r) => typeof r === 'string'));
    }
    const files = [];
    for (const type of types) {
      const filters = req.typeFilters.filter((f) => f.resourceType === type);
      const lines = [];
      for (const resource of repo.resources.get(type)?.values() ?? []) {
        if (req.since !== undefined && !(Date.parse(resource.meta?.lastUpdated ?? '') > req.since)) {
          continue;
        }
        const patient = patientOf(resource);
        if (members && !(patient && members.has(patient))) {
          continue;
        }
        if (filters.length && !filters.some((f) => matchesSearchRequest(resource, f))) {
          continue;
        }
        lines.push(JSON.stringify(deepClone(resource)));
      }
      for (let i = 0; i < lines.length; i += fileResources) {
        const chunk = lines.slice(i, i + fileResources);
        files.push({ type, count: chunk.length, text: chunk.join('\n') + '\n' });
      }
    }
    return files;
  }

  function kickoff(req, url, res, send) {
    if (jobs.size >= MAX_JOBS) {
      // The oldest job goes: a test server should not fill up with abandoned exports.
      jobs.delete(jobs.keys().next().value);
    }
    const id = randomUUID();
    const job = {
      id,
      request: `${baseUrl}${url.pathname.slice('/fhir'.length)}${url.search}`,
      transactionTime: new Date().toISOString(),
      files: snapshot(req),
      polls: 0,
      expires: Date.now() + expiresSeconds * 1000,
    };
    jobs.set(id, job);
    res.writeHead(202, { 'Content-Location': `${baseUrl}/$export-status/${id}`, 'Content-Length': 0 });
    res.end();
    return 202;
  }

  function manifest(job, requiresAccessToken) {
    return {
      transactionTime: job.transactionTime,
      request: job.request,
      requiresAccessToken,
      output: job.files.map((f, n) => ({ type: f.type, url: `${baseUrl}/$export-file/${job.id}/${n}${gzipFiles ? '.ndjson.gz' : '.ndjson'}`, count: f.count })),
      error: [],
    };
  }

  // Handles a Bulk Data request; returns its status, or undefined when the request is not one.
  function handle(req, res, url, method, path, { send, requiresAccessToken }) {
    try {
      const segments = path.split('/');
      const isKickoff = (segments.length === 2 && segments[0] === 'Patient' && segments[1] === '$export') ||
        (segments.length === 3 && segments[0] === 'Group' && segments[2] === '$export');
      if (isKickoff) {
        if (method !== 'GET') {
          throw new BulkError(405, 'the sandbox starts an export with GET only');
        }
        return kickoff(parseKickoff(url, path, req.headers, repo), url, res, send);
      }
      if (segments[0] === '$export-status' && segments.length === 2) {
        const job = jobs.get(segments[1]);
        if (!job || job.expires < Date.now()) {
          jobs.delete(segments[1]);
          throw new BulkError(404, `no export job ${segments[1]} (unknown, deleted or expired)`);
        }
        if (method === 'DELETE') {
          jobs.delete(job.id);
          res.writeHead(202, { 'Content-Length': 0 });
          res.end();
          return 202;
        }
        if (method !== 'GET') {
          throw new BulkError(405, `Method not allowed on a status URL: ${method}`);
        }
        if (job.polls++ < progressPolls) {
          res.writeHead(202, { 'Retry-After': String(retryAfterSeconds), 'X-Progress': `snapshot of ${job.files.length} files, poll ${job.polls}`, 'Content-Length': 0 });
          res.end();
          return 202;
        }
        const body = JSON.stringify(manifest(job, requiresAccessToken));
        res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body), Expires: new Date(job.expires).toUTCString() });
        res.end(body);
        return 200;
      }
      if (segments[0] === '$export-file' && segments.length === 3) {
        if (method !== 'GET') {
          throw new BulkError(405, `Method not allowed on an export file: ${method}`);
        }
        const job = jobs.get(segments[1]);
        const m = /^(\d+)\.ndjson(\.gz)?$/.exec(segments[2]);
        const file = job && m && Boolean(m[2]) === gzipFiles ? job.files[Number(m[1])] : undefined;
        if (!file || job.expires < Date.now()) {
          throw new BulkError(404, `no export file ${segments[1]}/${segments[2]}`);
        }
        let data = Buffer.from(file.text, 'utf8');
        const headers = { 'Content-Type': NDJSON, Expires: new Date(job.expires).toUTCString() };
        if (gzipFiles) {
          data = gzipSync(data);
          headers['Content-Type'] = 'application/gzip';
        } else if (/\bgzip\b/.test(req.headers['accept-encoding'] ?? '')) {
          data = gzipSync(data);
          headers['Content-Encoding'] = 'gzip';
        }
        headers['Content-Length'] = data.length;
        res.writeHead(200, headers);
        res.end(data);
        return 200;
      }
      return undefined;
    } catch (err) {
      if (!(err instanceof BulkError)) {
        throw err;
      }
      send(res, err.status, {
        resourceType: 'OperationOutcome',
        issue: [{ severity: 'error', code: err.status === 404 ? 'not-found' : 'invalid', details: { text: err.message } }],
      });
      return err.status;
    }
  }

  return { handle, jobCount: () => jobs.size };
}
