//! Browser sign-in against the home OpenID provider: the authorization code flow with PKCE (S256), `state` and
//! `nonce`, the ID token verified with the `openidconnect` crate, and server-side sessions.
//!
//! A sign-in in progress is remembered by its `state` (with its PKCE verifier, nonce and where to go back to)
//! for ten minutes at most, and is used once. A session is a random 32-byte id the browser keeps in a cookie;
//! the hub keeps only its SHA-256, with the principal and the expiry. Both maps are bounded and live in memory:
//! a restart signs everyone out.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use base64::Engine;
use hub_policy::Principal;
use openidconnect::{
    AccessToken, AdditionalClaims, AuthenticationFlow, AuthorizationCode, Client, ClientId, ClientSecret, CsrfToken,
    EmptyExtraTokenFields, EndSessionUrl, EndpointMaybeSet, EndpointNotSet, EndpointSet, IdTokenFields, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, StandardErrorResponse,
    StandardTokenResponse, SubjectIdentifier, UserInfoClaims,
    core::{
        CoreAuthDisplay, CoreAuthPrompt, CoreErrorResponseType, CoreGenderClaim, CoreJsonWebKey,
        CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm, CoreResponseType, CoreRevocableToken,
        CoreRevocationErrorResponse, CoreTokenIntrospectionResponse, CoreTokenType,
    },
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::{
    IssuerConfig, LoginConfig, OidcConfig, OidcError,
    error::chain,
    now_micros,
    provider::{discover, http_client, token_error},
    verifier::principal,
};

/// How long a sign-in may take from the redirect to the provider to the callback.
const PENDING_TTL: Duration = Duration::from_secs(600);
/// Sign-ins in progress at once; beyond it the oldest is forgotten (its callback is then refused).
const MAX_PENDING: usize = 10_000;
/// Sessions at once; beyond it expired ones are dropped, then the one closest to its end.
const MAX_SESSIONS: usize = 10_000;
/// The longest `return_to` accepted.
const MAX_RETURN_TO: usize = 2048;

/// The signature algorithms accepted for ID tokens: asymmetric only, as for access tokens.
const ID_TOKEN_ALGORITHMS: [CoreJwsSigningAlgorithm; 9] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// The claims of an ID token or userinfo answer beyond the standard ones; the roles claim is among them.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
struct OtherClaims {
    #[serde(flatten)]
    claims: serde_json::Map<String, Value>,
}

impl AdditionalClaims for OtherClaims {}

type TokenResponse = StandardTokenResponse<
    IdTokenFields<
        OtherClaims,
        EmptyExtraTokenFields,
        CoreGenderClaim,
        CoreJweContentEncryptionAlgorithm,
        CoreJwsSigningAlgorithm,
    >,
    CoreTokenType,
>;

type RelyingParty = Client<
    OtherClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    TokenResponse,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// What discovery told about the provider, turned into a client.
struct Provider {
    client: RelyingParty,
    end_session: Option<EndSessionUrl>,
    fetched: Instant,
}

#[derive(Default)]
struct Attempt {
    at: Option<Instant>,
    error: Option<String>,
}

struct Pending {
    verifier: PkceCodeVerifier,
    nonce: Nonce,
    return_to: String,
    started: Instant,
}

struct Session {
    principal: Principal,
    expires_micros: i64,
    id_token: Option<String>,
}

/// A sign-in that has begun: send the browser to `authorization_url`, and bind `state` to it (a cookie), so that
/// the callback is accepted only from the browser that started the sign-in.
#[derive(Debug, Clone)]
pub struct Started {
    /// The provider's authorization endpoint with the request's parameters.
    pub authorization_url: String,
    /// The request's `state`.
    pub state: String,
}

/// The parameters the provider sends the browser back with.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Callback {
    /// The authorization code.
    pub code: Option<String>,
    /// The `state` of the sign-in.
    pub state: Option<String>,
    /// The issuer (RFC 9207), when the provider says it.
    pub iss: Option<String>,
    /// The provider's error code, when it refused.
    pub error: Option<String>,
    /// The provider's explanation of `error`.
    pub error_description: Option<String>,
}

