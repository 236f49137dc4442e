//! Consents: owners of personal data let another subject or role read, write or act on it, for a purpose, until
//! an expiry; a delegate the owner allowed can grant on the owner's behalf (`/api/v1/consents`).
//!
//! The [`ConsentBook`] keeps them durably (store records in the namespace `consents`) and hands every change to
//! the policy engine at once ([`PolicyEngine::set_grants`]), so a grant allows the very next request and a
//! revocation denies it, an open stream's next event included. Expiry is enforced by the engine at the instant it
//! passes; a timer then removes the expired consent and records that in the audit log. Every change, and every
//! refusal, is an audit entry whose owner is the consent's owner, so owners see them in `GET /audit`.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use axum::{
    Json,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use hub_audit::{AuditLog, Decision, Entry};
use hub_model::Timestamp;
use hub_policy::{Action, Grant, PolicyEngine, pattern_within, validate_name, validate_object_pattern};
use hub_store::Store;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

use crate::{
    ApiError, AppState,
    audit::AuditNote,
    auth::{Caller, denied},
    body::JsonBody,
    providers::query_params,
};

/// The store namespace consents are kept in, one record per consent keyed by its id.
pub const NAMESPACE: &str = "consents";

/// The policy object for managing every consent: `read` lists them all, `admin` revokes any of them.
pub const OBJECT: &str = "consents";

/// Most consents one owner's data may have at once.
pub const MAX_PER_OWNER: usize = 1_000;

/// Longest purpose, in characters.
const MAX_PURPOSE: usize = 256;

/// One consent, as stored and as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consent {
    /// Its id.
    pub id: String,
    /// Whose personal data.
    pub owner: String,
    /// Who may use it: a subject, or a role whose holders may.
    pub grantee: String,
    /// The object pattern it covers (only objects the owner owns count).
    pub objects: String,
    /// What the grantee may do: `read`, `write`, `act`.
    pub actions: Vec<Action>,
    /// Why, in the owner's words.
    pub purpose: String,
    /// When it ends (`None`: when revoked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Timestamp>,
    /// Whether the grantee may grant consents on the owner's behalf, within this one.
    pub delegate: bool,
    /// Who gave it: the owner, or a delegate.
    pub granted_by: String,
    /// The delegation it was given under, when a delegate gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// When it was given.
    pub created: Timestamp,
    /// When it last changed.
    pub updated: Timestamp,
}

impl Consent {
    fn grant(&self) -> Grant {
        Grant {
            id: self.id.clone(),
            owner: self.owner.clone(),
            grantee: self.grantee.clone(),
            objects: self.objects.clone(),
            actions: self.actions.clone(),
            expires: self.expires.map(Timestamp::as_micros),
        }
    }

    fn expired_at(&self, now: Timestamp) -> bool {
        self.expires.is_some_and(|expires| expires <= now)
    }

    /// Whether `self`, given by a delegate, stays within the delegation `d`: its objects, its actions, its time,
    /// and never a delegation itself.
    fn fits(&self, d: &Consent) -> bool {
        self.fits_until(d, self.expires)
    }

    /// [`fits`](Self::fits), were `self` to end at `expires`.
    fn fits_until(&self, d: &Consent, expires: Option<Timestamp>) -> bool {
        d.delegate
            && !self.delegate
            && self.owner == d.owner
            && pattern_within(&self.objects, &d.objects)
            && self.actions.iter().all(|a| d.actions.contains(a))
            && match (d.expires, expires) {
                (None, _) => true,
                (Some(end), Some(own)) => own <= end,
                (Some(_), None) => false,
            }
    }

    fn view(&self, now: Timestamp) -> Value {
        let mut view = json!(self);
        view["state"] = json!(if self.expired_at(now) { "expired" } else { "active" });
        view
    }

    /// The audit entry's words for it.
    fn describe(&self) -> String {
        let actions: Vec<&str> = self.actions.iter().map(|a| a.as_str()).collect();
        let until = self.expires.map_or_else(|| "until revoked".to_owned(), |e| format!("until {}", e.to_rfc3339()));
        let delegate = if self.delegate { ", may grant on the owner's behalf" } else { "" };
        let via = self.via.as_ref().map_or_else(String::new, |v| format!(" under delegation {v}"));
        format!(
            "{} may {} {} for {:?} {until}{delegate}; granted by {}{via}",
            self.grantee,
            actions.join(", "),
            self.objects,
            self.purpose,
            self.granted_by
        )
    }
}

