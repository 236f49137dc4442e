use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use hub_policy::{Action, objects};
use hub_runtime::{Capabilities, Manifest, RuntimeError};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::{
    ApiError, AppState,
    auth::{Caller, authorize},
    body::JsonBody,
};

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Manifest(m) => ApiError::bad_request("manifest", m.to_string()),
            RuntimeError::InvalidInput(why) => ApiError::bad_request("body", why),
            RuntimeError::NotFound(what) => ApiError::not_found(what),
            e @ (RuntimeError::AlreadyExists(_) | RuntimeError::NotRunning { .. }) => ApiError::conflict(e.to_string()),
            e @ (RuntimeError::Load { .. } | RuntimeError::PluginTrap { .. }) => {
                ApiError::unprocessable(Some("wasm".into()), e.to_string())
            }
            RuntimeError::Storage(e) => e.into(),
            e => ApiError::unavailable(&e),
        }
    }
}

/// A plugin to install or upgrade.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginUpload {
    /// The `plugin.toml` text.
    pub manifest: String,
    /// The module, base64 (standard alphabet); its SHA-256 must match the manifest's `sha256`.
    pub wasm: String,
    /// The capabilities the admin grants: a subset of what the manifest requests. Nothing is granted by default.
    /// On upgrade, absent means "keep the current grant".
    #[schema(value_type = Option<Object>)]
    pub grant: Option<Capabilities>,
    /// Configuration replacing the manifest's default (install only).
    #[schema(value_type = Option<Object>)]
    pub config: Option<Value>,
}

/// A configuration change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginConfigBody {
    /// The new configuration; `null` returns to the manifest's default.
    #[schema(value_type = Object)]
    pub config: Option<Value>,
}

fn decode(upload: &PluginUpload) -> Result<(Manifest, Vec<u8>), ApiError> {
    let manifest = Manifest::parse(&upload.manifest).map_err(|e| ApiError::bad_request("manifest", e.to_string()))?;
    let wasm = base64::engine::general_purpose::STANDARD
        .decode(upload.wasm.trim())
        .map_err(|e| ApiError::bad_request("wasm", format!("not base64: {e}")))?;
    Ok((manifest, wasm))
}

fn plugin_id(id: &str) -> Result<(), ApiError> {
    hub_runtime::validate_id(id).map_err(|e| ApiError::bad_request("id", e.to_string()))
}

/// List installed plugins.
#[utoipa::path(get, path = "/api/v1/plugins", tag = "plugins",
    responses((status = 200, description = "`{plugins: [...]}` with state, version, grants, counters"), (status = 401), (status = 403)))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    authorize(&state, &caller, "plugins", Action::Read)?;
    Ok(Json(json!({ "plugins": state.plugins.list() })))
}

/// Install a plugin (manifest + wasm + grant). It starts at once.
#[utoipa::path(post, path = "/api/v1/plugins", tag = "plugins", request_body = PluginUpload,
    responses((status = 201, description = "the installed plugin"), (status = 400), (status = 401), (status = 403), (status = 409), (status = 422)))]
pub async fn install(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(upload): JsonBody<PluginUpload>,
) -> Result<Response, ApiError> {
    // Installing code into the hub needs admin on the plugin collection before the upload is even read, and
    // admin on the plugin itself.
    authorize(&state, &caller, "plugins", Action::Admin)?;
    let (manifest, wasm) = decode(&upload)?;
    authorize(&state, &caller, &objects::plugin(&manifest.id), Action::Admin)?;
    let grant = upload.grant.unwrap_or_default();
    let info = state.plugins.install(&upload.manifest, wasm, grant, upload.config).await?;
    tracing::info!(subject = %caller.0.subject, plugin = %manifest.id, "plugin installed");
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

/// One plugin: state, version, granted capabilities, counters and latency.
#[utoipa::path(get, path = "/api/v1/plugins/{id}", tag = "plugins", params(("id" = String, Path)),
    responses((status = 200, description = "the plugin"), (status = 401), (status = 403), (status = 404)))]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    plugin_id(&id)?;
    authorize(&state, &caller, &objects::plugin(&id), Action::Read)?;
    let info = state.plugins.get(&id).ok_or_else(|| ApiError::not_found(format!("plugin {id}")))?;
    Ok(Json(info).into_response())
}

