//! The hub as an OAuth client of its own: access tokens for machine-to-machine calls (hub-to-hub links), fetched
//! with the client credentials grant at an issuer's token endpoint and cached until shortly before they expire.
//!
//! The request goes through the `openidconnect` crate (discovery, the token request, the provider's error
//! response), so the same code reads the same provider metadata as the browser sign-in does.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use openidconnect::{ClientId, ClientSecret, OAuth2TokenResponse, Scope, core::CoreClient};
use serde::Deserialize;
use tokio::time::Instant;

use crate::{
    OidcError,
    config::issuer_url,
    provider::{discover, http_client, token_error},
};

/// How long a token whose response gives no `expires_in` is used.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);

/// A token is fetched again when less than this much of its life remains, or a fifth of its lifetime,
/// whichever is less: a token handed out is never about to expire in flight.
const MAX_REFRESH_AHEAD: Duration = Duration::from_secs(60);

/// The client credentials of one client at one issuer.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCredentialsConfig {
    /// The issuer identifier (`https://id.fujisawa.example`); its token endpoint is found through discovery.
    pub issuer: String,
    /// The client id.
    pub client_id: String,
    /// The client secret (sent with HTTP Basic authentication).
    pub client_secret: String,
    /// The resource indicator (RFC 8707) of the API the tokens are for, e.g. the peer hub's audience. Providers
    /// such as `oidc-provider` need it to issue JWT access tokens for that audience.
    #[serde(default)]
    pub resource: Option<String>,
    /// The scopes asked for, space-separated (`read write`).
    #[serde(default)]
    pub scope: Option<String>,
    /// Seconds to wait for discovery and for the token endpoint.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

fn default_timeout() -> u64 {
    10
}

impl std::fmt::Debug for ClientCredentialsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentialsConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"(redacted)")
            .field("resource", &self.resource)
            .field("scope", &self.scope)
            .field("timeout_secs", &self.timeout_secs)
            .finish()
    }
}

impl ClientCredentialsConfig {
    /// A configuration with the defaults (no resource, no scope, 10 s timeout).
    pub fn new(issuer: &str, client_id: &str, client_secret: &str) -> ClientCredentialsConfig {
        ClientCredentialsConfig {
            issuer: issuer.to_owned(),
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            resource: None,
            scope: None,
            timeout_secs: default_timeout(),
        }
    }

    /// Checks the fields; the error names the one that is wrong.
    pub fn validate(&self) -> Result<(), String> {
        issuer_url("issuer", &self.issuer)?;
        if self.client_id.is_empty() {
            return Err("client_id: must not be empty".into());
        }
        if self.client_secret.is_empty() {
            return Err("client_secret: must not be empty".into());
        }
        if let Some(resource) = &self.resource {
            let url = url::Url::parse(resource).map_err(|e| format!("resource: not an absolute URI: {e}"))?;
            if url.fragment().is_some() {
                return Err("resource: a resource indicator has no fragment".into());
            }
        }
        if self.timeout_secs == 0 {
            return Err("timeout_secs: must be at least 1".into());
        }
        Ok(())
    }
}

/// A token in the cache.
#[derive(Clone)]
struct Cached {
    token: String,
    /// From then on the next caller fetches a new token.
    refresh_at: Instant,
    /// After this the token is never handed out.
    expires_at: Instant,
}

struct Inner {
    config: ClientCredentialsConfig,
    http: reqwest::Client,
    cached: RwLock<Option<Cached>>,
    /// Held while fetching, so one fetch runs at a time; keeps the client built from discovery.
    fetching: tokio::sync::Mutex<Option<TokenClient>>,
}

type TokenClient = CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

/// Access tokens from the client credentials grant, cached. Cheap to clone (the clones share the cache).
#[derive(Clone)]
pub struct ClientCredentials {
    inner: Arc<Inner>,
}

impl ClientCredentials {
    /// A client for these credentials. Nothing is fetched until the first token is asked for.
    pub fn new(config: ClientCredentialsConfig) -> Result<Self, OidcError> {
        config.validate().map_err(OidcError::Config)?;
        let http = http_client(Duration::from_secs(config.timeout_secs))?;
        Ok(ClientCredentials {
            inner: Arc::new(Inner { config, http, cached: RwLock::new(None), fetching: tokio::sync::Mutex::new(None) }),
        })
    }

    /// A valid access token, fetched with the client credentials grant at the issuer's token endpoint (found
    /// through discovery), cached until shortly before it expires (refresh ahead), one fetch at a time.
    ///
    /// While a token is still valid but due for refresh, callers that find a fetch already running get the
    /// current token instead of waiting, and a failed refresh hands out the current token until it expires (the
    /// failure is logged). Errors: [`OidcError::Unavailable`] when the issuer cannot be reached or answers
    /// something unusable, [`OidcError::Refused`] when the token endpoint refuses (e.g. `invalid_client`, with
    /// the provider's `error_description`).
    pub async fn access_token(&self) -> Result<String, OidcError> {
        let current = match due(self.cached().as_ref(), Instant::now()) {
            Due::Fresh(token) => return Ok(token),
            Due::Refresh(token) => Some(token),
            Due::Expired => None,
        };
        let mut client = match (&current, self.inner.fetching.try_lock()) {
            (_, Ok(guard)) => guard,
            // Someone else is fetching and the current token is still good: no need to wait.
            (Some(token), Err(_)) => return Ok(token.clone()),
            (None, Err(_)) => self.inner.fetching.lock().await,
        };
        // Fetched by another caller while this one waited.
        let current = match due(self.cached().as_ref(), Instant::now()) {
            Due::Fresh(token) => return Ok(token),
            Due::Refresh(token) => Some(token),
            Due::Expired => None,
        };
        match self.fetch(&mut client).await {
            Ok(fresh) => {
                let token = fresh.token.clone();
                *self.inner.cached.write().unwrap_or_else(|e| e.into_inner()) = Some(fresh);
                Ok(token)
            }
            Err(error) => match current {
                Some(still_valid) => {
                    tracing::warn!(issuer = %self.inner.config.issuer, %error,
                        "refreshing the access token failed; the current one is used until it expires");
                    Ok(still_valid)
                }
                None => Err(error),
            },
        }
    }