/// The body of `POST /consents` and `PUT /consents/{id}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentRequest {
    /// Whose data (default: the caller). A delegate names the owner it grants for.
    #[serde(default)]
    pub owner: Option<String>,
    /// A subject or role.
    pub grantee: String,
    /// An object pattern, as in the policy's `p` lines (`care-7/*`).
    pub objects: String,
    /// Some of `read`, `write`, `act`.
    #[schema(value_type = Vec<String>)]
    pub actions: Vec<Action>,
    /// Why the grantee needs it (1 to 256 characters).
    pub purpose: String,
    /// RFC 3339; leave out for a consent that lasts until revoked.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub expires: Option<Timestamp>,
    /// Whether the grantee may grant on the owner's behalf, within this consent (only an owner can say so).
    #[serde(default)]
    pub delegate: bool,
}

/// The consents in force, kept durably and mirrored into the policy engine.
pub struct ConsentBook {
    store: Arc<dyn Store>,
    policy: Arc<PolicyEngine>,
    audit: AuditLog,
    consents: Mutex<BTreeMap<String, Consent>>,
    /// Woken when the earliest expiry may have changed.
    changed: Notify,
}

impl std::fmt::Debug for ConsentBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsentBook").finish_non_exhaustive()
    }
}

impl ConsentBook {
    /// Loads the stored consents into the engine and starts the timer that removes expired ones (until `cancel`).
    pub async fn open(
        store: Arc<dyn Store>,
        policy: Arc<PolicyEngine>,
        audit: AuditLog,
        cancel: CancellationToken,
    ) -> Result<Arc<ConsentBook>, hub_store::StoreError> {
        let mut consents = BTreeMap::new();
        for (key, body) in store.records(NAMESPACE).await? {
            match serde_json::from_str::<Consent>(&body) {
                Ok(consent) if consent.id == key => {
                    consents.insert(key, consent);
                }
                // A record this hub cannot read grants nothing; it is left in place for an operator to look at.
                Ok(_) | Err(_) => tracing::error!(consent = %key, "a stored consent is unreadable; it grants nothing"),
            }
        }
        // A consent given under a delegation that is gone (unreadable) grants nothing either.
        let orphans: Vec<String> = consents
            .values()
            .filter(|c| c.via.as_ref().is_some_and(|via| !consents.get(via).is_some_and(|d| c.fits(d))))
            .map(|c| c.id.clone())
            .collect();
        for id in orphans {
            tracing::error!(consent = %id, "a stored consent's delegation is missing or no longer covers it; it grants nothing");
            consents.remove(&id);
        }
        policy.set_grants(consents.values().map(Consent::grant));
        let book =
            Arc::new(ConsentBook { store, policy, audit, consents: Mutex::new(consents), changed: Notify::new() });
        tokio::spawn(expire_loop(book.clone(), cancel));
        Ok(book)
    }

    /// Persists `changes` (stores `Some`, deletes `None`) and, once durable, applies them to `consents` and the
    /// engine. Nothing changes when the store fails.
    async fn commit(
        &self,
        consents: &mut BTreeMap<String, Consent>,
        changes: Vec<(String, Option<Consent>)>,
    ) -> Result<(), ApiError> {
        let writes = changes
            .iter()
            .map(|(id, c)| (id.clone(), c.as_ref().map(|c| serde_json::to_string(c).expect("a consent serialises"))))
            .collect();
        self.store.write_records(NAMESPACE, writes).await.map_err(|e| ApiError::unavailable(&e))?;
        for (id, consent) in changes {
            match consent {
                Some(consent) => consents.insert(id, consent),
                None => consents.remove(&id),
            };
        }
        self.policy.set_grants(consents.values().map(Consent::grant));
        self.changed.notify_one();
        Ok(())
    }