/// A completed sign-in.
#[derive(Debug, Clone)]
pub struct SignedIn {
    /// The session id for the cookie; the hub keeps only its SHA-256.
    pub session: String,
    /// Who signed in.
    pub principal: Principal,
    /// When the session ends (µs since the epoch).
    pub expires_micros: i64,
    /// The local path to send the browser to.
    pub return_to: String,
}

/// Browser sign-in with one provider, and the sessions it opened.
pub struct Login {
    config: LoginConfig,
    issuer: IssuerConfig,
    redirect: RedirectUrl,
    origin: String,
    http: reqwest::Client,
    provider: RwLock<Option<Arc<Provider>>>,
    /// Held while discovering; the last attempt, so a provider that is down is not asked on every request.
    discovering: tokio::sync::Mutex<Attempt>,
    pending: Mutex<HashMap<String, Pending>>,
    sessions: RwLock<HashMap<[u8; 32], Session>>,
}

impl Login {
    /// The sign-in `[oidc.login]` configures (with its `[[oidc.issuers]]` entry), or `None` without one.
    /// Nothing is fetched until the first sign-in, so a provider that is down does not stop the hub.
    pub fn from_config(config: &OidcConfig) -> Result<Option<Login>, OidcError> {
        config.validate().map_err(OidcError::Config)?;
        let Some(login) = &config.login else { return Ok(None) };
        let issuer = config
            .issuers
            .iter()
            .find(|entry| entry.issuer == login.issuer)
            .ok_or_else(|| OidcError::Config(format!("oidc.login.issuer: {} is not configured", login.issuer)))?;
        Login::new(login.clone(), issuer.clone()).map(Some)
    }

    /// A sign-in with `issuer`, whose entry must be `login.issuer`'s.
    pub fn new(login: LoginConfig, issuer: IssuerConfig) -> Result<Login, OidcError> {
        OidcConfig { issuers: vec![issuer.clone()], login: Some(login.clone()) }
            .validate()
            .map_err(OidcError::Config)?;
        let redirect = RedirectUrl::new(login.redirect_url.clone())
            .map_err(|e| OidcError::Config(format!("oidc.login.redirect_url: {e}")))?;
        Ok(Login {
            http: http_client(Duration::from_secs(issuer.timeout_secs))?,
            origin: redirect.url().origin().ascii_serialization(),
            config: login,
            issuer,
            redirect,
            provider: RwLock::new(None),
            discovering: tokio::sync::Mutex::new(Attempt::default()),
            pending: Mutex::new(HashMap::new()),
            sessions: RwLock::new(HashMap::new()),
        })
    }

    /// Whether cookies carry `Secure`.
    pub fn secure_cookie(&self) -> bool {
        self.config.secure_cookie()
    }

    /// The path of the callback (`/api/v1/auth/callback`): the cookie that binds a sign-in to its browser is
    /// sent only there.
    pub fn callback_path(&self) -> &str {
        self.redirect.url().path()
    }

