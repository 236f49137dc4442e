use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use hub_automation::{AutomationError, diagnostics_json};
use hub_policy::{Action, objects};
use serde_json::{Value, json};

use crate::{
    ApiError, AppState,
    auth::{Caller, authorize},
    body::RawBody,
    providers::name,
};

impl From<AutomationError> for ApiError {
    fn from(e: AutomationError) -> Self {
        match e {
            AutomationError::Invalid(d) => {
                let first = d.iter().find(|d| d.is_error()).map(|d| format!("{}:{}: {}", d.line, d.column, d.message));
                ApiError::unprocessable(Some("source".into()), first.unwrap_or_else(|| "the rule has errors".into()))
                    .with_diagnostics(diagnostics_json(&d))
            }
            AutomationError::NotFound(id) => ApiError::not_found(format!("rule {id}")),
            AutomationError::Storage(e) => e.into(),
        }
    }
}

fn source(body: RawBody) -> Result<String, ApiError> {
    match body.content_type.as_deref() {
        None | Some("text/plain") => {}
        Some(other) => {
            return Err(ApiError::unsupported_media_type(format!("send the rule as text/plain, not {other}")));
        }
    }
    String::from_utf8(body.bytes.to_vec()).map_err(|_| ApiError::bad_request("body", "the rule source is UTF-8 text"))
}

/// Check a rule source against the live model and the deployed rules, without deploying it.
#[utoipa::path(post, path = "/api/v1/rules/validate", tag = "rules",
    request_body(content = String, content_type = "text/plain"),
    responses((status = 200, description = "`{valid, diagnostics: [{severity, line, column, end_line, end_column, message, code}]}`"),
              (status = 401), (status = 403), (status = 415)))]
pub async fn validate(State(state): State<AppState>, caller: Caller, body: RawBody) -> Result<Json<Value>, ApiError> {
    authorize(&state, &caller, "rules", Action::Read)?;
    let diagnostics = state.automation.validate(&source(body)?);
    let valid = !diagnostics.iter().any(|d| d.is_error());
    Ok(Json(json!({ "valid": valid, "diagnostics": diagnostics })))
}

/// Every deployed rule with its counters.
#[utoipa::path(get, path = "/api/v1/rules", tag = "rules",
    responses((status = 200, description = "`{rules: [...]}`"), (status = 401), (status = 403)))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    authorize(&state, &caller, "rules", Action::Read)?;
    Ok(Json(json!({ "rules": state.automation.list() })))
}

/// Validate, then deploy (or replace) a rule; 422 with the diagnostics when it has errors.
#[utoipa::path(put, path = "/api/v1/rules/{id}", tag = "rules", params(("id" = String, Path)),
    request_body(content = String, content_type = "text/plain"),
    responses((status = 200, description = "the rule, and its warnings"), (status = 401), (status = 403),
              (status = 422, description = "problem document with `diagnostics`")))]
pub async fn deploy(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: RawBody,
) -> Result<Response, ApiError> {
    let id = name("id", &id)?;
    authorize(&state, &caller, &objects::rule(id.as_str()), Action::Admin)?;
    let warnings = state.automation.deploy(id.as_str(), &source(body)?).await?;
    let rule = state.automation.get(id.as_str()).ok_or_else(|| ApiError::not_found(format!("rule {id}")))?;
    tracing::info!(subject = %caller.0.subject, rule = %id, "rule deployed");
    Ok(Json(json!({ "rule": rule, "diagnostics": warnings })).into_response())
}

/// One rule: source, state, instances, counters, last error.
#[utoipa::path(get, path = "/api/v1/rules/{id}", tag = "rules", params(("id" = String, Path)),
    responses((status = 200, description = "the rule"), (status = 401), (status = 403), (status = 404)))]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = name("id", &id)?;
    authorize(&state, &caller, &objects::rule(id.as_str()), Action::Read)?;
    let rule = state.automation.get(id.as_str()).ok_or_else(|| ApiError::not_found(format!("rule {id}")))?;
    Ok(Json(rule).into_response())
}

/// Recent firings, newest first, each with the values that made the rule fire.
#[utoipa::path(get, path = "/api/v1/rules/{id}/firings", tag = "rules", params(("id" = String, Path)),
    responses((status = 200, description = "`{firings: [...]}`"), (status = 401), (status = 403), (status = 404)))]
pub async fn firings(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = name("id", &id)?;
    authorize(&state, &caller, &objects::rule(id.as_str()), Action::Read)?;
    let firings = state.automation.firings(id.as_str()).ok_or_else(|| ApiError::not_found(format!("rule {id}")))?;
    Ok(Json(json!({ "firings": firings })))
}

/// Enable a rule.
#[utoipa::path(post, path = "/api/v1/rules/{id}/enable", tag = "rules", params(("id" = String, Path)),
    responses((status = 200, description = "the rule"), (status = 401), (status = 403), (status = 404)))]
pub async fn enable(state: State<AppState>, caller: Caller, id: Path<String>) -> Result<Response, ApiError> {
    set_enabled(state, caller, id, true).await
}

/// Disable a rule (it stays deployed, and evaluates nothing).
#[utoipa::path(post, path = "/api/v1/rules/{id}/disable", tag = "rules", params(("id" = String, Path)),
    responses((status = 200, description = "the rule"), (status = 401), (status = 403), (status = 404)))]
pub async fn disable(state: State<AppState>, caller: Caller, id: Path<String>) -> Result<Response, ApiError> {
    set_enabled(state, caller, id, false).await
}

async fn set_enabled(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    enabled: bool,
) -> Result<Response, ApiError> {
    let id = name("id", &id)?;
    authorize(&state, &caller, &objects::rule(id.as_str()), Action::Admin)?;
    Ok(Json(state.automation.set_enabled(id.as_str(), enabled).await?).into_response())
}

/// Remove a rule.
#[utoipa::path(delete, path = "/api/v1/rules/{id}", tag = "rules", params(("id" = String, Path)),
    responses((status = 204, description = "removed"), (status = 401), (status = 403), (status = 404)))]
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = name("id", &id)?;
    authorize(&state, &caller, &objects::rule(id.as_str()), Action::Admin)?;
    state.automation.remove(id.as_str()).await?;
    Ok(StatusCode::NO_CONTENT)
}