    /// Removes the consents expired at `now`, and those given under them; records each removal.
    async fn expire(&self, now: Timestamp) -> Result<(), ApiError> {
        let mut consents = self.consents.lock().await;
        let expired: Vec<Consent> = consents.values().filter(|c| c.expired_at(now)).cloned().collect();
        if expired.is_empty() {
            return Ok(());
        }
        let mut gone = Vec::new();
        for consent in &expired {
            gone.extend(dependants(&consents, &consent.id));
        }
        gone.extend(expired);
        gone.sort_by(|a, b| a.id.cmp(&b.id));
        gone.dedup_by(|a, b| a.id == b.id);
        self.commit(&mut consents, gone.iter().map(|c| (c.id.clone(), None)).collect()).await?;
        for consent in gone {
            let entry =
                Entry::new("hub", Vec::new(), "consent.expire", format!("consent:{}", consent.id), Decision::Allowed)
                    .owned_by(Some(consent.owner.clone()))
                    .with_detail(format!("expired: {}", consent.describe()));
            self.audit.record(entry);
        }
        Ok(())
    }

    /// The owner of consent `id`, if there is one.
    async fn owner_of(&self, id: &str) -> Option<String> {
        self.consents.lock().await.get(id).map(|c| c.owner.clone())
    }

    /// The consents about `subject` (a canonical name): those it gave as owner, those given to it by name, and
    /// those it gave on an owner's behalf; for its data export.
    pub async fn about(&self, subject: &str) -> Value {
        let now = Timestamp::now();
        let consents = self.consents.lock().await;
        let select = |keep: &dyn Fn(&Consent) -> bool| -> Vec<Value> {
            consents.values().filter(|c| keep(c)).map(|c| c.view(now)).collect()
        };
        json!({
            "given": select(&|c| c.owner == subject),
            "received": select(&|c| c.grantee == subject),
            "given_on_behalf": select(&|c| c.granted_by == subject && c.owner != subject),
        })
    }

    /// The earliest expiry of a consent in force.
    async fn next_expiry(&self) -> Option<Timestamp> {
        self.consents.lock().await.values().filter_map(|c| c.expires).min()
    }
}

/// The consents given under `id` (directly: a delegate's consents are never delegations).
fn dependants(consents: &BTreeMap<String, Consent>, id: &str) -> Vec<Consent> {
    consents.values().filter(|c| c.via.as_deref() == Some(id)).cloned().collect()
}

/// Removes expired consents as their expiry passes. The engine already refuses them from that instant; this
/// keeps the book small and puts each expiry in the audit log.
async fn expire_loop(book: Arc<ConsentBook>, cancel: CancellationToken) {
    loop {
        let wait = match book.next_expiry().await {
            Some(at) => {
                let micros = at.as_micros().saturating_sub(Timestamp::now().as_micros()).max(0);
                Duration::from_micros(micros as u64)
            }
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = book.changed.notified() => continue,
            () = tokio::time::sleep(wait) => {}
        }
        if let Err(e) = book.expire(Timestamp::now()).await {
            tracing::warn!("expired consents not removed yet: {}", e.detail());
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// A refusal, told to the audit middleware with the owner whose consent was asked for (when known), so the
/// owner sees attempts on their consents too.
fn refused(error: ApiError, action: &'static str, object: String, owner: Option<String>) -> Response {
    let detail = error.detail().to_owned();
    let mut response = error.into_response();
    if owner.is_some() {
        response.extensions_mut().insert(AuditNote { action, object, owner, detail });
    }
    response
}

/// A response that also tells the audit middleware what the request did to which owner's consent.
fn noted(response: impl IntoResponse, consent: &Consent, action: &'static str) -> Response {
    let mut response = response.into_response();
    response.extensions_mut().insert(AuditNote {
        action,
        object: format!("consent:{}", consent.id),
        owner: Some(consent.owner.clone()),
        detail: consent.describe(),
    });
    response
}

/// The consent a request asks for, checked on its own (names, pattern, actions, purpose, time); who may give it
/// is decided by the caller.
fn drafted(state: &AppState, caller: &Caller, request: ConsentRequest, now: Timestamp) -> Result<Consent, ApiError> {
    let owner = request.owner.unwrap_or_else(|| caller.0.subject.clone());
    validate_name("owner", &owner).map_err(|e| ApiError::bad_request("owner", e.to_string()))?;
    validate_name("grantee", &request.grantee).map_err(|e| ApiError::bad_request("grantee", e.to_string()))?;
    let owner = state.policy.canonical(&owner);
    let grantee = state.policy.canonical(&request.grantee);
    if grantee == owner {
        return Err(ApiError::bad_request("grantee", "an owner needs no consent to use its own data"));
    }
    validate_object_pattern(&request.objects).map_err(|e| ApiError::bad_request("objects", e))?;
    let mut actions = request.actions;
    actions.sort();
    actions.dedup();
    if actions.is_empty() {
        return Err(ApiError::bad_request("actions", "name at least one of read, write, act"));
    }
    if actions.contains(&Action::Admin) {
        return Err(ApiError::bad_request("actions", "admin cannot be consented to: read, write or act"));
    }
    let purpose = request.purpose.trim().to_owned();
    if purpose.is_empty() || purpose.chars().count() > MAX_PURPOSE || purpose.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "purpose",
            format!("say why, in 1 to {MAX_PURPOSE} characters without control characters"),
        ));
    }
    if request.expires.is_some_and(|e| e <= now) {
        return Err(ApiError::bad_request("expires", "the expiry has passed already"));
    }
    Ok(Consent {
        id: uuid::Uuid::new_v4().simple().to_string(),
        owner,
        grantee,
        objects: request.objects,
        actions,
        purpose,
        expires: request.expires,
        delegate: request.delegate,
        granted_by: state.policy.canonical(&caller.0.subject),
        via: None,
        created: now,
        updated: now,
    })
}

