// A real OpenID provider for end-to-end tests: oidc-provider on 127.0.0.1, issuing JWT access tokens for one
// resource server (the hub) through the client credentials grant, and signing people in with the authorization
// code flow.
//
//   node provider.mjs --port P --keys FILE --audience AUD [--client ID:SECRET:CLAIMS_JSON]...
//                     [--login-client ID:SECRET:REDIRECT_URI]... [--user LOGIN:PASSWORD:CLAIMS_JSON]...
//                     [--user-claims-in userinfo|id_token]
//       Serves the issuer http://127.0.0.1:P. FILE is a JSON Web Key Set of private keys; the first key signs.
//       A --client is confidential, with the client credentials grant only; it authenticates with its secret
//       in the Authorization header or in the form (oidc-provider accepts client_secret_post for a client
//       registered with client_secret_basic). CLAIMS_JSON (an object, e.g. {}) is added to each of its access
//       tokens. Access tokens are JWTs (RS256) for the resource AUD, which is also those clients' default
//       resource.
//       A --login-client uses the authorization code flow with PKCE (S256, required) and the one redirect URI;
//       with an empty SECRET it is a public client. It may ask for the scopes openid and roles (the claim
//       `roles`). Its access tokens are the provider's own, for its userinfo endpoint.
//       A --user is an account that signs in at /interaction/UID with a form (fields login and password,
//       posted to /interaction/UID/login); CLAIMS_JSON holds its claims (e.g. {"roles":["officer"]}). Consent
//       is granted without asking. The user's claims go into the userinfo answer (the default, as the
//       specification has it for the code flow) or, with --user-claims-in id_token, into the ID token.
//       The end_session_endpoint (RP-initiated logout) is advertised.
//       Prints {"ready":true,"issuer":"..."} on one line once it listens.
//
//   node provider.mjs --make-key KID
//       Prints a fresh private RSA key (2048 bits) as a JWK with kid KID, alg RS256 and use sig.

import crypto from 'node:crypto';
import fs from 'node:fs';
import process from 'node:process';

function fail(message) {
  process.stderr.write(`provider.mjs: ${message}\n`);
  process.exit(2);
}

/// Splits A:B:REST at its first two colons (REST may contain more).
function splitThree(flag, value, shape) {
  const first = value.indexOf(':');
  const second = first < 0 ? -1 : value.indexOf(':', first + 1);
  if (second < 0) fail(`${flag} wants ${shape}, got ${value}`);
  return [value.slice(0, first), value.slice(first + 1, second), value.slice(second + 1)];
}

function parseClaims(flag, name, text) {
  let claims;
  try {
    claims = JSON.parse(text);
  } catch (error) {
    fail(`the claims of ${flag} ${name} are not JSON: ${error.message}`);
  }
  if (claims === null || typeof claims !== 'object' || Array.isArray(claims)) {
    fail(`the claims of ${flag} ${name} must be a JSON object`);
  }
  return claims;
}

function parseArgs(argv) {
  const options = { clients: [], loginClients: [], users: [], userClaimsIn: 'userinfo' };
  for (let i = 0; i < argv.length; i += 1) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (value === undefined) fail(`${flag} needs a value`);
    i += 1;
    switch (flag) {
      case '--port': options.port = Number.parseInt(value, 10); break;
      case '--keys': options.keys = value; break;
      case '--audience': options.audience = value; break;
      case '--make-key': options.makeKey = value; break;
      case '--client': {
        const [id, secret, claims] = splitThree(flag, value, 'ID:SECRET:CLAIMS_JSON');
        options.clients.push({ id, secret, claims: parseClaims(flag, id, claims) });
        break;
      }
      case '--login-client': {
        const [id, secret, redirectUri] = splitThree(flag, value, 'ID:SECRET:REDIRECT_URI');
        options.loginClients.push({ id, secret, redirectUri });
        break;
      }
      case '--user': {
        const [login, password, claims] = splitThree(flag, value, 'LOGIN:PASSWORD:CLAIMS_JSON');
        options.users.push({ login, password, claims: parseClaims(flag, login, claims) });
        break;
      }
      case '--user-claims-in': {
        if (value !== 'userinfo' && value !== 'id_token') fail('--user-claims-in is userinfo or id_token');
        options.userClaimsIn = value;
        break;
      }
      default: fail(`unknown argument ${flag}`);
    }
  }
  return options;
}

function makeKey(kid) {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };
}

const options = parseArgs(process.argv.slice(2));

