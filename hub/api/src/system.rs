use axum::{
    Json,
    extract::{Path, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use hub_model::Timestamp;
use hub_policy::{Action, Attributes, Explanation, Principal, TokenInfo, TokenRegistry};
use hub_store::TokenRecord;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::{
    ApiError, AppState,
    auth::{Caller, authorize},
    body::{JsonBody, RawBody},
};

/// Converts between the policy crate's token info and the stored record.
pub fn token_record(info: &TokenInfo) -> TokenRecord {
    TokenRecord {
        hash: info.hash.clone(),
        subject: info.subject.clone(),
        roles: info.roles.clone(),
        description: info.description.clone(),
        created: Timestamp::from_micros(info.created_micros),
        expires: info.expires_micros.map(Timestamp::from_micros),
    }
}

/// The inverse of [`token_record`].
pub fn token_info(record: &TokenRecord) -> TokenInfo {
    TokenInfo {
        hash: record.hash.clone(),
        subject: record.subject.clone(),
        roles: record.roles.clone(),
        description: record.description.clone(),
        created_micros: record.created.as_micros(),
        expires_micros: record.expires.map(Timestamp::as_micros),
    }
}

pub(crate) fn token_json(info: &TokenInfo) -> Value {
    json!({
        "id": info.hash,
        "subject": info.subject,
        "roles": info.roles,
        "description": info.description,
        "created": Timestamp::from_micros(info.created_micros),
        "expires": info.expires_micros.map(Timestamp::from_micros),
    })
}

/// A token request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Who the token authenticates (`alice`, `device:noise-12`).
    pub subject: String,
    /// Roles the token carries.
    #[serde(default)]
    pub roles: Vec<String>,
    /// A note for whoever reads the token list.
    pub description: Option<String>,
    /// Lifetime (`30d`, `12h`); absent means no expiry.
    pub expires_in: Option<String>,
}

/// Creates an API token, stores its hash, and returns the token itself once.
pub async fn issue_token(state: &AppState, req: TokenRequest) -> Result<(String, TokenInfo), ApiError> {
    let now = Timestamp::now();
    let expires_micros = match &req.expires_in {
        None => None,
        Some(s) => {
            let d = humantime::parse_duration(s)
                .map_err(|e| ApiError::bad_request("expires_in", format!("{s:?} is not a duration ({e})")))?;
            let micros = i64::try_from(d.as_micros()).ok().filter(|m| *m > 0);
            Some(
                micros
                    .and_then(|m| now.as_micros().checked_add(m))
                    .ok_or_else(|| ApiError::bad_request("expires_in", "out of range"))?,
            )
        }
    };
    let (secret, hash) = TokenRegistry::generate().map_err(|e| ApiError::internal(&e))?;
    let info = TokenInfo {
        hash,
        subject: req.subject,
        roles: req.roles,
        description: req.description,
        created_micros: now.as_micros(),
        expires_micros,
    };
    info.validate().map_err(|e| ApiError::bad_request("subject", e.to_string()))?;
    state.twin.store().put_token(token_record(&info)).await?;
    state.tokens.insert(info.clone()).map_err(|e| ApiError::bad_request("subject", e.to_string()))?;
    Ok((secret, info))
}

/// Create a token. The response carries the secret once; only its hash is stored.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "admin", request_body = TokenRequest,
    responses((status = 201, description = "`{token, id, subject, roles, ...}`"), (status = 400), (status = 401), (status = 403)))]
pub async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<TokenRequest>,
) -> Result<Response, ApiError> {
    authorize(&state, &caller, "tokens", Action::Admin)?;
    let (secret, info) = issue_token(&state, req).await?;
    let mut body = token_json(&info);
    if let Some(obj) = body.as_object_mut() {
        obj.insert("token".into(), json!(secret));
    }
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// List tokens (never their secrets).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "admin",
    responses((status = 200, description = "`{tokens: [...]}`"), (status = 401), (status = 403)))]
pub async fn list_tokens(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    authorize(&state, &caller, "tokens", Action::Admin)?;
    let mut tokens = state.tokens.list();
    tokens.sort_by_key(|t| t.created_micros);
    Ok(Json(json!({ "tokens": tokens.iter().map(token_json).collect::<Vec<_>>() })))
}

/// Revoke a token by id.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "admin", params(("id" = String, Path)),
    responses((status = 204, description = "revoked"), (status = 401), (status = 403), (status = 404)))]
pub async fn delete_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    authorize(&state, &caller, "tokens", Action::Admin)?;
    let stored = state.twin.store().delete_token(&id).await?;
    let live = state.tokens.remove(&id);
    if stored || live { Ok(StatusCode::NO_CONTENT) } else { Err(ApiError::not_found(format!("token {id}"))) }
}

fn text(body: String, content_type: &'static str) -> Response {
    let mut res = body.into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

/// The casbin policy as CSV lines.
#[utoipa::path(get, path = "/api/v1/policy", tag = "admin",
    responses((status = 200, description = "text/csv: `p` and `g` lines", content_type = "text/csv"), (status = 401), (status = 403)))]
