//! What the API writes to the audit log, and the log's own endpoints.
//!
//! Three things are recorded: every request that changes something (any method but GET, HEAD and OPTIONS,
//! except the read-only checks below), with its outcome; every read of personal or confidential data (allowed
//! or denied when asked for directly; shown, in listings; a live stream once per resource it delivers); and every
//! failed authentication. Reads of other data are not recorded.

use std::collections::HashMap;

use axum::{
    Json,
    extract::{FromRequestParts, Query, Request, State},
    http::Method,
    middleware::Next,
    response::{IntoResponse, Response},
};
use hub_audit::{Checkpoint, Decision, Entry, Record};
use hub_model::Glob;
use hub_policy::{Action, DataClass, ResolvedLabels};
use hub_store::AuditQuery;
use serde_json::{Value, json};

use crate::{
    ApiError, AppState,
    auth::{Caller, denied},
    body::JsonBody,
    providers::{parse_time, query_params},
};

/// POSTs that only ask a question: not recorded (paths as the router nested under `/api/v1` sees them).
const READ_ONLY_POSTS: [&str; 3] = ["/policy/check", "/policy/explain", "/rules/validate"];

/// What a handler adds to the entry the middleware records for its request: the action in the hub's words, the
/// object it touched, whose personal data that concerns, and what happened. Put in the response's extensions.
#[derive(Debug, Clone)]
pub(crate) struct AuditNote {
    pub(crate) action: &'static str,
    pub(crate) object: String,
    pub(crate) owner: Option<String>,
    pub(crate) detail: String,
}

/// Largest page of `GET /audit`.
const MAX_PAGE: usize = 1_000;

/// The data class of an object whose reads are audited (personal or confidential data), if it is one.
pub(crate) fn audited_class(labels: &ResolvedLabels) -> Option<DataClass> {
    labels.class.as_ref().map(|c| c.value).filter(|c| matches!(c, DataClass::Personal | DataClass::Confidential))
}

/// Notes a read decision when the object holds personal or confidential data.
pub(crate) fn note_read(state: &AppState, caller: &Caller, object: &str, allowed: bool, labels: &ResolvedLabels) {
    let Some(class) = audited_class(labels) else { return };
    let decision = if allowed { Decision::Allowed } else { Decision::Denied };
    let owner = owner_of_personal(state, labels);
    let entry = Entry::new(&caller.0.subject, caller.0.roles.clone(), "read", object, decision)
        .owned_by(owner)
        .with_detail(format!("{class} data"));
    state.audit.record(entry);
}

/// Whether a listing may show `object` to the caller; showing personal or confidential data is recorded. What a
/// listing leaves out is not: filtering is no attempt to read (a direct read that is denied is recorded).
pub(crate) fn read_allowed(state: &AppState, caller: &Caller, object: &str) -> bool {
    let (allowed, labels) = state.policy.decide(&caller.0, object, Action::Read);
    if allowed {
        note_read(state, caller, object, allowed, &labels);
    }
    allowed
}

/// The owner (canonical name) of an object with these labels, when they make it personal data.
pub(crate) fn owner_of_personal(state: &AppState, labels: &ResolvedLabels) -> Option<String> {
    let personal = labels.class.as_ref().is_some_and(|c| c.value == DataClass::Personal);
    personal.then(|| labels.owner.as_ref().map(|o| state.policy.canonical(&o.value))).flatten()
}

/// The owner (canonical name) of `object` when it is personal data.
pub(crate) fn personal_owner(state: &AppState, object: &str) -> Option<String> {
    owner_of_personal(state, &state.policy.labels_of(object))
}

/// The response of a request on one resource, telling the audit middleware whose personal data it touched, so
/// that the entry of a SET or an ACT is in its owner's trail.
pub(crate) fn about_owner(
    state: &AppState,
    object: &str,
    action: &'static str,
    response: Result<Json<Value>, ApiError>,
) -> Response {
    let mut response = response.into_response();
    if let Some(owner) = personal_owner(state, object) {
        response.extensions_mut().insert(AuditNote {
            action,
            object: object.to_owned(),
            owner: Some(owner),
            detail: "personal data".to_owned(),
        });
    }
    response
}

/// The personal resources a batch writes, by owner, to be recorded once per owner when the batch is stored (the
/// request itself is recorded by the middleware, without an owner: a batch may hold several owners' data).
#[derive(Default)]
pub(crate) struct BatchWrites(std::collections::BTreeMap<String, std::collections::BTreeSet<String>>);

impl BatchWrites {
    /// Notes `object` when it is personal data.
    pub(crate) fn note(&mut self, state: &AppState, object: &str) {
        if let Some(owner) = personal_owner(state, object) {
            self.0.entry(owner).or_default().insert(object.to_owned());
        }
    }

