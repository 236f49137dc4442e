//! What the hub holds about one person, for them to take away (`GET /api/v1/subjects/{id}/export`).

use axum::{
    Json,
    extract::{Path, State},
};
use hub_audit::Record;
use hub_model::Timestamp;
use hub_policy::{Action, validate_name};
use hub_store::{AuditQuery, HistoryQuery, Order};
use serde_json::{Value, json};

use crate::{
    ApiError, AppState,
    auth::{Caller, denied},
};

/// The policy object for acting on every subject's data (`read`: export anyone's).
pub const OBJECT: &str = "subjects";

/// History points read per page while exporting.
const PAGE: usize = 10_000;

/// Everything the hub holds about a subject, machine-readable: the personal data it owns (labels, current value,
/// whole history), its consents (given, received, given on others' behalf), the audit entries about its data and
/// about what it did, and its API tokens (never their secrets). For the subject itself, or a caller with `read`
/// on `subjects`, who gets the personal data only where the policy lets it read it (`withheld` lists the rest).
/// Every export, and every resource it carries, is in the subject's audit trail.
#[utoipa::path(get, path = "/api/v1/subjects/{id}/export", tag = "privacy",
    params(("id" = String, Path, description = "the subject, e.g. erin or alice@fujisawa")),
    responses((status = 200, description = "`{subject, exported, resources, consents, audit, tokens}`"),
              (status = 400), (status = 401), (status = 403), (status = 503)))]
pub async fn export(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    validate_name("subject", &id).map_err(|e| ApiError::bad_request("id", e.to_string()))?;
    let subject = state.policy.canonical(&id);
    if caller.is_anonymous() {
        return Err(denied(&caller, OBJECT, Action::Read));
    }
    if state.policy.canonical(&caller.0.subject) != subject && !state.policy.check(&caller.0, OBJECT, Action::Read) {
        return Err(ApiError::forbidden(format!(
            "{} may export its own data only (subject {})",
            caller.0.subject,
            state.policy.canonical(&caller.0.subject)
        )));
    }
    let exported = Timestamp::now();

    // The personal data it owns: each resource whose labels name it as owner.
    let mut resources = Vec::new();
    let mut withheld = Vec::new();
    let mut paths = state.twin.resource_paths();
    paths.sort_by_key(ToString::to_string);
    for path in paths {
        let object = path.to_string();
        let labels = state.policy.labels_of(&object);
        if crate::audit::owner_of_personal(&state, &labels).as_deref() != Some(subject.as_str()) {
            continue;
        }
        // The data itself goes to whoever may read it: the subject, or someone it consented to. A caller who
        // may export others' records (`subjects`) gets no personal data from that permission alone. Each
        // resource exported is a read in the owner's trail.
        if !crate::audit::read_allowed(&state, &caller, &object) {
            withheld.push(object);
            continue;
        }
        let Some(resource) = state.twin.resource(&path) else { continue };
        let mut history = Vec::new();
        let mut cursor = None;
        loop {
            let query =
                HistoryQuery { path: path.clone(), from: None, to: None, limit: PAGE, order: Order::Asc, cursor };
            let page = state.twin.store().history(query).await.map_err(|e| ApiError::unavailable(&e))?;
            history.extend(page.points.into_iter().map(|p| json!({"timestamp": p.timestamp, "value": p.value})));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        resources.push(json!({
            "resource": object,
            "labels": &*labels,
            "kind": resource.kind,
            "type": resource.value_type,
            "unit": resource.unit,
            "metadata": resource.metadata,
            "value": resource.value,
            "timestamp": resource.timestamp,
            "history": history,
        }));
    }

    let consents = state.consents.about(&subject).await;

    // The audit entries about its data, and those of what it did, oldest first.
    state.audit.flush().await.map_err(|e| ApiError::unavailable(&e))?;
    let mut audit = Vec::new();
    for by_owner in [true, false] {
        let mut after = 0;
        loop {
            let query = AuditQuery {
                after,
                limit: PAGE,
                subject: (!by_owner).then(|| subject.clone()),
                owner: by_owner.then(|| subject.clone()),
                ..AuditQuery::default()
            };
            let rows = state.audit.store().audit(query).await.map_err(|e| ApiError::unavailable(&e))?;
            for row in &rows {
                audit.push((row.seq, Record::from_row(row).map_err(|e| ApiError::internal(&e))?));
            }
            match rows.last() {
                Some(last) if rows.len() == PAGE => after = last.seq,
                _ => break,
            }
        }
    }
    audit.sort_by_key(|(seq, _)| *seq);
    audit.dedup_by_key(|(seq, _)| *seq);
    let audit: Vec<Record> = audit.into_iter().map(|(_, record)| record).collect();

    let mut tokens = state.tokens.list();
    tokens.retain(|t| state.policy.canonical(&t.subject) == subject);
    tokens.sort_by_key(|t| t.created_micros);
    let tokens: Vec<Value> = tokens.iter().map(crate::system::token_json).collect();

    let entry = hub_audit::Entry::new(
        caller.0.subject.clone(),
        caller.0.roles.clone(),
        "subject.export",
        format!("subject:{subject}"),
        hub_audit::Decision::Allowed,
    )
    .owned_by(Some(subject.clone()))
    .with_detail(format!("{} resources exported, {} withheld", resources.len(), withheld.len()));
    state.audit.record(entry);

    Ok(Json(json!({
        "subject": subject,
        "withheld": withheld,
        "exported": exported,
        "resources": resources,
        "consents": consents,
        "audit": audit,
        "tokens": tokens,
    })))
}