    /// The hub's own origin (`https://hub.example`), from the redirect URL: what a browser's `Origin` header
    /// says on the hub's own pages.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Begins a sign-in that returns to `return_to` (default `/`): the provider's authorization URL, with PKCE
    /// (S256), a fresh `state` and `nonce`.
    pub async fn begin(&self, return_to: Option<&str>) -> Result<Started, OidcError> {
        let return_to = return_to.unwrap_or("/");
        check_return_to(return_to)?;
        let provider = self.provider(false).await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = provider
            .client
            .authorize_url(
                AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        // `openid` is always asked for by the library.
        for scope in self.config.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.url();
        let pending = Pending { verifier, nonce, return_to: return_to.to_owned(), started: Instant::now() };
        let mut waiting = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if waiting.len() >= MAX_PENDING {
            waiting.retain(|_, p| p.started.elapsed() < PENDING_TTL);
        }
        if waiting.len() >= MAX_PENDING
            && let Some(oldest) = waiting.iter().min_by_key(|(_, p)| p.started).map(|(k, _)| k.clone())
        {
            waiting.remove(&oldest);
        }
        waiting.insert(state.secret().clone(), pending);
        Ok(Started { authorization_url: url.to_string(), state: state.secret().clone() })
    }

    /// Completes a sign-in from the provider's callback. `browser_state` is the `state` the browser was bound to
    /// when the sign-in began (its cookie). The `state` is used up whatever the outcome.
    pub async fn finish(&self, callback: &Callback, browser_state: Option<&str>) -> Result<SignedIn, OidcError> {
        let state = callback.state.as_deref().ok_or_else(|| OidcError::State("the callback has no state".into()))?;
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(state);
        let pending = pending.ok_or_else(|| OidcError::State("its state is unknown or was already used".into()))?;
        if pending.started.elapsed() >= PENDING_TTL {
            return Err(OidcError::State("it took longer than ten minutes".into()));
        }
        if browser_state != Some(state) {
            return Err(OidcError::State("the callback did not come from the browser that began it".into()));
        }
        if let Some(error) = &callback.error {
            return Err(OidcError::Refused {
                issuer: self.issuer.issuer.clone(),
                error: error.clone(),
                description: callback.error_description.clone(),
            });
        }
        if callback.iss.as_deref().is_some_and(|iss| iss != self.issuer.issuer) {
            return Err(OidcError::Invalid("the callback names another issuer".into()));
        }
        let code = callback.code.as_deref().ok_or_else(|| OidcError::State("the callback has no code".into()))?;

        let provider = self.provider(false).await?;
        let response = provider
            .client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|_| self.unavailable("its discovery document names no token_endpoint".into()))?
            .set_pkce_verifier(pending.verifier)
            .request_async(&self.http)
            .await
            .map_err(|e| token_error(&self.issuer.issuer, "exchanging the code failed", e))?;
        let id_token = response
            .extra_fields()
            .id_token()
            .ok_or_else(|| OidcError::Invalid("the provider answered without an ID token".into()))?;
        let verify = |provider: &Provider| {
            let verifier = provider.client.id_token_verifier().set_allowed_algs(ID_TOKEN_ALGORITHMS);
            id_token.claims(&verifier, &pending.nonce).cloned()
        };
        let claims = match verify(&provider) {
            // The provider may have rotated its keys since discovery: fetch them again, once.
            Err(openidconnect::ClaimsVerificationError::SignatureVerification(_)) => {
                verify(&*self.provider(true).await?)
            }
            other => other,
        }
        .map_err(|e| OidcError::Invalid(format!("the ID token: {}", chain(&e))))?;

        let subject = claims.subject().clone();
        let mut found = claims.additional_claims().claims.clone();
        if !found.contains_key(&self.issuer.roles_claim) {
            found.extend(self.user_info(&provider, response.access_token(), &subject).await?);
        }
        found.insert("sub".into(), Value::String(subject.as_str().to_owned()));
        let principal = principal(&found, &self.issuer)?;
        let (session, expires_micros) = self.open_session(principal.clone(), Some(id_token.to_string()))?;
        tracing::info!(subject = %principal.subject, "signed in");
        Ok(SignedIn { session, principal, expires_micros, return_to: pending.return_to })
    }

    /// The userinfo claims, when the provider has a userinfo endpoint (and nothing otherwise).
    async fn user_info(
        &self,
        provider: &Provider,
        access_token: &AccessToken,
        subject: &SubjectIdentifier,
    ) -> Result<serde_json::Map<String, Value>, OidcError> {
        let Ok(request) = provider.client.user_info(access_token.clone(), Some(subject.clone())) else {
            return Ok(serde_json::Map::new());
        };
        let answer: UserInfoClaims<OtherClaims, CoreGenderClaim> = request
            .request_async(&self.http)
            .await
            .map_err(|e| self.unavailable(format!("its userinfo endpoint failed: {}", chain(&e))))?;
        Ok(answer.additional_claims().claims.clone())
    }

