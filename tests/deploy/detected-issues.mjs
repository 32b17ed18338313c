// For scripts/test-deploy: compares the DetectedIssues on a FHIR server with the expected findings
// of `calcalert sandbox seed --expected FILE`, as sorted "Patient/id rule" lines.
//   node tests/deploy/detected-issues.mjs FHIR_BASE EXPECTED_JSON
// Prints "N of M" (DetectedIssues found of those expected); exit 0 when the two are equal, each
// expected finding written once, 1 otherwise (the differences and any finding written twice on
// stderr).
import fs from 'node:fs';

const [base, expectedFile] = process.argv.slice(2);
const expected = JSON.parse(fs.readFileSync(expectedFile, 'utf8'))
  .patients.flatMap((p) => p.expect.map((rule) => `${p.patient} ${rule}`)).sort();
const found = [];
let url = `${base}/DetectedIssue?_count=200`;
while (url) {
  const res = await fetch(url);
  if (res.status !== 200) throw new Error(`${url}: HTTP ${res.status}`);
  const bundle = await res.json();
  for (const { resource } of bundle.entry ?? []) {
    if (resource.status === 'cancelled' || resource.status === 'entered-in-error') continue;
    const rule = resource.code?.coding?.find((c) => c.system === 'urn:calcalert:rule')?.code;
    found.push(`${resource.patient?.reference} ${rule}`);
  }
  url = bundle.link?.find((l) => l.relation === 'next')?.url;
}
found.sort();
console.log(`${found.length} of ${expected.length}`);
const missing = expected.filter((e) => !found.includes(e));
const extra = found.filter((f) => !expected.includes(f));
for (const m of missing) console.error(`missing: ${m}`);
for (const x of extra) console.error(`not expected: ${x}`);
const twice = [...new Set(found.filter((f, i) => i > 0 && found[i - 1] === f))];
for (const t of twice) console.error(`written more than once: ${t} (${found.filter((f) => f === t).length} DetectedIssues)`);
process.exit(expected.length > 0 && missing.length === 0 && extra.length === 0 && twice.length === 0 ? 0 : 1);
