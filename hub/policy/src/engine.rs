//! The authorisation engine: casbin behind an atomically swapped snapshot with a decision cache.

use std::{
    borrow::{Borrow, Cow},
    future::Future,
    hash::{Hash, Hasher},
    pin::pin,
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
};

use arc_swap::ArcSwap;
use casbin::{CoreApi, DefaultModel, Enforcer, StringAdapter, function_map::OperatorFunction};
use dashmap::DashMap;
use serde::Serialize;

use crate::{
    Action, Attributes, DataClass, LabelSource, PolicyError, Principal, ResolvedLabels,
    abac::{LabelOrigin, Labelled},
    consent::{Grant, GrantIndex},
    glob::{obj_match_function, object_matches},
    principal::MAX_NAME_LEN,
    rules::{
        Consent, LabelValue, MAX_OBJECT_LEN, ParsedPolicy, Permission, SubjectValue, canonical_name, split_domain,
        validate_domain,
    },
};

/// The casbin model the permissions (`p` and `g` lines) are evaluated against: role-based access control with
/// domains.
///
/// A request is `(subject, domain, object, action)`, the subject's name split from its domain (`alice@fujisawa`
/// is `alice` in `fujisawa`; a name without `@` is in the hub's own domain). A policy line `p, sub, obj, act`
/// (stored as `p, name, domain, obj, act`) allows it when the request subject is `sub` or has been given the role
/// `sub` in the same domain through `g` lines, the object matches the pattern `obj` (see
/// [`object_matches`](crate::object_matches)), and `act` is the requested action or `*`. Any allowing line is
/// enough; there are no deny lines. Data classes then bound reads (see [`DataClass`]).
pub const CASBIN_MODEL: &str = r#"[request_definition]
r = sub, dom, obj, act

[policy_definition]
p = sub, dom, obj, act

[role_definition]
g = _, _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = g(r.sub, p.sub, r.dom) && r.dom == p.dom && objMatch(r.obj, p.obj) && (p.act == "*" || r.act == p.act)
"#;

/// The domain of a hub whose configuration names none.
pub const DEFAULT_DOMAIN: &str = "local";

/// The policy a new hub starts with: the `admin` subject (or any token with the `admin` role) may do everything,
/// and nobody else may do anything, including anonymous requests.
pub const DEFAULT_POLICY: &str = "\
# Hub authorisation policy.
#
# Lines are `p, subject, object, action` (a permission) or `g, subject, role` (role membership).
# A request is allowed when its token's subject, or any of its token's roles, is allowed by some p line.
# Objects: `provider/service/resource`, `provider`, `policy`, `tokens`, `system:health`, `system:metrics`,
# `system:openapi`, `plugin:<id>`, `rule:<id>`. In object patterns `*` matches anything (including `/`) and
# `?` one character; dots are literal. Actions: read, write, act, admin, or * for all four.
#
# Examples (remove the leading `# ` to enable):
# p, anonymous, system:health, read
# p, dashboard, noise-*, read
# p, operators, */*/temperature, read
# g, alice, operators

p, admin, *, *
# The official adapters (installed by `hub serve`, see `plugins.official`) write the providers their devices
# report for; narrow these lines, or their grants, to confine them. CoAP devices are also checked themselves:
# a device token needs `write` on the provider it posts to.
p, plugin:mqtt, *, write
p, plugin:coap, *, write
p, plugin:lorawan, lora-*, write
p, plugin:xmpp, *, write
";

/// How many decisions a snapshot caches before it starts over.
pub const DEFAULT_CACHE_CAPACITY: usize = 100_000;

/// Why a check came out the way it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// The decision, identical to what [`PolicyEngine::check`] returns.
    pub allowed: bool,
    /// The line that allowed the request (a `p` line, or the `c` line of a consent), normalised. `None` when
    /// no line did (denied, or allowed by the data class alone).
    pub matched: Option<String>,
    /// The 1-based line number of that line in the policy text.
    pub line: Option<usize>,
    /// The decision in one sentence: which rule allowed or denied the request.
    pub reason: String,
    /// The domain the subject belongs to.
    pub domain: String,
    /// The object's labels (data class, clearance, department, owner) with where each was set.
    pub labels: ResolvedLabels,
    /// The subject's attributes (its own, its roles', its token's), when the data class needed them.
    pub attributes: Option<Attributes>,
}