/// Decides who gives `draft`: its owner, or a delegate within a delegation of the owner that is in force (then
/// `via` names it and an open-ended draft ends with the delegation). Otherwise 403.
fn authorised(
    state: &AppState,
    caller: &Caller,
    consents: &BTreeMap<String, Consent>,
    mut draft: Consent,
    now: Timestamp,
) -> Result<Consent, ApiError> {
    if caller.is_anonymous() {
        return Err(denied(caller, OBJECT, Action::Write));
    }
    if draft.granted_by == draft.owner {
        return Ok(draft);
    }
    if draft.delegate {
        return Err(ApiError::forbidden(format!(
            "only {} may let others grant on its behalf; a delegate cannot delegate further",
            draft.owner
        )));
    }
    // An open-ended grant under a delegation that ends would end with it.
    let delegation = consents.values().find(|d| {
        !d.expired_at(now)
            && state.policy.acts_as(&caller.0, &d.grantee)
            && draft.fits_until(d, draft.expires.or(d.expires))
    });
    match delegation {
        Some(d) => {
            if draft.expires.is_none() {
                draft.expires = d.expires;
            }
            draft.via = Some(d.id.clone());
            Ok(draft)
        }
        None => Err(ApiError::forbidden(format!(
            "{} may not grant access to {}'s data: only the owner, or a delegate within a delegation the owner gave \
             (its objects, actions and expiry), may",
            caller.0.subject, draft.owner
        ))),
    }
}

/// Whether the caller may see a consent: its owner, whoever gave it, its grantee (or a holder of that role), or
/// whoever may read every consent.
fn visible(state: &AppState, caller: &Caller, consent: &Consent) -> bool {
    let me = state.policy.canonical(&caller.0.subject);
    me == consent.owner
        || me == consent.granted_by
        || state.policy.acts_as(&caller.0, &consent.grantee)
        || state.policy.check(&caller.0, OBJECT, Action::Read)
}

/// Gives a consent: the owner's, or a delegate's on the owner's behalf.
#[utoipa::path(post, path = "/api/v1/consents", tag = "consents", request_body = ConsentRequest,
    responses((status = 201, description = "the consent, with its id and `state`"), (status = 400), (status = 401),
              (status = 403), (status = 503)))]
pub async fn grant(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<ConsentRequest>,
) -> Response {
    let owner = request.owner.as_deref().unwrap_or(&caller.0.subject);
    let owner = validate_name("owner", owner).is_ok().then(|| state.policy.canonical(owner));
    let object = owner.as_ref().map_or_else(|| OBJECT.to_owned(), |o| format!("{OBJECT}:{o}"));
    give(state, caller, request).await.unwrap_or_else(|e| refused(e, "consent.grant", object, owner))
}

