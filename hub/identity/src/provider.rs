//! Talking to an OpenID provider as its client: the HTTP client and discovery, shared by the client credentials
//! grant and the browser sign-in.

use std::time::Duration;

use openidconnect::{
    IssuerUrl, ProviderMetadataWithLogout, RequestTokenError, StandardErrorResponse, core::CoreErrorResponseType,
};

use crate::{OidcError, error::chain};

/// An HTTP client for one provider: every request has `timeout`, and redirects are not followed (a provider
/// that redirects its token endpoint could otherwise send the client's secret elsewhere). HTTPS trusts the
/// system's root certificates.
pub(crate) fn http_client(timeout: Duration) -> Result<reqwest::Client, OidcError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .build()
        .map_err(|e| OidcError::Config(format!("HTTP client: {e}")))
}

/// The provider's discovery document (`{issuer}/.well-known/openid-configuration`, whose `issuer` must be
/// exactly `issuer`) and the key set it names.
pub(crate) async fn discover(issuer: &str, http: &reqwest::Client) -> Result<ProviderMetadataWithLogout, OidcError> {
    let unavailable = |reason: String| OidcError::Unavailable { issuer: issuer.to_owned(), reason };
    let issuer_url = IssuerUrl::new(issuer.to_owned()).map_err(|e| unavailable(format!("not a URL: {e}")))?;
    ProviderMetadataWithLogout::discover_async(issuer_url, http)
        .await
        .map_err(|e| unavailable(format!("discovery failed: {}", chain(&e))))
}

/// The error for a failed request to the token endpoint (`what` says which): the provider's OAuth error as
/// [`OidcError::Refused`] with its description, anything else as [`OidcError::Unavailable`].
pub(crate) fn token_error<RE: std::error::Error + 'static>(
    issuer: &str,
    what: &str,
    error: RequestTokenError<RE, StandardErrorResponse<CoreErrorResponseType>>,
) -> OidcError {
    let unavailable = |reason: String| OidcError::Unavailable { issuer: issuer.to_owned(), reason };
    match error {
        RequestTokenError::ServerResponse(answer) => OidcError::Refused {
            issuer: issuer.to_owned(),
            error: answer.error().as_ref().to_owned(),
            description: answer.error_description().cloned(),
        },
        // The library keeps the body, not the status: the body says what the endpoint answered instead.
        RequestTokenError::Parse(parse, body) => {
            let body: String = String::from_utf8_lossy(&body).chars().take(200).collect();
            unavailable(format!("{what}: the token endpoint answered {body:?}, not a token response ({parse})"))
        }
        other => unavailable(format!("{what}: {}", chain(&other))),
    }
}
