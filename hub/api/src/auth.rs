use axum::{
    extract::FromRequestParts,
    http::{header, request::Parts},
};
use hub_model::Timestamp;
use hub_policy::{Action, Principal};

use crate::{ApiError, AppState, login};

/// The authenticated caller of a request, and when its credentials expire (µs since the epoch; `None`: they do
/// not). Credentials are a bearer token (a hub token or a provider's JWT) or, without one, the browser's session
/// cookie. A request without credentials is the subject `anonymous`.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal, pub Option<i64>);

impl Caller {
    /// Whether the request carried no credentials.
    pub fn is_anonymous(&self) -> bool {
        self.0.is_anonymous()
    }

    /// Resolves when the caller's credentials expire (never, for credentials without an expiry): streams end
    /// then, so a token outlives no open stream.
    pub fn expiry(&self) -> impl std::future::Future<Output = ()> + Send + use<> {
        let left = self.1.map(|expires| {
            let micros = expires.saturating_sub(Timestamp::now().as_micros()).max(0);
            std::time::Duration::from_micros(micros as u64)
        });
        async move {
            match left {
                Some(left) => tokio::time::sleep(left).await,
                None => std::future::pending().await,
            }
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        // Authenticated already by the audit middleware.
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let caller = Caller::from_credentials(parts, state).await;
        if let Err(e) = &caller {
            crate::audit::note_rejected_credentials(state, e.detail());
        }
        caller
    }
}

impl Caller {
    /// Authenticates a request from its credentials.
    async fn from_credentials(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let secret = match parts.headers.get(header::AUTHORIZATION) {
            Some(value) => {
                let value =
                    value.to_str().map_err(|_| ApiError::unauthorized("the Authorization header is not text"))?;
                let token = value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
                    .ok_or_else(|| ApiError::unauthorized("use Authorization: Bearer <token>"))?;
                Some(token.trim().to_string())
            }
            // Browsers cannot set headers on EventSource and WebSocket requests: streams also take the token
            // from the `access_token` query parameter.
            None if is_stream(parts) => query_token(parts),
            None => None,
        };
        let Some(secret) = secret else { return session_caller(parts, state) };
        // A JWT is an OpenID provider's access token; anything else is a hub token.
        if let Some(oidc) = &state.oidc
            && hub_identity::looks_like_jwt(&secret)
        {
            let (principal, expires) = oidc.verify(&secret).await.map_err(|e| ApiError::unauthorized(e.to_string()))?;
            return Ok(Caller(principal, Some(expires)));
        }
        state
            .tokens
            .authenticate_until(&secret, Timestamp::now().as_micros())
            .map(|(principal, expires)| Caller(principal, expires))
            .map_err(|e| ApiError::unauthorized(e.to_string()))
    }
}

/// Without a token: the browser's session (`hub_session` cookie), else anonymous. The session's end is the
/// caller's expiry, so a stream opened in a session ends with it.
fn session_caller(parts: &Parts, state: &AppState) -> Result<Caller, ApiError> {
    if let Some(login) = &state.login
        && let Some(id) = login::cookie(&parts.headers, login::SESSION_COOKIE)
    {
        let (principal, expires) = login.session(id).map_err(|e| ApiError::unauthorized(e.to_string()))?;
        login::cross_site_guard(parts, login)?;
        return Ok(Caller(principal, Some(expires)));
    }
    Ok(Caller(Principal::anonymous(), None))
}

fn is_stream(parts: &Parts) -> bool {
    matches!(parts.uri.path(), "/api/v1/events" | "/api/v1/ws" | "/events" | "/ws")
}

fn query_token(parts: &Parts) -> Option<String> {
    parts.uri.query()?.split('&').find_map(|pair| pair.strip_prefix("access_token=")).map(str::to_string)
}

/// Allows the request if the policy does; otherwise 401 for anonymous callers and 403 for the others. Reads of
/// personal and confidential data are recorded in the audit log.
pub fn authorize(state: &AppState, caller: &Caller, object: &str, action: Action) -> Result<(), ApiError> {
    let (allowed, labels) = state.policy.decide(&caller.0, object, action);
    if action == Action::Read {
        crate::audit::note_read(state, caller, object, allowed, &labels);
    }
    if allowed {
        return Ok(());
    }
    Err(denied(caller, object, action))
}

/// The error for a denied request.
pub fn denied(caller: &Caller, object: &str, action: Action) -> ApiError {
    if caller.is_anonymous() {
        ApiError::unauthorized("authentication required: send Authorization: Bearer <token>, or sign in")
    } else {
        ApiError::forbidden(format!("{} may not {action} {object}", caller.0.subject))
    }
}
