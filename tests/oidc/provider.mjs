// A real OpenID provider for end-to-end tests: oidc-provider on 127.0.0.1, issuing JWT access tokens for one
// resource server (the hub) through the client credentials grant.
//
//   node provider.mjs --port P --keys FILE --audience AUD [--client ID:SECRET:CLAIMS_JSON]...
//       Serves the issuer http://127.0.0.1:P. FILE is a JSON Web Key Set of private keys; the first key signs.
//       Every client is confidential, with the client credentials grant only; it authenticates with its secret
//       in the Authorization header or in the form (oidc-provider accepts client_secret_post for a client
//       registered with client_secret_basic). CLAIMS_JSON (an object, e.g. {}) is added to each of its access
//       tokens. Access tokens are JWTs (RS256) for the resource AUD, which is also the default resource.
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

function parseArgs(argv) {
  const options = { clients: [] };
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
        // id:secret:json, where only the first two colons separate (the JSON may contain more).
        const first = value.indexOf(':');
        const second = first < 0 ? -1 : value.indexOf(':', first + 1);
        if (second < 0) fail(`--client wants ID:SECRET:CLAIMS_JSON, got ${value}`);
        let claims;
        try {
          claims = JSON.parse(value.slice(second + 1));
        } catch (error) {
          fail(`the claims of --client ${value.slice(0, first)} are not JSON: ${error.message}`);
        }
        if (claims === null || typeof claims !== 'object' || Array.isArray(claims)) {
          fail('the claims of a --client must be a JSON object');
        }
        options.clients.push({ id: value.slice(0, first), secret: value.slice(first + 1, second), claims });
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

const provider = new Provider(issuer, {
  jwks,
  clients: options.clients.map((c) => ({
    client_id: c.id,
    client_secret: c.secret,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
    scope: 'read write',
  })),
  scopes: ['openid', 'read', 'write'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => audience,
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