async fn give(state: AppState, caller: Caller, request: ConsentRequest) -> Result<Response, ApiError> {
    let now = Timestamp::now();
    let draft = drafted(&state, &caller, request, now)?;
    let mut consents = state.consents.consents.lock().await;
    let consent = authorised(&state, &caller, &consents, draft, now)?;
    if consents.values().filter(|c| c.owner == consent.owner).count() >= MAX_PER_OWNER {
        return Err(ApiError::conflict(format!(
            "{} has {MAX_PER_OWNER} consents already: revoke some, or widen one, before giving more",
            consent.owner
        )));
    }
    state.consents.commit(&mut consents, vec![(consent.id.clone(), Some(consent.clone()))]).await?;
    Ok(noted((StatusCode::CREATED, Json(consent.view(now))), &consent, "consent.grant"))
}

/// The consents the caller gave, received, or owns (all of them with `read` on `consents`).
#[utoipa::path(get, path = "/api/v1/consents", tag = "consents",
    params(("owner" = Option<String>, Query, description = "only this owner's"),
           ("grantee" = Option<String>, Query, description = "only those given to this subject or role")),
    responses((status = 200, description = "`{consents: [...]}`"), (status = 400), (status = 401)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let q = query_params(q, &["owner", "grantee"])?;
    if caller.is_anonymous() {
        return Err(denied(&caller, OBJECT, Action::Read));
    }
    let owner = q.get("owner").map(|o| state.policy.canonical(o));
    let grantee = q.get("grantee").map(|g| state.policy.canonical(g));
    let now = Timestamp::now();
    let consents = state.consents.consents.lock().await;
    let shown: Vec<Value> = consents
        .values()
        .filter(|c| owner.as_ref().is_none_or(|o| *o == c.owner))
        .filter(|c| grantee.as_ref().is_none_or(|g| *g == c.grantee))
        .filter(|c| visible(&state, &caller, c))
        .map(|c| c.view(now))
        .collect();
    Ok(Json(json!({ "consents": shown })))
}

/// One consent.
#[utoipa::path(get, path = "/api/v1/consents/{id}", tag = "consents",
    params(("id" = String, Path, description = "consent id")),
    responses((status = 200, description = "the consent"), (status = 401), (status = 404)))]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if caller.is_anonymous() {
        return Err(denied(&caller, OBJECT, Action::Read));
    }
    let consents = state.consents.consents.lock().await;
    match consents.get(&id).filter(|c| visible(&state, &caller, c)) {
        Some(consent) => Ok(Json(consent.view(Timestamp::now()))),
        None => Err(ApiError::not_found(format!("no consent {id} that this caller may see"))),
    }
}

/// Changes a consent: by its owner, or by the delegate who gave it, within the delegation. A narrowed or ended
/// delegation revokes the consents given under it that no longer fit.
#[utoipa::path(put, path = "/api/v1/consents/{id}", tag = "consents", request_body = ConsentRequest,
    params(("id" = String, Path, description = "consent id")),
    responses((status = 200, description = "the consent, and `revoked`: the consents given under it that ended"),
              (status = 400), (status = 401), (status = 403), (status = 404), (status = 503)))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<ConsentRequest>,
) -> Response {
    let owner = state.consents.owner_of(&id).await;
    let object = format!("consent:{id}");
    change(state, caller, id, request).await.unwrap_or_else(|e| refused(e, "consent.update", object, owner))
}