/// The hub's authorisation decisions.
///
/// Cheap to share (`Arc<PolicyEngine>`); every method takes `&self`. [`check`](Self::check) never blocks on a
/// lock held by [`replace`](Self::replace): the policy lives in an immutable snapshot that is swapped whole.
pub struct PolicyEngine {
    current: ArcSwap<Snapshot>,
    /// Serialises writers so that versions increase by exactly one per successful replace.
    writer: Mutex<()>,
    cache_capacity: usize,
    /// The hub's own domain.
    domain: String,
    /// The objects' own labels (their metadata), once the live model is wired in.
    labels: OnceLock<Arc<dyn LabelSource>>,
    /// The consents given at run time (`/api/v1/consents`), beside the policy text's `c` lines.
    grants: ArcSwap<GrantIndex>,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let snapshot = self.current.load();
        f.debug_struct("PolicyEngine")
            .field("version", &snapshot.version)
            .field("permissions", &snapshot.policy.permissions.len())
            .field("groupings", &snapshot.policy.groupings.len())
            .field("cached_decisions", &snapshot.cache.len())
            .finish()
    }
}

impl PolicyEngine {
    /// Builds an engine from policy text for a hub in the domain `local`, with the default cache capacity. The
    /// first version is 1.
    pub fn new(text: &str) -> Result<Self, PolicyError> {
        Self::with_domain(text, DEFAULT_DOMAIN, DEFAULT_CACHE_CAPACITY)
    }

    /// Builds an engine whose decision cache holds at most about `capacity` entries before it is cleared.
    pub fn with_cache_capacity(text: &str, capacity: usize) -> Result<Self, PolicyError> {
        Self::with_domain(text, DEFAULT_DOMAIN, capacity)
    }

    /// Builds an engine for a hub whose own domain (city) is `domain`: names without `@` belong to it.
    pub fn with_domain(text: &str, domain: &str, capacity: usize) -> Result<Self, PolicyError> {
        validate_domain(domain).map_err(|message| PolicyError::Engine(format!("the hub's domain: {message}")))?;
        let compiled = Compiled::build(text, domain)?;
        Ok(PolicyEngine {
            current: ArcSwap::from_pointee(Snapshot::new(compiled, 1, capacity)),
            writer: Mutex::new(()),
            cache_capacity: capacity,
            domain: domain.to_owned(),
            labels: OnceLock::new(),
            grants: ArcSwap::from_pointee(GrantIndex::default()),
        })
    }

    /// Makes the objects' metadata a source of labels (data class, clearance, department, owner). Set once,
    /// when the live model exists; later calls are ignored.
    pub fn set_label_source(&self, source: Arc<dyn LabelSource>) {
        let _ = self.labels.set(source);
    }

    /// Makes `grants` the consents in force, in place of the previous ones, from the very next check. Grants are
    /// not cached decisions: an expiry applies at its instant, a revocation at the next check (an open stream's
    /// next event).
    pub fn set_grants(&self, grants: impl IntoIterator<Item = Grant>) {
        self.grants.store(Arc::new(GrantIndex::new(grants)));
    }

    /// How many consents are in force (expired ones included until they are removed).
    pub fn grant_count(&self) -> usize {
        self.grants.load().len()
    }

    /// Whether the principal's subject or one of its roles is `name`, or has the role `name` through `g` lines.
    pub fn acts_as(&self, principal: &Principal, name: &str) -> bool {
        self.current.load().acts_as(principal, name, &self.domain)
    }

    /// Validates policy text exactly as [`replace`](Self::replace) would, without installing it.
    pub fn validate(&self, text: &str) -> Result<(), PolicyError> {
        Compiled::build(text, &self.domain).map(drop)
    }

    /// Whether `principal` may perform `action` on `object`.
    ///
    /// The permissions allow a request when the principal's subject, or any one of its roles, is allowed by a
    /// `p` line in its domain; those decisions are cached per (subject or role, object, action) in the current
    /// snapshot, so a repeated check costs a hash lookup. A read of an object with a data class is then decided
    /// by the class (see [`DataClass`]). Objects longer than 512 bytes are denied outright. If casbin reports an
    /// error the request is denied (and the error logged), never allowed.
    pub fn check(&self, principal: &Principal, object: &str, action: Action) -> bool {
        self.decide(principal, object, action).0
    }