pub async fn get_policy(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    authorize(&state, &caller, "policy", Action::Read)?;
    Ok(text(state.policy.text(), "text/csv; charset=utf-8"))
}

/// Replace the policy (CSV `p`/`g` lines). Applies at once to new requests and open streams.
#[utoipa::path(put, path = "/api/v1/policy", tag = "admin",
    request_body(content = String, content_type = "text/csv"),
    responses((status = 204, description = "replaced"), (status = 400, description = "names the bad line"), (status = 401), (status = 403)))]
pub async fn put_policy(State(state): State<AppState>, caller: Caller, body: RawBody) -> Result<StatusCode, ApiError> {
    authorize(&state, &caller, "policy", Action::Admin)?;
    let text = String::from_utf8(body.bytes.to_vec())
        .map_err(|_| ApiError::bad_request("body", "the policy is UTF-8 text"))?;
    let previous = state.policy.text();
    state.policy.replace(&text).await.map_err(|e| ApiError::bad_request("body", e.to_string()))?;
    if let Err(e) = state.twin.store().save_policy(&text).await {
        // Keep memory and storage in agreement: the old policy stays in force.
        let _ = state.policy.replace(&previous).await;
        return Err(e.into());
    }
    tracing::info!(target: "hub::audit", subject = %caller.0.subject, version = state.policy.version(), "policy replaced");
    Ok(StatusCode::NO_CONTENT)
}

/// A policy question.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    /// The subject asked about.
    pub subject: String,
    /// Roles the subject's token would carry.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Attributes the subject's token would carry (departments, clearance), beside those the policy gives it.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub attributes: Attributes,
    /// The object (`provider/service/resource`, `provider`, `policy`, `plugin:<id>`, ...).
    pub object: String,
    /// read, write, act or admin.
    pub action: String,
}

/// Would the policy allow this? Says which line decided.
#[utoipa::path(post, path = "/api/v1/policy/check", tag = "admin", request_body = CheckRequest,
    responses((status = 200, description = "`{allowed, matched}`"), (status = 400), (status = 401), (status = 403)))]
pub async fn check_policy(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<CheckRequest>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &caller, "policy", Action::Read)?;
    let explanation = explain(&state, req)?;
    Ok(Json(json!({ "allowed": explanation.allowed, "matched": explanation.matched, "reason": explanation.reason })))
}

/// Which rule allowed or denied a request: the deciding line, the reason in words, the object's labels (data
/// class, clearance, department, owner, each with where it was set) and the subject's attributes.
#[utoipa::path(post, path = "/api/v1/policy/explain", tag = "admin", request_body = CheckRequest,
    responses((status = 200, description = "`{allowed, matched, line, reason, domain, labels, attributes}`"), (status = 400), (status = 401), (status = 403)))]
pub async fn explain_policy(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<CheckRequest>,
) -> Result<Json<Explanation>, ApiError> {
    authorize(&state, &caller, "policy", Action::Read)?;
    explain(&state, req).map(Json)
}

fn explain(state: &AppState, req: CheckRequest) -> Result<Explanation, ApiError> {
    let action: Action =
        req.action.parse().map_err(|_| ApiError::bad_request("action", "action is read, write, act or admin"))?;
    let principal = Principal::new(req.subject, req.roles).with_attributes(req.attributes);
    Ok(state.policy.explain(&principal, &req.object, action))
}

/// The federation links: state, lag, last error, counts.
#[utoipa::path(get, path = "/api/v1/federation/peers", tag = "admin",
    responses((status = 200, description = "`{peers: [{name, url, state, connected, lag_ms, last_error, ...}]}`"), (status = 401), (status = 403)))]
pub async fn federation_peers(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    authorize(&state, &caller, "federation", Action::Read)?;
    let peers = state.federation.as_ref().map(|f| f.status()).unwrap_or_default();
    Ok(Json(json!({ "peers": peers })))
}

/// Liveness and a summary; also proves the store answers.
#[utoipa::path(get, path = "/api/v1/healthz", tag = "system",
    responses((status = 200, description = "`{status: \"ok\", ...}`"), (status = 401), (status = 403), (status = 503)))]
pub async fn healthz(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    authorize(&state, &caller, "system:health", Action::Read)?;
    state.twin.store().policy().await?;
    let (providers, resources) = state.twin.counts();
    Ok(Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "providers": providers,
        "resources": resources,
        "streams": state.twin.bus().subscribers(),
    })))
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/api/v1/metrics", tag = "system",
    responses((status = 200, description = "OpenMetrics text", content_type = "text/plain"), (status = 401), (status = 403)))]
pub async fn metrics(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    authorize(&state, &caller, "system:metrics", Action::Read)?;
    Ok(text(
        state.metrics.render(&state.twin, state.plugins.list(), &state.transports),
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
    ))
}

/// This API's OpenAPI 3 document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "system",
    responses((status = 200, description = "OpenAPI 3 JSON"), (status = 401), (status = 403)))]
pub async fn openapi_json(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<utoipa::openapi::OpenApi>, ApiError> {
    authorize(&state, &caller, "system:openapi", Action::Read)?;
    Ok(Json(crate::openapi()))
}
