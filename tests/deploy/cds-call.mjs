// A CDS Hooks patient-view call as an EHR makes it, for scripts/test-deploy: an ES384 JWT signed
// with the EHR's test key (the PEM of `calcalert smart keygen`; kid from its JWK Set), and the
// prefetch of one patient of a FHIR Bundle (examples/cohort/cohort.json).
//
//   node tests/deploy/cds-call.mjs --base URL --key PEM --jwks JSON --iss ISS --cohort FILE --patient ID
//   node tests/deploy/cds-call.mjs --base URL ... --discovery
// The JWT's audience is the called URL, or the service's URL under --aud BASE (the public_base_url
// of replicas behind one address); --save-token FILE writes the JWT it sent, --token FILE sends that
// one again instead of signing a new one (a replay, to another replica).
// Prints the response body; exit 0 on HTTP 200, 1 otherwise (the status on stderr).
import crypto from 'node:crypto';
import fs from 'node:fs';

const opt = {};
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const name = argv[i].replace(/^--/, '');
  if (name === 'discovery' || name === 'no-auth') opt[name] = true;
  else opt[name] = argv[++i];
}
const b64url = (buf) => Buffer.from(buf).toString('base64url');

function jwt(aud) {
  const kid = JSON.parse(fs.readFileSync(opt.jwks, 'utf8')).keys[0].kid;
  const now = Math.floor(Date.now() / 1000);
  const header = b64url(JSON.stringify({ alg: 'ES384', typ: 'JWT', kid }));
  const claims = b64url(JSON.stringify({ iss: opt.iss, sub: opt.iss, aud, iat: now, exp: now + 120, jti: crypto.randomUUID() }));
  const key = crypto.createPrivateKey(fs.readFileSync(opt.key));
  const sig = crypto.sign('sha384', Buffer.from(`${header}.${claims}`), { key, dsaEncoding: 'ieee-p1363' });
  return `${header}.${claims}.${b64url(sig)}`;
}

function patientView() {
  const bundle = JSON.parse(fs.readFileSync(opt.cohort, 'utf8'));
  const id = opt.patient;
  const mine = bundle.entry.map((e) => e.resource).filter((r) =>
    (r.resourceType === 'Patient' && r.id === id) || r.subject?.reference === `Patient/${id}`);
  const searchset = (type) => ({ resourceType: 'Bundle', type: 'searchset',
    entry: mine.filter((r) => r.resourceType === type).map((resource) => ({ resource })) });
  return {
    hook: 'patient-view',
    hookInstance: crypto.randomUUID(),
    context: { userId: 'Practitioner/test-deploy', patientId: id },
    prefetch: {
      observations: searchset('Observation'),
      conditions: searchset('Condition'),
      procedures: searchset('Procedure'),
      patient: mine.find((r) => r.resourceType === 'Patient') ?? null,
    },
  };
}

const path = opt.discovery ? '/cds-services' : '/cds-services/calcalert-patient-view';
const url = opt.base.replace(/\/$/, '') + path;
const headers = { 'content-type': 'application/json' };
if (!opt['no-auth']) {
  const token = opt.token ? fs.readFileSync(opt.token, 'utf8').trim() : jwt((opt.aud ?? opt.base).replace(/\/$/, '') + path);
  if (opt['save-token']) fs.writeFileSync(opt['save-token'], token + '\n');
  headers.authorization = `Bearer ${token}`;
}
const res = await fetch(url, opt.discovery ? { headers } : { method: 'POST', headers, body: JSON.stringify(patientView()) });
const text = await res.text();
process.stdout.write(text + '\n');
if (res.status !== 200) {
  console.error(`cds-call: ${url}: HTTP ${res.status}`);
  process.exit(1);
}