    /// A name the way the policy compares it: bare in the hub's own domain (`carol@santander` is `carol` on the
    /// Santander hub), `name@domain` for the others.
    pub fn canonical(&self, name: &str) -> String {
        canonical_name(name, &self.domain)
    }

    /// Like [`check`](Self::check), and also returns the object's labels in force (resolved for reads only; other
    /// actions get none): what an audit log needs to tell a read of personal or confidential data from the rest.
    pub fn decide(&self, principal: &Principal, object: &str, action: Action) -> (bool, Arc<ResolvedLabels>) {
        let snapshot = self.current.load();
        if object.len() > MAX_OBJECT_LEN {
            return (false, snapshot.no_labels.clone());
        }
        let (outcome, labels) = self.evaluate(&snapshot, principal, object, action);
        (outcome.allowed(), labels)
    }

    /// The labels in force for `object` (the policy's `o` lines, then its metadata), whoever asks.
    pub fn labels_of(&self, object: &str) -> Arc<ResolvedLabels> {
        let snapshot = self.current.load();
        if object.len() > MAX_OBJECT_LEN {
            return snapshot.no_labels.clone();
        }
        self.labels(&snapshot, object)
    }

    /// Like [`check`](Self::check), and also says which rule allowed or denied the request, with the labels and
    /// attributes that decided it.
    ///
    /// Meant for diagnostics (the studio's policy dashboard); the permission line is looked up without the cache.
    pub fn explain(&self, principal: &Principal, object: &str, action: Action) -> Explanation {
        let subject_domain = split_domain(&principal.subject, &self.domain).1;
        let mut explanation = Explanation {
            allowed: false,
            matched: None,
            line: None,
            reason: String::new(),
            domain: subject_domain.to_owned(),
            labels: ResolvedLabels::default(),
            attributes: None,
        };
        if object.len() > MAX_OBJECT_LEN {
            explanation.reason = format!("objects longer than {MAX_OBJECT_LEN} characters are always denied");
            return explanation;
        }
        let snapshot = self.current.load();
        let (outcome, labels) = self.evaluate(&snapshot, principal, object, action);
        explanation.allowed = outcome.allowed();
        if labels.class.is_some() && action == Action::Read {
            explanation.attributes = Some(snapshot.attributes(principal, &self.domain).into_owned());
        }
        let permission = || {
            std::iter::once(&principal.subject)
                .chain(&principal.roles)
                .find_map(|who| snapshot.matching_permission(who, object, action, &self.domain))
        };
        let class = labels.class.as_ref().map(|c| c.value);
        explanation.reason = match &outcome {
            Outcome::Permission => {
                let line = permission();
                explanation.matched = line.map(ToString::to_string);
                explanation.line = line.map(|p| p.line);
                match class {
                    Some(class) if action == Action::Read => {
                        format!("a permission allows it and the {class} data class lets this subject read it")
                    }
                    _ => "a permission allows it".to_owned(),
                }
            }
            Outcome::NoPermission => format!("no permission allows {action} on {object} for this subject or its roles"),
            Outcome::Open => "open data: everyone may read it".to_owned(),
            Outcome::LocalStaff => {
                format!("{} data: staff of this city (a subject with a department) may read it", class_name(class))
            }
            Outcome::NotStaff => {
                format!("{} data is for City Hall staff, and this subject has no department", class_name(class))
            }
            Outcome::Clearance { needed, has } => {
                format!("confidential data needs clearance {needed}; this subject has {has}")
            }
            Outcome::Department(department) => {
                format!("confidential data of the department {department}; this subject does not work in it")
            }
            Outcome::ForeignWithoutPermission => format!(
                "{} data: staff of another domain need a permission, and none allows this subject",
                class_name(class)
            ),
            Outcome::Owner => "personal data, read by its owner".to_owned(),
            Outcome::Consent(consent) => {
                explanation.matched = Some(consent.to_string());
                explanation.line = Some(consent.line);
                "personal data, read under its owner's consent".to_owned()
            }
            Outcome::Granted(grant) => {
                explanation.matched = Some(format!(
                    "consent {}: {} may {} {}",
                    grant.id,
                    grant.grantee,
                    grant.actions.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", "),
                    grant.objects
                ));
                format!("personal data of {}, under the owner's consent {}", grant.owner, grant.id)
            }
            Outcome::NotGranted => match labels.owner.as_ref() {
                Some(owner) => {
                    format!("personal data: only its owner {} and whom the owner granted may read it", owner.value)
                }
                None => "personal data without an owner: nobody may read it".to_owned(),
            },
        };
        explanation.labels = (*labels).clone();
        explanation
    }

    /// The decision and the labels it looked at.
    fn evaluate<'s>(
        &self,
        snapshot: &'s Snapshot,
        principal: &Principal,
        object: &str,
        action: Action,
    ) -> (Outcome<'s>, Arc<ResolvedLabels>) {
        let permitted = || {
            snapshot.decide(&principal.subject, object, action, &self.domain)
                || principal.roles.iter().any(|role| snapshot.decide(role, object, action, &self.domain))
        };
        let labels = if action == Action::Read { self.labels(snapshot, object) } else { snapshot.no_labels.clone() };
        let Some(class) = labels.class.as_ref().map(|c| c.value) else {
            if permitted() {
                return (Outcome::Permission, labels);
            }
            // An owner's consent can allow a write or an act on the owner's personal data.
            if action != Action::Read && self.grants.load().names(action) {
                let labels = self.labels(snapshot, object);
                if let Some(grant) = self.personal_grant(snapshot, principal, &labels, object, action) {
                    return (Outcome::Granted(grant), labels);
                }
            }
            return (Outcome::NoPermission, labels);
        };
        let outcome = match class {
            DataClass::Open => Outcome::Open,
            DataClass::Closed | DataClass::Confidential => {
                let attributes = snapshot.attributes(principal, &self.domain);
                let local = split_domain(&principal.subject, &self.domain).1 == self.domain;
                let needed = labels.clearance.as_ref().map_or(1, |c| c.value);
                let has = attributes.clearance.unwrap_or(0);
                if attributes.departments.is_empty() {
                    Outcome::NotStaff
                } else if class == DataClass::Confidential && has < needed {
                    Outcome::Clearance { needed, has }
                } else if class == DataClass::Confidential
                    && let Some(department) = &labels.department
                    && !attributes.departments.contains(&department.value)
                {
                    Outcome::Department(department.value.clone())
                } else if local {
                    Outcome::LocalStaff
                } else if permitted() {
                    Outcome::Permission
                } else {
                    Outcome::ForeignWithoutPermission
                }
            }
            DataClass::Personal => {
                // Owners compare by their canonical names: `erin@santander` is `erin` on the Santander hub.
                let owner = labels.owner.as_ref().map(|o| canonical_name(&o.value, &self.domain));
                match owner.as_deref() {
                    Some(owner) if canonical_name(&principal.subject, &self.domain) == owner => Outcome::Owner,
                    Some(owner) => snapshot
                        .policy
                        .consents
                        .iter()
                        .find(|c| {
                            c.owner == owner
                                && object_matches(&c.object, object)
                                && snapshot.acts_as(principal, &c.grantee, &self.domain)
                        })
                        .map(Outcome::Consent)
                        .or_else(|| {
                            self.personal_grant(snapshot, principal, &labels, object, action).map(Outcome::Granted)
                        })
                        .unwrap_or(Outcome::NotGranted),
                    None => Outcome::NotGranted,
                }
            }
        };
        (outcome, labels)
    }

    /// The first consent given at run time that lets the principal do `action` on `object`, personal data of the
    /// owner its labels name.
    fn personal_grant(
        &self,
        snapshot: &Snapshot,
        principal: &Principal,
        labels: &ResolvedLabels,
        object: &str,
        action: Action,
    ) -> Option<Arc<Grant>> {
        // A consent covers data, the resources `provider/service/resource`; never a provider's model.
        if labels.class.as_ref().map(|c| c.value) != Some(DataClass::Personal) || object.matches('/').count() != 2 {
            return None;
        }
        let owner = canonical_name(&labels.owner.as_ref()?.value, &self.domain);
        let grants = self.grants.load();
        grants
            .covering(&owner, action, object)
            .find(|grant| snapshot.acts_as(principal, &grant.grantee, &self.domain))
            .cloned()
    }

    /// The labels in force for an object: the policy's, then its metadata's. Shared, not copied, unless the
    /// object's metadata adds to what the policy says.
    fn labels(&self, snapshot: &Snapshot, object: &str) -> Arc<ResolvedLabels> {
        let labels = snapshot.policy_labels(object);
        if labels.is_complete() {
            return labels;
        }
        let Some(source) = self.labels.get() else { return labels };
        let metadata = source.labels(object);
        if metadata.is_empty() {
            return labels;
        }
        let mut filled = (*labels).clone();
        filled.fill_from(metadata);
        Arc::new(filled)
    }

    /// Validates `text` fully, then makes it the policy for every later check.
    ///
    /// On error the current policy stays in force untouched. On success the old snapshot, with its decision
    /// cache, is dropped as soon as in-flight checks release it, so no decision made under the old policy is
    /// served again. The version increases by one.
    ///
    /// The work is CPU-only (parsing, building casbin's model and role graph: about a millisecond for a
    /// thousand lines); it is `async` so that a later version can move large policies off the executor
    /// without changing callers.
    pub async fn replace(&self, text: &str) -> Result<(), PolicyError> {
        let compiled = Compiled::build(text, &self.domain)?;
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let version = self.current.load().version + 1;
        self.current.store(Arc::new(Snapshot::new(compiled, version, self.cache_capacity)));
        Ok(())
    }

    /// The current policy text, exactly as it was given (comments included).
    pub fn text(&self) -> String {
        self.current.load().text.clone()
    }

    /// The current policy version: 1 for the text given to [`new`](Self::new), plus one per successful
    /// [`replace`](Self::replace). Streams compare it to notice that they must re-check their subscriptions.
    pub fn version(&self) -> u64 {
        self.current.load().version
    }

    /// How many decisions the current snapshot has cached (for metrics).
    pub fn cached_decisions(&self) -> usize {
        self.current.load().cache.len()
    }
}

