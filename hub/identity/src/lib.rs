//! OpenID Connect on the resource-server side: the hub accepts JWT bearer access tokens from the issuers its
//! configuration trusts (`[[oidc.issuers]]`), one per city or organisation, beside its own hub tokens.
//!
//! Each issuer's discovery document (`{issuer}/.well-known/openid-configuration`) and key set (`jwks_uri`) are
//! fetched on first use and cached. Keys rotate without a restart: the set is fetched again when it is older than
//! `jwks_refresh_secs`, and at once (at most every `min_refresh_secs`) when a token names a key id the cache does
//! not know. A token is accepted only if all of this holds: it names a configured issuer (`iss`, exactly), its
//! audience (`aud`) includes the issuer entry's `audience`, it is within `exp`/`nbf` (with `leeway_secs`), it is
//! signed with an asymmetric algorithm (RS*, PS*, ES*, EdDSA: never `none`, never an HMAC that could take a
//! public key as its secret) by a key of the issuer's set whose type fits the algorithm, and it has a `sub`.
//!
//! The verified token becomes a [`hub_policy::Principal`] whose names carry the issuer's domain: subject
//! `{sub}@{domain}`, roles `{role}@{domain}` from the configured roles claim (`roles` by default), so the policy
//! can tell Fujisawa's officers from Santander's (`p, officer@fujisawa, santander-air-*, read`).
//!
//! On the client side, [`ClientCredentials`] fetches and caches access tokens with the client credentials
//! grant (for the hub's own calls to other hubs), and [`Login`] signs people in from the browser with the
//! authorization code flow (PKCE, `state`, `nonce`, the ID token verified) into in-memory sessions
//! (`[oidc.login]`).

mod client;
mod config;
mod error;
mod login;
mod provider;
mod verifier;

pub use client::{ClientCredentials, ClientCredentialsConfig};
pub use config::{IssuerConfig, LoginConfig, OidcConfig};
pub use error::OidcError;
pub use login::{Callback, Login, SignedIn, Started, check_return_to};
pub use verifier::OidcVerifier;

/// Now, in µs since the epoch.
pub(crate) fn now_micros() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// Whether a bearer token has the shape of a JWT (three base64url parts), as opposed to a hub token.
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let ok = |part: Option<&str>| {
        part.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_some() && parts.next().is_none()
}