/// Upgrade a plugin: the new version takes over its queue, so no message is lost; its state is kept.
#[utoipa::path(put, path = "/api/v1/plugins/{id}", tag = "plugins", params(("id" = String, Path)), request_body = PluginUpload,
    responses((status = 200, description = "the upgraded plugin"), (status = 400), (status = 401), (status = 403), (status = 404), (status = 422)))]
pub async fn upgrade(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(upload): JsonBody<PluginUpload>,
) -> Result<Response, ApiError> {
    plugin_id(&id)?;
    authorize(&state, &caller, &objects::plugin(&id), Action::Admin)?;
    let (manifest, wasm) = decode(&upload)?;
    if manifest.id != id {
        return Err(ApiError::bad_request("manifest", format!("the manifest is for {:?}, not {id:?}", manifest.id)));
    }
    if upload.config.is_some() {
        return Err(ApiError::bad_request("config", "change the configuration with PUT /plugins/{id}/config"));
    }
    let info = state.plugins.upgrade(&id, &upload.manifest, wasm, upload.grant).await?;
    Ok(Json(info).into_response())
}

/// Replace a plugin's configuration.
#[utoipa::path(put, path = "/api/v1/plugins/{id}/config", tag = "plugins", params(("id" = String, Path)), request_body = PluginConfigBody,
    responses((status = 200, description = "the plugin"), (status = 400), (status = 401), (status = 403), (status = 404)))]
pub async fn set_config(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<PluginConfigBody>,
) -> Result<Response, ApiError> {
    plugin_id(&id)?;
    authorize(&state, &caller, &objects::plugin(&id), Action::Admin)?;
    Ok(Json(state.plugins.set_config(&id, body.config).await?).into_response())
}

/// Replace a plugin's grant. It must stay within what the manifest requests; the running module keeps its queue
/// and state.
#[utoipa::path(put, path = "/api/v1/plugins/{id}/grant", tag = "plugins", params(("id" = String, Path)), request_body = Object,
    responses((status = 200, description = "the plugin"), (status = 400), (status = 401), (status = 403), (status = 404)))]
pub async fn set_grant(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(grant): JsonBody<Capabilities>,
) -> Result<Response, ApiError> {
    plugin_id(&id)?;
    authorize(&state, &caller, &objects::plugin(&id), Action::Admin)?;
    let info = state.plugins.set_grant(&id, grant).await?;
    tracing::info!(subject = %caller.0.subject, plugin = %id, "plugin grant replaced");
    Ok(Json(info).into_response())
}

/// Start (or restart after quarantine) a plugin.
#[utoipa::path(post, path = "/api/v1/plugins/{id}/start", tag = "plugins", params(("id" = String, Path)),
    responses((status = 200, description = "the plugin"), (status = 401), (status = 403), (status = 404)))]
pub async fn start(state: State<AppState>, caller: Caller, id: Path<String>) -> Result<Response, ApiError> {
    run_state(state, caller, id, true).await
}

/// Stop a plugin; its messages are no longer delivered.
#[utoipa::path(post, path = "/api/v1/plugins/{id}/stop", tag = "plugins", params(("id" = String, Path)),
    responses((status = 200, description = "the plugin"), (status = 401), (status = 403), (status = 404)))]
pub async fn stop(state: State<AppState>, caller: Caller, id: Path<String>) -> Result<Response, ApiError> {
    run_state(state, caller, id, false).await
}

async fn run_state(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    running: bool,
) -> Result<Response, ApiError> {
    plugin_id(&id)?;
    authorize(&state, &caller, &objects::plugin(&id), Action::Admin)?;
    let info = if running { state.plugins.start(&id).await? } else { state.plugins.stop(&id).await? };
    Ok(Json(info).into_response())
}

/// Remove a plugin (its files, its state and its ACT registrations).
#[utoipa::path(delete, path = "/api/v1/plugins/{id}", tag = "plugins", params(("id" = String, Path)),
    responses((status = 204, description = "removed"), (status = 401), (status = 403), (status = 404)))]
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    plugin_id(&id)?;
    authorize(&state, &caller, &objects::plugin(&id), Action::Admin)?;
    state.plugins.remove(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