/// A validated policy with its casbin enforcer, not yet installed.
struct Compiled {
    text: String,
    policy: ParsedPolicy,
    enforcer: Enforcer,
}

impl Compiled {
    fn build(text: &str, domain: &str) -> Result<Self, PolicyError> {
        let policy = ParsedPolicy::parse(text, domain)?;
        let csv = policy.to_casbin_csv(domain);
        let enforcer = run_ready(async move {
            let model = DefaultModel::from_str(CASBIN_MODEL).await?;
            let mut enforcer = Enforcer::new(model, StringAdapter::new(csv)).await?;
            enforcer.add_function("objMatch", OperatorFunction::Arg2(obj_match_function));
            Ok::<_, casbin::Error>(enforcer)
        })?
        .map_err(|e| PolicyError::Engine(e.to_string()))?;
        Ok(Compiled { text: text.to_owned(), policy, enforcer })
    }
}

/// Drives a future that never waits on anything external to completion.
///
/// casbin's constructors are `async` because some adapters do I/O; the in-memory string adapter and model parser
/// used here complete on their first poll. If that ever changes, this reports an error instead of blocking.
fn run_ready<F: Future>(future: F) -> Result<F::Output, PolicyError> {
    let mut context = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut context) {
        Poll::Ready(output) => Ok(output),
        Poll::Pending => Err(PolicyError::Engine("casbin initialisation did not complete synchronously".into())),
    }
}

