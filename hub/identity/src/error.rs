//! The one error type of the crate.

/// What went wrong with a token, a provider or a sign-in. Callers branch on the variant: the verification
/// variants (`Malformed` to `Subject`) and `Session` are a 401 for the caller; `Unavailable` means the provider
/// could not be used (retry later); `Refused` means the provider said no (fix the client's credentials or ask
/// the user to sign in again); `State` and `ReturnTo` are bad sign-in requests (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("tokens signed with {0:?} are not accepted (RS256, PS256, ES256, EdDSA and their variants are)")]
    Algorithm(String),
    #[error("the token's issuer {0:?} is not trusted by this hub")]
    UntrustedIssuer(String),
    #[error("the token's key {0:?} is not among its issuer's published keys")]
    UnknownKey(String),
    #[error("the keys of {issuer} could not be fetched: {reason}")]
    KeysUnavailable { issuer: String, reason: String },
    #[error("the token is refused: {0}")]
    Invalid(String),
    #[error("the token's subject cannot be named by the policy: {0}")]
    Subject(String),
    /// The provider could not be reached, or answered something unusable (discovery, token endpoint, userinfo).
    #[error("the OpenID provider {issuer} is unavailable: {reason}")]
    Unavailable { issuer: String, reason: String },
    /// The provider refused: its token endpoint answered with an OAuth error, or it sent the browser back with
    /// one. `description` is the provider's `error_description`.
    #[error("the OpenID provider {issuer} refused: {error}{}", .description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused { issuer: String, error: String, description: Option<String> },
    /// A sign-in that cannot be completed: unknown, used or expired `state`, or a callback that did not come
    /// from the browser that started the sign-in.
    #[error("the sign-in cannot be completed: {0}; start again")]
    State(String),
    /// `return_to` is not a local path.
    #[error("return_to must be a path on this hub starting with a single '/': {0}")]
    ReturnTo(String),
    /// The session cookie names no live session.
    #[error("the session has ended or is unknown; sign in again")]
    Session,
    /// The configuration cannot work; the text names the key.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// An error and its sources on one line: the provider libraries' messages are terse ("Request failed") and the
/// cause is in the chain.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
