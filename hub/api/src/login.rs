//! Browser sign-in (`[oidc.login]`): `/auth/login` sends the browser to the home OpenID provider, `/auth/callback`
//! completes the sign-in into a session cookie, `/auth/session` says who is signed in, `/auth/logout` ends it.
//!
//! The session cookie `hub_session` is HttpOnly, SameSite=Lax, Path=/ (and Secure when configured). Because a
//! browser sends it by itself, a request it authenticates that changes something (any method but GET and HEAD)
//! must also carry `X-Requested-With` or an `Origin` equal to the hub's own (the origin of `redirect_url`), and a
//! WebSocket it authenticates must come from that origin: another site cannot make a signed-in browser act.

use std::collections::HashMap;

use axum::{
    Json,
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use hub_identity::{Login, OidcError};
use hub_model::Timestamp;
use serde_json::json;

use crate::{ApiError, AppState, auth::Caller};

/// The session cookie.
pub const SESSION_COOKIE: &str = "hub_session";
/// The cookie that binds a sign-in in progress to the browser that began it (its `state`).
const LOGIN_COOKIE: &str = "hub_login";
/// The header that marks a request as sent by a script of the hub's own pages.
const REQUESTED_WITH: &str = "x-requested-with";
/// How long the browser keeps the sign-in cookie: as long as the hub keeps the sign-in.
const LOGIN_COOKIE_SECS: u64 = 600;

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(key, value)| (key == name).then_some(value))
}

/// A `Set-Cookie` value: HttpOnly and SameSite=Lax always, Secure when configured; `max_age` 0 clears it.
fn set_cookie(login: &Login, name: &str, value: &str, path: &str, max_age: u64) -> HeaderValue {
    let secure = if login.secure_cookie() { "; Secure" } else { "" };
    let text = format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}");
    // Session ids and states are base64url, paths come from a parsed URL: always a valid header value.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("hub_invalid=; Max-Age=0"))
}

/// Refuses a cross-site request authenticated by the session cookie (see the module documentation).
pub fn cross_site_guard(parts: &Parts, login: &Login) -> Result<(), ApiError> {
    let origin = parts.headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let same_origin = origin == Some(login.origin());
    if parts.headers.contains_key(header::UPGRADE) {
        return match origin {
            Some(_) if !same_origin => Err(ApiError::forbidden(
                "a WebSocket authenticated by the session cookie must be opened from this hub's own pages",
            )),
            _ => Ok(()),
        };
    }
    if matches!(parts.method, Method::GET | Method::HEAD) || same_origin || parts.headers.contains_key(REQUESTED_WITH) {
        return Ok(());
    }
    Err(ApiError::forbidden(
        "a request authenticated by the session cookie that changes something must carry the header \
         X-Requested-With or this hub's Origin",
    ))
}

/// The problem for a failed sign-in step.
fn problem(error: OidcError) -> ApiError {
    match error {
        OidcError::ReturnTo(_) => ApiError::bad_request("return_to", error.to_string()),
        OidcError::State(_) => ApiError::bad_request("state", error.to_string()),
        OidcError::Unavailable { .. } | OidcError::KeysUnavailable { .. } => ApiError::bad_gateway(error.to_string()),
        OidcError::Config(_) => ApiError::internal(&error),
        _ => ApiError::unauthorized(error.to_string()),
    }
}

fn configured(state: &AppState) -> Result<&Login, ApiError> {
    state.login.as_deref().ok_or_else(|| ApiError::not_found("sign-in in the browser is not configured ([oidc.login])"))
}

fn redirect(location: &str) -> Result<Response, ApiError> {
    let location = HeaderValue::from_str(location).map_err(|e| ApiError::internal(&e))?;
    Ok((StatusCode::FOUND, [(header::LOCATION, location)]).into_response())
}

/// Begin signing in: redirects to the OpenID provider's authorization endpoint (PKCE S256, fresh `state` and
/// `nonce`). After the sign-in the browser comes back to `return_to`, a path on this hub.
#[utoipa::path(get, path = "/api/v1/auth/login", tag = "auth", security(()),
    params(("return_to" = Option<String>, Query, description = "a path on this hub starting with one '/' (default /)")),
    responses((status = 302, description = "to the provider; sets the short-lived `hub_login` cookie"),
              (status = 400, description = "`return_to` is not a local path"), (status = 404, description = "sign-in is not configured"),
              (status = 502, description = "the provider is unavailable")))]