/// One immutable policy version with the decisions made under it.
struct Snapshot {
    text: String,
    policy: ParsedPolicy,
    enforcer: Enforcer,
    version: u64,
    cache: DecisionCache,
    /// Attributes the `s` lines give each subject or role name (through its roles), when there are `s` lines.
    subject_attributes: BoundedMap<Attributes>,
    /// Labels the `o` lines give each object, when there are `o` lines.
    object_labels: BoundedMap<ResolvedLabels>,
    /// No labels at all, shared by every object nothing labels.
    no_labels: Arc<ResolvedLabels>,
}

/// How a request was decided.
enum Outcome<'s> {
    /// A permission allows it (and, for a classified read, the class lets this subject read).
    Permission,
    /// No permission allows it.
    NoPermission,
    /// Open data.
    Open,
    /// Closed or confidential data read by the staff of this city.
    LocalStaff,
    /// Closed or confidential data, and the subject has no department.
    NotStaff,
    /// Confidential data above the subject's clearance.
    Clearance { needed: u8, has: u8 },
    /// Confidential data of a department the subject does not work in.
    Department(String),
    /// Closed or confidential data, a subject of another domain, and no permission for it.
    ForeignWithoutPermission,
    /// Personal data read by its owner.
    Owner,
    /// Personal data read under a consent line of the policy.
    Consent(&'s Consent),
    /// Personal data read, written or acted on under a consent given at run time.
    Granted(Arc<Grant>),
    /// Personal data, neither owner nor consent.
    NotGranted,
}