if (options.makeKey !== undefined) {
  process.stdout.write(`${JSON.stringify(makeKey(options.makeKey))}\n`);
  process.exit(0);
}

if (!Number.isInteger(options.port) || options.port <= 0) fail('--port is required');
if (!options.keys) fail('--keys is required');
if (!options.audience) fail('--audience is required');

const jwks = JSON.parse(fs.readFileSync(options.keys, 'utf8'));
if (!Array.isArray(jwks.keys) || jwks.keys.length === 0) fail(`${options.keys} holds no keys`);

const { default: Provider } = await import('oidc-provider');

const issuer = `http://127.0.0.1:${options.port}`;
const audience = options.audience;
const claimsByClient = new Map(options.clients.map((c) => [c.id, c.claims]));

const users = new Map(options.users.map((u) => [u.login, u]));
const loginClientIds = new Set(options.loginClients.map((c) => c.id));

const provider = new Provider(issuer, {
  jwks,
  clients: [
    ...options.clients.map((c) => ({
      client_id: c.id,
      client_secret: c.secret,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: 'read write',
    })),
    ...options.loginClients.map((c) => ({
      client_id: c.id,
      ...(c.secret
        ? { client_secret: c.secret, token_endpoint_auth_method: 'client_secret_basic' }
        : { token_endpoint_auth_method: 'none' }),
      grant_types: ['authorization_code'],
      response_types: ['code'],
      redirect_uris: [c.redirectUri],
      scope: 'openid roles',
    })),
  ],
  scopes: ['openid', 'read', 'write', 'roles'],
  claims: { openid: ['sub'], roles: ['roles'] },
  conformIdTokenClaims: options.userClaimsIn === 'userinfo',
  pkce: { required: () => true },
  async findAccount(_ctx, sub) {
    const user = users.get(sub);
    if (!user) return undefined;
    return { accountId: sub, claims: async () => ({ ...user.claims, sub }) };
  },
  // The test users consent to whatever a login client asks for: no consent page.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const accountId = ctx.oidc.session.accountId;
    if (!accountId || !loginClientIds.has(ctx.oidc.client.clientId)) return undefined;
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId });
    grant.addOIDCScope([...ctx.oidc.requestParamScopes].join(' '));
    await grant.save();
    return grant;
  },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // Only the machine clients' tokens are for the hub; a login client's are for the userinfo endpoint.
      defaultResource: (_ctx, client) => (loginClientIds.has(client?.clientId) ? undefined : audience),
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, resourceIndicator) => {
        if (resourceIndicator !== audience) {
          throw new Provider.errors.InvalidTarget(`unknown resource ${resourceIndicator}`);
        }
        return {
          scope: 'read write',
          audience,
          accessTokenTTL: 3600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  extraTokenClaims: (_ctx, token) => {
    const clientId = token.clientId ?? token.client?.clientId;
    return claimsByClient.get(clientId);
  },
});

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

// The sign-in pages: GET /interaction/UID shows the form, POST /interaction/UID/login checks it.
provider.use(async (ctx, next) => {
  const match = /^\/interaction\/([^/]+)(\/login)?$/.exec(ctx.path);
  if (!match) return next();
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  if (ctx.method === 'GET' && !match[2]) {
    ctx.type = 'html';
    ctx.body = `<!doctype html><title>Sign in</title><p>${escapeHtml(details.prompt.name)}</p>
<form method="post" action="/interaction/${escapeHtml(details.uid)}/login">
<input name="login" autofocus><input name="password" type="password"><button>Sign in</button></form>`;
    return undefined;
  }
  if (ctx.method === 'POST' && match[2]) {
    const form = await readForm(ctx.req);
    const user = users.get(form.get('login') ?? '');
    if (!user || user.password !== form.get('password')) {
      ctx.status = 401;
      ctx.type = 'html';
      ctx.body = '<!doctype html><p>Wrong login or password.</p>';
      return undefined;
    }
    const returnTo = await provider.interactionResult(
      ctx.req,
      ctx.res,
      { login: { accountId: user.login } },
      { mergeWithLastSubmission: false },
    );
    ctx.redirect(returnTo);
    ctx.status = 303;
    return undefined;
  }
  return next();
});

provider.on('server_error', (_ctx, error) => {
  process.stderr.write(`server_error: ${error.stack ?? error}\n`);
});

const server = provider.listen(options.port, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ ready: true, issuer })}\n`);
});
server.on('error', (error) => fail(`listening on ${options.port}: ${error.message}`));

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