async fn change(state: AppState, caller: Caller, id: String, request: ConsentRequest) -> Result<Response, ApiError> {
    if caller.is_anonymous() {
        return Err(denied(&caller, OBJECT, Action::Write));
    }
    let now = Timestamp::now();
    let mut consents = state.consents.consents.lock().await;
    let Some(old) = consents.get(&id).filter(|c| visible(&state, &caller, c)).cloned() else {
        return Err(ApiError::not_found(format!("no consent {id} that this caller may see")));
    };
    let request = ConsentRequest { owner: request.owner.or_else(|| Some(old.owner.clone())), ..request };
    let mut draft = drafted(&state, &caller, request, now)?;
    if draft.owner != old.owner {
        return Err(ApiError::bad_request("owner", format!("the consent is {}'s; give a new one instead", old.owner)));
    }
    if draft.granted_by != old.granted_by && draft.granted_by != old.owner {
        return Err(ApiError::forbidden(format!(
            "{} may not change consent {id}: only its owner or the delegate who gave it may",
            caller.0.subject
        )));
    }
    draft.id = old.id.clone();
    draft.created = old.created;
    // The owner's own change takes the consent over; a delegate's stays within a delegation (never the consent
    // itself: only the owner changes a delegation).
    let consent = authorised(&state, &caller, &consents, draft, now)?;
    // What a delegate gave stays only while it still fits the delegation, given to the same delegate.
    let revoked: Vec<Consent> = dependants(&consents, &id)
        .into_iter()
        .filter(|d| !d.fits(&consent) || consent.grantee != old.grantee)
        .collect();
    let mut changes: Vec<(String, Option<Consent>)> = vec![(id.clone(), Some(consent.clone()))];
    changes.extend(revoked.iter().map(|d| (d.id.clone(), None)));
    state.consents.commit(&mut consents, changes).await?;
    drop(consents);
    record_cascade(&state, &caller, &revoked, &consent);
    let ids: Vec<&str> = revoked.iter().map(|c| c.id.as_str()).collect();
    let mut body = consent.view(now);
    body["revoked"] = json!(ids);
    Ok(noted(Json(body), &consent, "consent.update"))
}

/// Revokes a consent, and every consent given under it: by its owner, whoever gave it, its grantee (renouncing),
/// or with `admin` on `consents`.
#[utoipa::path(delete, path = "/api/v1/consents/{id}", tag = "consents",
    params(("id" = String, Path, description = "consent id")),
    responses((status = 200, description = "`{revoked: [ids]}`"), (status = 401), (status = 403), (status = 404), (status = 503)))]
pub async fn revoke(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Response {
    let owner = state.consents.owner_of(&id).await;
    let object = format!("consent:{id}");
    withdraw(state, caller, id).await.unwrap_or_else(|e| refused(e, "consent.revoke", object, owner))
}

async fn withdraw(state: AppState, caller: Caller, id: String) -> Result<Response, ApiError> {
    if caller.is_anonymous() {
        return Err(denied(&caller, OBJECT, Action::Write));
    }
    let mut consents = state.consents.consents.lock().await;
    let admin = state.policy.check(&caller.0, OBJECT, Action::Admin);
    let Some(consent) = consents.get(&id).filter(|c| admin || visible(&state, &caller, c)).cloned() else {
        return Err(ApiError::not_found(format!("no consent {id} that this caller may see")));
    };
    let me = state.policy.canonical(&caller.0.subject);
    if ![&consent.owner, &consent.granted_by, &consent.grantee].contains(&&me) && !admin {
        return Err(ApiError::forbidden(format!(
            "{} may not revoke consent {id}: its owner, whoever gave it and its grantee may",
            caller.0.subject
        )));
    }
    let cascade = dependants(&consents, &id);
    let mut changes = vec![(id.clone(), None)];
    changes.extend(cascade.iter().map(|d| (d.id.clone(), None)));
    state.consents.commit(&mut consents, changes).await?;
    drop(consents);
    record_cascade(&state, &caller, &cascade, &consent);
    let mut ids = vec![consent.id.clone()];
    ids.extend(cascade.iter().map(|c| c.id.clone()));
    Ok(noted(Json(json!({ "revoked": ids })), &consent, "consent.revoke"))
}

/// Records the consents a change to their delegation revoked.
fn record_cascade(state: &AppState, caller: &Caller, revoked: &[Consent], delegation: &Consent) {
    for consent in revoked {
        let entry = Entry::new(
            caller.0.subject.clone(),
            caller.0.roles.clone(),
            "consent.revoke",
            format!("consent:{}", consent.id),
            Decision::Allowed,
        )
        .owned_by(Some(consent.owner.clone()))
        .with_detail(format!("delegation {} changed or ended: {}", delegation.id, consent.describe()));
        state.audit.record(entry);
    }
}