    /// Records one entry per owner whose data the stored batch wrote.
    pub(crate) fn record(self, state: &AppState, caller: &Caller) {
        for (owner, resources) in self.0 {
            let entry = Entry::new(&caller.0.subject, caller.0.roles.clone(), "write", "/ingest", Decision::Allowed)
                .owned_by(Some(owner))
                .with_detail(format!("{} personal resources written", resources.len()));
            state.audit.record(entry);
        }
    }
}

/// Records a failed authentication.
pub(crate) fn note_rejected_credentials(state: &AppState, detail: &str) {
    let entry = Entry::new("unknown", Vec::new(), "authenticate", "credentials", Decision::Denied).with_detail(detail);
    state.audit.record(entry);
}

/// Middleware: records every request that changes something, with who made it and how it ended. The caller is
/// authenticated here once and handed to the handler.
pub(crate) async fn record_changes(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    // Sign-in and sign-out work without valid credentials (an expired session must still be able to log out).
    let path = request.uri().path();
    if matches!(method, Method::GET | Method::HEAD | Method::OPTIONS)
        || READ_ONLY_POSTS.contains(&path)
        || path.starts_with("/auth/")
    {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let caller = match Caller::from_request_parts(&mut parts, &state).await {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    parts.extensions.insert(caller.clone());
    let object = parts.uri.path().strip_prefix("/api/v1").unwrap_or(parts.uri.path()).to_owned();
    let response = next.run(Request::from_parts(parts, body)).await;
    let status = response.status();
    let decision = match status.as_u16() {
        200..=399 => Decision::Allowed,
        401 | 403 => Decision::Denied,
        _ => Decision::Failed,
    };
    let entry = match response.extensions().get::<AuditNote>() {
        Some(note) => Entry::new(caller.0.subject, caller.0.roles, note.action, note.object.clone(), decision)
            .owned_by(note.owner.clone())
            .with_detail(format!("{} {}", status.as_u16(), note.detail)),
        None => {
            let action = method.as_str().to_ascii_lowercase();
            Entry::new(caller.0.subject, caller.0.roles, action, object, decision)
                .with_detail(status.as_u16().to_string())
        }
    };
    state.audit.record(entry);
    response
}

/// The entries, oldest first: all of them for a caller who may read `audit`, otherwise those about the caller's
/// own personal data.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit",
    params(
        ("subject" = Option<String>, Query, description = "who acted"),
        ("action" = Option<String>, Query, description = "read, put, post, delete, authenticate"),
        ("object" = Option<String>, Query, description = "glob over objects"),
        ("owner" = Option<String>, Query, description = "whose personal data"),
        ("from" = Option<String>, Query, description = "RFC 3339, inclusive"),
        ("to" = Option<String>, Query, description = "RFC 3339, exclusive"),
        ("after" = Option<u64>, Query, description = "only entries after this sequence number (the `next` of a page)"),
        ("limit" = Option<usize>, Query, description = "1 to 1000, default 100")),
    responses((status = 200, description = "`{entries, next}`"), (status = 400), (status = 401)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let q = query_params(q, &["subject", "action", "object", "owner", "from", "to", "after", "limit"])?;
    if caller.is_anonymous() {
        return Err(denied(&caller, "audit", Action::Read));
    }
    let number = |key: &str| {
        q.get(key).map(|n| n.parse::<u64>().map_err(|_| ApiError::bad_request(key, "a whole number"))).transpose()
    };
    let limit = match number("limit")? {
        None => 100,
        Some(n) if (1..=MAX_PAGE as u64).contains(&n) => n as usize,
        Some(_) => return Err(ApiError::bad_request("limit", format!("limit is from 1 to {MAX_PAGE}"))),
    };
    // Everyone may ask about their own data; everything else needs a permission to read `audit`.
    let own = state.policy.canonical(&caller.0.subject);
    let asked = q.get("owner").map(|owner| state.policy.canonical(owner));
    let owner = if state.policy.check(&caller.0, "audit", Action::Read) {
        asked
    } else {
        match asked {
            Some(owner) if owner != own => {
                return Err(ApiError::forbidden(format!(
                    "{} may read the entries about its own data only (owner={own})",
                    caller.0.subject
                )));
            }
            _ => Some(own),
        }
    };
    let object = q.get("object").map(|g| Glob::new(g));
    // What was recorded before this request is part of the answer.
    state.audit.flush().await.map_err(|e| ApiError::unavailable(&e))?;
    let after = number("after")?.unwrap_or(0);
    if after > i64::MAX as u64 {
        return Err(ApiError::bad_request("after", "a sequence number of the log"));
    }
    // With an object glob, rows are scanned in full pages and filtered here.
    let mut query = AuditQuery {
        after,
        limit: if object.is_some() { MAX_PAGE } else { limit },
        subject: q.get("subject").cloned(),
        action: q.get("action").cloned(),
        owner,
        from: parse_time("from", &q)?,
        to: parse_time("to", &q)?,
    };
    // The object glob is applied here; pages are read until this one is full or the log ends.
    let mut entries = Vec::new();
    let mut last = None;
    loop {
        let rows = state.audit.store().audit(query.clone()).await.map_err(|e| ApiError::unavailable(&e))?;
        let exhausted = rows.len() < query.limit;
        let mut full = false;
        for row in &rows {
            last = Some(row.seq);
            if object.as_ref().is_some_and(|g| !g.matches(&row.object)) {
                continue;
            }
            entries.push(Record::from_row(row).map_err(|e| ApiError::internal(&e))?);
            if entries.len() == limit {
                full = true;
                break;
            }
        }
        if exhausted || full {
            // More may follow unless the log ended within this page.
            let ended = exhausted && last == rows.last().map(|r| r.seq);
            let next = if ended { None } else { last };
            return Ok(Json(json!({ "entries": entries, "next": next })));
        }
        query.after = last.unwrap_or(query.after);
    }
}

/// The body of `POST /audit/verify`: checkpoints kept outside the hub, checked with the others.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyBody {
    /// Published checkpoints.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub checkpoints: Vec<Checkpoint>,
}

/// Verifies the whole log against its chain and its checkpoints; names the first entry that changed.
#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "audit",
    responses((status = 200, description = "`{ok, entries, head, checkpoints, covered, problem}`"), (status = 401), (status = 403)))]