impl Outcome<'_> {
    fn allowed(&self) -> bool {
        matches!(
            self,
            Outcome::Permission
                | Outcome::Open
                | Outcome::LocalStaff
                | Outcome::Owner
                | Outcome::Consent(_)
                | Outcome::Granted(_)
        )
    }
}

fn class_name(class: Option<DataClass>) -> &'static str {
    class.map_or("unclassified", DataClass::as_str)
}

impl Snapshot {
    fn new(compiled: Compiled, version: u64, cache_capacity: usize) -> Self {
        let Compiled { text, policy, enforcer } = compiled;
        Snapshot {
            text,
            policy,
            enforcer,
            version,
            cache: DecisionCache::new(cache_capacity),
            subject_attributes: BoundedMap::new(cache_capacity),
            object_labels: BoundedMap::new(cache_capacity),
            no_labels: Arc::new(ResolvedLabels::default()),
        }
    }

    /// The cached permission decision for one subject or role.
    fn decide(&self, who: &str, object: &str, action: Action, local: &str) -> bool {
        // Policy subjects are validated names of at most 128 bytes, so a longer one can never match; refusing it
        // here also keeps oversized keys out of the cache.
        if who.len() > MAX_NAME_LEN {
            return false;
        }
        if let Some(allowed) = self.cache.get(who, object, action) {
            return allowed;
        }
        let allowed = self.enforce(who, object, action, local);
        self.cache.insert(who, object, action, allowed);
        allowed
    }

    /// An uncached casbin decision. Errors deny.
    fn enforce(&self, who: &str, object: &str, action: Action, local: &str) -> bool {
        let (name, domain) = split_domain(who, local);
        match self.enforcer.enforce((name, domain, object, action.as_str())) {
            Ok(allowed) => allowed,
            Err(error) => {
                tracing::warn!(%error, subject = who, object, %action, "casbin enforce failed; denying");
                false
            }
        }
    }

    /// Whether `who` is `name` or has been given the role `name` in its domain through `g` lines.
    fn is_or_has(&self, who: &str, name: &str, local: &str) -> bool {
        let (who_name, who_domain) = split_domain(who, local);
        let (name, domain) = split_domain(name, local);
        if who_domain != domain {
            return false;
        }
        let roles = self.enforcer.get_role_manager();
        let roles = roles.read();
        roles.has_link(who_name, name, Some(domain))
    }

    /// Whether the principal's subject or one of its token roles is `name` or has its role.
    fn acts_as(&self, principal: &Principal, name: &str, local: &str) -> bool {
        std::iter::once(&principal.subject).chain(&principal.roles).any(|who| self.is_or_has(who, name, local))
    }

    /// The principal's attributes: its token's, merged with those `s` lines give its subject and roles.
    fn attributes<'p>(&self, principal: &'p Principal, local: &str) -> Cow<'p, Attributes> {
        if self.policy.subject_attributes.is_empty() {
            return Cow::Borrowed(&principal.attributes);
        }
        let mut attributes = principal.attributes.clone();
        for who in std::iter::once(&principal.subject).chain(&principal.roles) {
            if who.len() > MAX_NAME_LEN {
                continue;
            }
            let from_policy = self.subject_attributes.get_or_insert_with(who, || {
                let mut found = Attributes::default();
                for line in &self.policy.subject_attributes {
                    if self.is_or_has(who, &line.subject, local) {
                        match &line.value {
                            SubjectValue::Department(d) if !found.departments.contains(d) => {
                                found.departments.push(d.clone())
                            }
                            SubjectValue::Department(_) => {}
                            SubjectValue::Clearance(c) => found.clearance = found.clearance.max(Some(*c)),
                        }
                    }
                }
                found
            });
            attributes.merge(&from_policy);
        }
        Cow::Owned(attributes)
    }

    /// The labels the `o` lines give an object: the first matching line, in text order, for each label.
    fn policy_labels(&self, object: &str) -> Arc<ResolvedLabels> {
        if self.policy.object_labels.is_empty() {
            return self.no_labels.clone();
        }
        self.object_labels.get_or_insert_with(object, || {
            let mut labels = ResolvedLabels::default();
            for line in self.policy.object_labels.iter().filter(|l| object_matches(&l.pattern, object)) {
                fn set<T>(slot: &mut Option<Labelled<T>>, value: T, line: usize) {
                    if slot.is_none() {
                        *slot = Some(Labelled { value, origin: LabelOrigin::Policy(line) });
                    }
                }
                match &line.value {
                    LabelValue::Class(c) => set(&mut labels.class, *c, line.line),
                    LabelValue::Clearance(c) => set(&mut labels.clearance, *c, line.line),
                    LabelValue::Department(d) => set(&mut labels.department, d.clone(), line.line),
                    LabelValue::Owner(o) => set(&mut labels.owner, o.clone(), line.line),
                }
            }
            labels
        })
    }

    /// The first `p` line, in text order, that allows `who` to do `action` on `object`.
    ///
    /// This re-applies the model's matcher in Rust (role links come from casbin's own role manager), because
    /// casbin only reports matched lines when its logging feature is on, which starts a logging thread per
    /// enforcer.
    fn matching_permission(&self, who: &str, object: &str, action: Action, local: &str) -> Option<&Permission> {
        self.policy.permissions.iter().find(|p| {
            p.action.allows(action) && object_matches(&p.object, object) && self.is_or_has(who, &p.subject, local)
        })
    }
}