    /// Opens a session for `principal` (the ID token kept for the provider's logout); returns the session id for
    /// the cookie and when the session ends. The callback does this after a sign-in.
    pub fn open_session(&self, principal: Principal, id_token: Option<String>) -> Result<(String, i64), OidcError> {
        let mut bytes = [0u8; 32];
        rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut bytes)
            .map_err(|e| OidcError::Config(format!("no randomness for a session id: {e}")))?;
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let ttl = i64::try_from(self.config.session_ttl_secs).unwrap_or(i64::MAX).saturating_mul(1_000_000);
        let now = now_micros();
        let expires_micros = now.saturating_add(ttl);
        let mut sessions = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, s| s.expires_micros > now);
        }
        if sessions.len() >= MAX_SESSIONS
            && let Some(first) = sessions.iter().min_by_key(|(_, s)| s.expires_micros).map(|(k, _)| *k)
        {
            sessions.remove(&first);
        }
        sessions.insert(digest(&id), Session { principal, expires_micros, id_token });
        Ok((id, expires_micros))
    }

    /// The principal of a live session and when it ends (µs since the epoch).
    pub fn session(&self, id: &str) -> Result<(Principal, i64), OidcError> {
        let sessions = self.sessions.read().unwrap_or_else(|e| e.into_inner());
        match sessions.get(&digest(id)) {
            Some(session) if now_micros() < session.expires_micros => {
                Ok((session.principal.clone(), session.expires_micros))
            }
            _ => Err(OidcError::Session),
        }
    }

    /// Ends a session. Returns the provider's logout URL (its `end_session_endpoint` with `client_id` and the
    /// session's `id_token_hint`) when the session existed and the provider advertises one: the browser may go
    /// there to end its session at the provider too.
    pub fn logout(&self, id: &str) -> Option<String> {
        let session = self.sessions.write().unwrap_or_else(|e| e.into_inner()).remove(&digest(id))?;
        tracing::info!(subject = %session.principal.subject, "signed out");
        let provider = self.provider.read().unwrap_or_else(|e| e.into_inner()).clone()?;
        let mut url = provider.end_session.as_ref()?.url().clone();
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("client_id", &self.config.client_id);
            if let Some(id_token) = &session.id_token {
                query.append_pair("id_token_hint", id_token);
            }
        }
        Some(url.to_string())
    }

    fn unavailable(&self, reason: String) -> OidcError {
        OidcError::Unavailable { issuer: self.issuer.issuer.clone(), reason }
    }

    /// The provider from discovery: cached for `jwks_refresh_secs`; `again` fetches it now (its keys may have
    /// rotated), unless that was done less than `min_refresh_secs` ago.
    async fn provider(&self, again: bool) -> Result<Arc<Provider>, OidcError> {
        let cached = || self.provider.read().unwrap_or_else(|e| e.into_inner()).clone();
        let fresh = |provider: &Provider, within: u64| provider.fetched.elapsed() < Duration::from_secs(within);
        if !again
            && let Some(known) = cached()
            && fresh(&known, self.issuer.jwks_refresh_secs)
        {
            return Ok(known);
        }
        let mut attempt = self.discovering.lock().await;
        let current = cached();
        let min_refresh = self.issuer.min_refresh_secs;
        if let Some(known) = &current
            && fresh(known, if again { min_refresh } else { self.issuer.jwks_refresh_secs })
        {
            return Ok(known.clone());
        }
        if let (None, Some(at), Some(error)) = (&current, attempt.at, &attempt.error)
            && at.elapsed() < Duration::from_secs(min_refresh)
        {
            return Err(self.unavailable(error.clone()));
        }
        attempt.at = Some(Instant::now());
        match discover(&self.issuer.issuer, &self.http).await {
            Ok(metadata) => {
                attempt.error = None;
                let end_session = metadata.additional_metadata().end_session_endpoint.clone();
                let client = RelyingParty::from_provider_metadata(
                    metadata,
                    ClientId::new(self.config.client_id.clone()),
                    self.config.client_secret.clone().map(ClientSecret::new),
                )
                .set_redirect_uri(self.redirect.clone());
                let provider = Arc::new(Provider { client, end_session, fetched: Instant::now() });
                *self.provider.write().unwrap_or_else(|e| e.into_inner()) = Some(provider.clone());
                Ok(provider)
            }
            Err(error) => {
                tracing::warn!(issuer = %self.issuer.issuer, %error, "discovering the sign-in provider failed");
                attempt.error = Some(error.to_string());
                // What was known stays in use while the provider is unreachable.
                current.ok_or(error)
            }
        }
    }
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// Checks that `return_to` is a path on this hub: it starts with one `/` (never `//` or `/\`, which browsers
/// read as another host), and has no backslash, whitespace or control character.
pub fn check_return_to(return_to: &str) -> Result<(), OidcError> {
    let refuse = |why: &str| Err(OidcError::ReturnTo(why.to_owned()));
    if !return_to.starts_with('/') {
        return refuse("it does not start with '/'");
    }
    if return_to.starts_with("//") || return_to.starts_with("/\\") {
        return refuse("it names another host");
    }
    if return_to.len() > MAX_RETURN_TO {
        return refuse("it is too long");
    }
    if return_to.chars().any(|c| c == '\\' || c.is_whitespace() || c.is_control()) {
        return refuse("it contains a backslash, a space or a control character");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login() -> Login {
        let issuer = IssuerConfig::new("https://id.fujisawa.example", "hub", "fujisawa");
        let mut login = LoginConfig::new(&issuer.issuer, "hub", "https://hub.example:8443/api/v1/auth/callback");
        login.session_ttl_secs = 60;
        Login::new(login, issuer).unwrap()
    }

    #[test]
    fn return_to_is_a_local_path() {
        for good in ["/", "/studio/", "/api/v1/providers?x=1#top", "/a/b%2Fc"] {
            assert!(check_return_to(good).is_ok(), "{good}");
        }
        for bad in ["//evil.example", "/\\evil.example", "https://evil.example/", "evil", "", "/a b", "/a\\b", "/\t"] {
            assert!(matches!(check_return_to(bad), Err(OidcError::ReturnTo(_))), "{bad:?}");
        }
        assert!(check_return_to(&format!("/{}", "a".repeat(MAX_RETURN_TO))).is_err());
    }

    #[test]
    fn sessions_are_found_by_id_and_end_at_logout() {
        let login = login();
        assert_eq!(login.origin(), "https://hub.example:8443");
        assert_eq!(login.callback_path(), "/api/v1/auth/callback");
        assert!(login.secure_cookie());
        let principal = Principal::new("alice@fujisawa", vec!["officer@fujisawa".into()]);
        let (id, expires) = login.open_session(principal.clone(), None).unwrap();
        assert_eq!(URL_SAFE_LEN, id.len(), "32 random bytes, base64url");
        let (found, until) = login.session(&id).unwrap();
        assert_eq!((found, until), (principal, expires));
        assert!((expires - now_micros() - 60_000_000).abs() < 5_000_000, "session_ttl_secs from now");
        let (other, _) = login.open_session(Principal::new("bob@fujisawa", vec![]), None).unwrap();
        assert_ne!(id, other);
        assert_eq!(login.session("not-a-session"), Err(OidcError::Session));
        assert_eq!(login.logout(&id), None, "no provider known: no logout URL");
        assert_eq!(login.session(&id), Err(OidcError::Session));
        assert!(login.session(&other).is_ok(), "other sessions stay");
        // Only the hash is kept.
        let sessions = login.sessions.read().unwrap();
        assert!(sessions.contains_key(&digest(&other)));
    }

    const URL_SAFE_LEN: usize = 43;

    #[tokio::test]
    async fn a_callback_needs_a_known_state_from_the_same_browser() {
        let login = login();
        login.pending.lock().unwrap().insert(
            "s1".into(),
            Pending {
                verifier: PkceCodeVerifier::new("v".repeat(43)),
                nonce: Nonce::new("n".into()),
                return_to: "/".into(),
                started: Instant::now(),
            },
        );
        let callback =
            |state: &str| Callback { code: Some("c".into()), state: Some(state.into()), ..Callback::default() };
        let refused = login.finish(&callback("s1"), Some("s2")).await;
        assert!(matches!(&refused, Err(OidcError::State(why)) if why.contains("browser")), "{refused:?}");
        let replayed = login.finish(&callback("s1"), Some("s1")).await;
        assert!(matches!(&replayed, Err(OidcError::State(why)) if why.contains("already used")), "{replayed:?}");
        let missing = login.finish(&Callback::default(), None).await;
        assert!(matches!(missing, Err(OidcError::State(_))));
    }
}