pub async fn verify(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    verify_with(&state, &caller, &[]).await
}

/// Like `GET /audit/verify`, with published checkpoints as well.
#[utoipa::path(post, path = "/api/v1/audit/verify", tag = "audit", request_body = VerifyBody,
    responses((status = 200, description = "`{ok, entries, head, checkpoints, covered, problem}`"), (status = 400), (status = 401), (status = 403)))]
pub async fn verify_published(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<VerifyBody>,
) -> Result<Json<Value>, ApiError> {
    verify_with(&state, &caller, &body.checkpoints).await
}

async fn verify_with(state: &AppState, caller: &Caller, published: &[Checkpoint]) -> Result<Json<Value>, ApiError> {
    crate::auth::authorize(state, caller, "audit", Action::Read)?;
    // What was recorded before the request is part of what is checked.
    state.audit.flush().await.map_err(|e| ApiError::unavailable(&e))?;
    let report = hub_audit::verify(&**state.audit.store(), &state.audit.public_key(), published)
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    Ok(Json(json!(report)))
}

/// The newest signed checkpoint, to be kept outside the hub.
#[utoipa::path(get, path = "/api/v1/audit/checkpoint", tag = "audit",
    responses((status = 200, description = "a signed checkpoint document"), (status = 401), (status = 403), (status = 404)))]
pub async fn latest_checkpoint(State(state): State<AppState>, caller: Caller) -> Result<Json<Checkpoint>, ApiError> {
    crate::auth::authorize(&state, &caller, "audit", Action::Read)?;
    match state.audit.latest_checkpoint().await.map_err(|e| ApiError::unavailable(&e))? {
        Some(checkpoint) => Ok(Json(checkpoint)),
        None => Err(ApiError::not_found("no checkpoint yet: the log is empty or has not been signed")),
    }
}

/// Signs a checkpoint of everything recorded so far and returns it.
#[utoipa::path(post, path = "/api/v1/audit/checkpoint", tag = "audit",
    responses((status = 200, description = "a signed checkpoint document"), (status = 401), (status = 403), (status = 409)))]
pub async fn sign_checkpoint(State(state): State<AppState>, caller: Caller) -> Result<Json<Checkpoint>, ApiError> {
    crate::auth::authorize(&state, &caller, "audit", Action::Admin)?;
    match state.audit.checkpoint().await {
        Ok(checkpoint) => Ok(Json(checkpoint)),
        Err(e @ hub_audit::AuditError::Checkpoint(_)) => Err(ApiError::conflict(e.to_string())),
        Err(e) => Err(ApiError::unavailable(&e)),
    }
}

/// The public key the hub's checkpoints verify with, for whoever checks the log (also printed by
/// `hub audit public-key`).
#[utoipa::path(get, path = "/api/v1/audit/key", tag = "audit",
    responses((status = 200, description = "`{algorithm, public_key}` (Ed25519, hex)"), (status = 401), (status = 403)))]
pub async fn public_key(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    crate::auth::authorize(&state, &caller, "audit", Action::Read)?;
    let key = hub_audit::public_key_hex(&state.audit.public_key());
    Ok(Json(json!({ "algorithm": "Ed25519", "public_key": key })))
}