    fn cached(&self) -> Option<Cached> {
        self.inner.cached.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One token request; discovers the provider first when that has not been done (or failed last time).
    async fn fetch(&self, client: &mut Option<TokenClient>) -> Result<Cached, OidcError> {
        let config = &self.inner.config;
        let token_client = match client.take() {
            Some(known) => known,
            None => {
                let metadata = discover(&config.issuer, &self.inner.http).await?;
                CoreClient::from_provider_metadata(
                    metadata,
                    ClientId::new(config.client_id.clone()),
                    Some(ClientSecret::new(config.client_secret.clone())),
                )
            }
        };
        let asked = Instant::now();
        let result = self.request(&token_client).await;
        // A provider that could not be used is discovered again next time: its endpoints may have moved.
        if !matches!(result, Err(OidcError::Unavailable { .. })) {
            *client = Some(token_client);
        }
        let (token, lifetime) = result?;
        let lifetime = lifetime.unwrap_or(DEFAULT_LIFETIME);
        Ok(Cached { token, refresh_at: asked + lifetime - refresh_ahead(lifetime), expires_at: asked + lifetime })
    }

    async fn request(&self, client: &TokenClient) -> Result<(String, Option<Duration>), OidcError> {
        let config = &self.inner.config;
        let unavailable = |reason: String| OidcError::Unavailable { issuer: config.issuer.clone(), reason };
        let mut request = client
            .exchange_client_credentials()
            .map_err(|_| unavailable("its discovery document names no token_endpoint".into()))?;
        for scope in config.scope.iter().flat_map(|s| s.split_whitespace()) {
            request = request.add_scope(Scope::new(scope.to_owned()));
        }
        if let Some(resource) = &config.resource {
            request = request.add_extra_param("resource", resource.clone());
        }
        let response = request
            .request_async(&self.inner.http)
            .await
            .map_err(|e| token_error(&config.issuer, "the token request failed", e))?;
        Ok((response.access_token().secret().clone(), response.expires_in()))
    }
}

/// Where a cached token stands at `now`.
#[derive(Debug, PartialEq)]
enum Due {
    /// Hand it out.
    Fresh(String),
    /// Fetch a new one, but this one may still be handed out.
    Refresh(String),
    /// None, or expired: fetch, and wait for it.
    Expired,
}

fn due(cached: Option<&Cached>, now: Instant) -> Due {
    match cached {
        Some(cached) if now < cached.refresh_at => Due::Fresh(cached.token.clone()),
        Some(cached) if now < cached.expires_at => Due::Refresh(cached.token.clone()),
        _ => Due::Expired,
    }
}

/// How long before its expiry a token of this lifetime is fetched again.
fn refresh_ahead(lifetime: Duration) -> Duration {
    (lifetime / 5).min(MAX_REFRESH_AHEAD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_handed_out_then_refreshed_then_never() {
        let now = Instant::now();
        let lifetime = Duration::from_secs(3600);
        let cached = Cached {
            token: "t".into(),
            refresh_at: now + lifetime - refresh_ahead(lifetime),
            expires_at: now + lifetime,
        };
        assert_eq!(due(Some(&cached), now), Due::Fresh("t".into()));
        assert_eq!(due(Some(&cached), now + Duration::from_secs(3539)), Due::Fresh("t".into()));
        assert_eq!(due(Some(&cached), now + Duration::from_secs(3540)), Due::Refresh("t".into()));
        assert_eq!(due(Some(&cached), now + Duration::from_secs(3599)), Due::Refresh("t".into()));
        assert_eq!(due(Some(&cached), now + lifetime), Due::Expired);
        assert_eq!(due(None, now), Due::Expired);
    }

    #[test]
    fn tokens_are_refreshed_ahead_of_expiry() {
        assert_eq!(refresh_ahead(Duration::from_secs(3600)), Duration::from_secs(60));
        assert_eq!(refresh_ahead(Duration::from_secs(100)), Duration::from_secs(20));
        assert_eq!(refresh_ahead(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn configuration_errors_name_the_field() {
        let good = ClientCredentialsConfig::new("https://id.example", "hub", "s3cr3t");
        assert!(good.validate().is_ok());
        type Change = fn(&mut ClientCredentialsConfig);
        let cases: [(Change, &str); 5] = [
            (|c| c.issuer = "http://id.example".into(), "issuer"),
            (|c| c.client_id.clear(), "client_id"),
            (|c| c.client_secret.clear(), "client_secret"),
            (|c| c.resource = Some("not a uri".into()), "resource"),
            (|c| c.timeout_secs = 0, "timeout_secs"),
        ];
        for (change, field) in cases {
            let mut config = good.clone();
            change(&mut config);
            let error = config.validate().unwrap_err();
            assert!(error.starts_with(field), "{error}");
            assert!(matches!(ClientCredentials::new(config), Err(OidcError::Config(_))));
        }
        assert!(!format!("{good:?}").contains("s3cr3t"), "the secret stays out of logs");
        let parsed: Result<ClientCredentialsConfig, _> =
            toml::from_str("issuer = 'https://id.example'\nclient_id = 'a'\nclient_secret = 'b'\nextra = 1\n");
        assert!(parsed.unwrap_err().to_string().contains("extra"));
    }
}