/// A concurrent map from a name to a value computed once per snapshot, cleared when it outgrows its capacity.
struct BoundedMap<T> {
    map: DashMap<Box<str>, Arc<T>>,
    capacity: usize,
}

impl<T> BoundedMap<T> {
    fn new(capacity: usize) -> Self {
        BoundedMap { map: DashMap::new(), capacity: capacity.max(1) }
    }

    fn get_or_insert_with(&self, key: &str, make: impl FnOnce() -> T) -> Arc<T> {
        if let Some(value) = self.map.get(key) {
            return Arc::clone(value.value());
        }
        let value = Arc::new(make());
        if self.map.len() >= self.capacity {
            self.map.clear();
        }
        self.map.insert(key.into(), Arc::clone(&value));
        value
    }
}

/// Decisions made under one snapshot, keyed by (subject or role, object, action).
///
/// Bounded: when an insertion takes it past its capacity it is cleared and refills from casbin. A clear is
/// cheap and rare; a least-recently-used policy would put a write on every hit.
struct DecisionCache {
    map: DashMap<CacheKey, bool>,
    len: AtomicUsize,
    capacity: usize,
}

impl DecisionCache {
    fn new(capacity: usize) -> Self {
        DecisionCache { map: DashMap::new(), len: AtomicUsize::new(0), capacity: capacity.max(1) }
    }

    fn get(&self, who: &str, object: &str, action: Action) -> Option<bool> {
        let probe = (who, object, action);
        self.map.get(&probe as &dyn KeyView).map(|entry| *entry.value())
    }

    fn insert(&self, who: &str, object: &str, action: Action, allowed: bool) {
        let key = CacheKey { who: who.into(), object: object.into(), action };
        if self.map.insert(key, allowed).is_none() && self.len.fetch_add(1, Ordering::Relaxed) + 1 > self.capacity {
            // Concurrent inserts may slip in between these two lines; the bound is approximate by design.
            self.len.store(0, Ordering::Relaxed);
            self.map.clear();
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

#[derive(Debug)]
struct CacheKey {
    who: Box<str>,
    object: Box<str>,
    action: Action,
}

/// A borrowed view of a cache key, so lookups need no allocation: the map stores [`CacheKey`]s and is probed
/// with a `(&str, &str, Action)` through this trait object.
trait KeyView {
    fn parts(&self) -> (&str, &str, Action);
}

impl KeyView for CacheKey {
    fn parts(&self) -> (&str, &str, Action) {
        (&self.who, &self.object, self.action)
    }
}

impl KeyView for (&str, &str, Action) {
    fn parts(&self) -> (&str, &str, Action) {
        (self.0, self.1, self.2)
    }
}

impl<'a> Borrow<dyn KeyView + 'a> for CacheKey {
    fn borrow(&self) -> &(dyn KeyView + 'a) {
        self
    }
}

impl Hash for dyn KeyView + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

impl PartialEq for dyn KeyView + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn KeyView + '_ {}

// `Borrow` requires the owned key to hash and compare exactly like its borrowed view.
impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self as &dyn KeyView).hash(state);
    }
}

impl PartialEq for CacheKey {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for CacheKey {}

#[cfg(test)]
mod tests;
