// SMART Backend Services for the sandbox (SMART App Launch 2.2, client-confidential-asymmetric):
// the discovery document, a token endpoint that verifies the client's signed assertion with the
// `jose` library (signature against the registered JWK Set, alg RS384/ES384, iss = sub = client id,
// aud = the token URL, exp at most five minutes ahead, jti never seen before) and grants
// client_credentials; and the check that every FHIR request carries a live access token.
//
//   GET  /fhir/.well-known/smart-configuration   discovery (no token needed)
//   POST /auth/token                              the token endpoint (form-encoded)
//   POST /auth/revoke-all                         tests: every issued token stops working (401)
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createLocalJWKSet, decodeProtectedHeader, jwtVerify } from 'jose';

const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const MAX_ASSERTION_SECONDS = 300;
const SKEW_SECONDS = 30;

export function createSmartAuth({ jwksFile, clientId, tokenSeconds, origin }) {
  const jwks = createLocalJWKSet(JSON.parse(readFileSync(jwksFile, 'utf8')));
  const tokenUrl = `${origin}/auth/token`;
  const seenJti = new Map(); // jti -> exp (seconds)
  const tokens = new Map(); // access token -> { exp, scope }
  const stats = { granted: 0, refused: 0 };

  const json = (res, status, body, headers = {}) => {
    const data = JSON.stringify(body);
    res.writeHead(status, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store', 'Content-Length': Buffer.byteLength(data), ...headers });
    res.end(data);
  };
  const refuse = (res, error, description) => {
    stats.refused += 1;
    json(res, error === 'invalid_client' ? 401 : 400, { error, error_description: description });
  };

  async function token(req, res, form) {
    const now = Math.floor(Date.now() / 1000);
    for (const [jti, exp] of seenJti) if (exp + SKEW_SECONDS < now) seenJti.delete(jti);
    if (form.grant_type !== 'client_credentials') return refuse(res, 'unsupported_grant_type', 'grant_type must be client_credentials');
    if (form.client_assertion_type !== ASSERTION_TYPE) return refuse(res, 'invalid_request', `client_assertion_type must be ${ASSERTION_TYPE}`);
    if (typeof form.client_assertion !== 'string') return refuse(res, 'invalid_request', 'client_assertion is missing');
    let payload;
    try {
      const header = decodeProtectedHeader(form.client_assertion);
      if (!header.kid) return refuse(res, 'invalid_client', 'the assertion header has no kid');
      ({ payload } = await jwtVerify(form.client_assertion, jwks, {
        algorithms: ['RS384', 'ES384'],
        issuer: clientId,
        subject: clientId,
        audience: tokenUrl,
        typ: 'JWT',
        requiredClaims: ['exp', 'jti'],
        clockTolerance: SKEW_SECONDS,
      }));
    } catch (err) {
      return refuse(res, 'invalid_client', `the client assertion was not accepted: ${err.code ?? ''} ${err.message}`.trim());
    }
    if (payload.exp > now + MAX_ASSERTION_SECONDS + SKEW_SECONDS) {
      return refuse(res, 'invalid_client', 'the assertion expires more than five minutes from now');
    }
    if (seenJti.has(payload.jti)) return refuse(res, 'invalid_client', `the assertion's jti ${payload.jti} was already used`);
    seenJti.set(payload.jti, payload.exp);
    const access = randomBytes(24).toString('hex');
    const scope = typeof form.scope === 'string' ? form.scope : '';
    tokens.set(access, { exp: now + tokenSeconds, scope });
    stats.granted += 1;
    json(res, 200, { access_token: access, token_type: 'bearer', expires_in: tokenSeconds, scope });
  }

  return {
    tokenUrl,
    stats,
    // Serves the SMART endpoints; true when it answered the request.
    async handle(req, res, url, readForm) {
      if (req.method === 'GET' && url.pathname === '/fhir/.well-known/smart-configuration') {
        json(res, 200, {
          token_endpoint: tokenUrl,
          grant_types_supported: ['client_credentials'],
          token_endpoint_auth_methods_supported: ['private_key_jwt'],
          token_endpoint_auth_signing_alg_values_supported: ['RS384', 'ES384'],
          scopes_supported: ['system/*.rs', 'system/*.cruds', 'system/*.read', 'system/*.write'],
          capabilities: ['client-confidential-asymmetric'],
        });
        return true;
      }
      if (req.method === 'POST' && url.pathname === '/auth/token') {
        await token(req, res, await readForm());
        return true;
      }
      if (req.method === 'POST' && url.pathname === '/auth/revoke-all') {
        tokens.clear();
        json(res, 200, { revoked: true, ...stats });
        return true;
      }
      return false;
    },
    // Whether a FHIR request carries a live token.
    authorized(req) {
      const h = req.headers.authorization ?? '';
      const m = /^Bearer\s+(\S+)$/i.exec(h);
      const t = m ? tokens.get(m[1]) : undefined;
      return t !== undefined && t.exp > Math.floor(Date.now() / 1000);
    },
  };
}