pub async fn login(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let login = configured(&state)?;
    let started = login.begin(q.get("return_to").map(String::as_str)).await.map_err(problem)?;
    let mut response = redirect(&started.authorization_url)?;
    let bind = set_cookie(login, LOGIN_COOKIE, &started.state, login.callback_path(), LOGIN_COOKIE_SECS);
    response.headers_mut().append(header::SET_COOKIE, bind);
    Ok(response)
}

/// Where the OpenID provider sends the browser back: checks `state` (once, and from the browser that began the
/// sign-in), exchanges the code with the PKCE verifier, verifies the ID token, opens a session and redirects
/// to `return_to` with the session cookie.
#[utoipa::path(get, path = "/api/v1/auth/callback", tag = "auth", security(()),
    params(("code" = Option<String>, Query), ("state" = Option<String>, Query), ("iss" = Option<String>, Query),
           ("error" = Option<String>, Query), ("error_description" = Option<String>, Query)),
    responses((status = 302, description = "to `return_to`, with the `hub_session` cookie"),
              (status = 400, description = "unknown, used or expired `state`"),
              (status = 401, description = "the provider refused, or the ID token is not valid"),
              (status = 404, description = "sign-in is not configured"), (status = 502, description = "the provider is unavailable")))]
pub async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let login = configured(&state)?;
    let param = |name: &str| q.get(name).cloned();
    let params = hub_identity::Callback {
        code: param("code"),
        state: param("state"),
        iss: param("iss"),
        error: param("error"),
        error_description: param("error_description"),
    };
    // The sign-in is over whatever the outcome: its cookie goes.
    let unbind = set_cookie(login, LOGIN_COOKIE, "", login.callback_path(), 0);
    let mut response = match login.finish(&params, cookie(&headers, LOGIN_COOKIE)).await {
        Ok(signed_in) => {
            let remaining = (signed_in.expires_micros - Timestamp::now().as_micros()).max(0) / 1_000_000;
            let mut response = redirect(&signed_in.return_to)?;
            let session = set_cookie(login, SESSION_COOKIE, &signed_in.session, "/", remaining as u64);
            response.headers_mut().append(header::SET_COOKIE, session);
            response
        }
        Err(error) => {
            tracing::info!(%error, "a sign-in failed");
            problem(error).into_response()
        }
    };
    response.headers_mut().append(header::SET_COOKIE, unbind);
    Ok(response)
}

/// Who the caller is: subject, roles and when the credentials expire (the session's end, for the session
/// cookie). No policy check: it only tells callers about themselves.
#[utoipa::path(get, path = "/api/v1/auth/session", tag = "auth",
    responses((status = 200, description = "`{subject, roles, expires}` (`expires` null: never)"), (status = 401, description = "not signed in")))]
pub async fn session(caller: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    if caller.is_anonymous() {
        return Err(ApiError::unauthorized("not signed in: GET /api/v1/auth/login, or send a bearer token"));
    }
    Ok(Json(json!({
        "subject": caller.0.subject,
        "roles": caller.0.roles,
        "expires": caller.1.map(Timestamp::from_micros),
    })))
}

/// Sign out: ends the session and clears its cookie. When the provider advertises an `end_session_endpoint`,
/// the answer is 200 with `{"end_session_url": ...}` (with `client_id` and `id_token_hint`), where the browser
/// may go to sign out at the provider too; otherwise 204. Like every request the session cookie authenticates,
/// it needs `X-Requested-With` or the hub's `Origin`.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    responses((status = 200, description = "`{end_session_url}`: the provider's logout page"), (status = 204, description = "signed out"),
              (status = 403, description = "no X-Requested-With and not the hub's Origin")))]
pub async fn logout(State(state): State<AppState>, parts: Parts) -> Result<Response, ApiError> {
    let Some(login) = state.login.as_deref() else { return Ok(StatusCode::NO_CONTENT.into_response()) };
    let mut end_session = None;
    if let Some(id) = cookie(&parts.headers, SESSION_COOKIE) {
        cross_site_guard(&parts, login)?;
        end_session = login.logout(id);
    }
    let mut response = match end_session {
        Some(url) => Json(json!({ "end_session_url": url })).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    };
    response.headers_mut().append(header::SET_COOKIE, set_cookie(login, SESSION_COOKIE, "", "/", 0));
    Ok(response)
}
