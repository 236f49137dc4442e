//! The authorisation engine: casbin behind an atomically swapped snapshot with a decision cache.

use std::{
    borrow::Borrow,
    future::Future,
    hash::{Hash, Hasher},
    pin::pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
};

use arc_swap::ArcSwap;
use casbin::{CoreApi, DefaultModel, Enforcer, StringAdapter, function_map::OperatorFunction};
use dashmap::DashMap;
use serde::Serialize;

use crate::{
    Action, PolicyError, Principal,
    glob::{obj_match_function, object_matches},
    principal::MAX_NAME_LEN,
    rules::{MAX_OBJECT_LEN, ParsedPolicy, Permission},
};

/// The casbin model every policy is evaluated against.
///
/// A request is `(subject, object, action)`. A policy line `p, sub, obj, act` allows it when the request subject
/// is `sub` or has been given the role `sub` through `g` lines, the object matches the pattern `obj` (see
/// [`object_matches`](crate::object_matches)), and `act` is the requested action or `*`. Any allowing line is
/// enough; there are no deny lines.
pub const CASBIN_MODEL: &str = r#"[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act

[role_definition]
g = _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = g(r.sub, p.sub) && objMatch(r.obj, p.obj) && (p.act == "*" || r.act == p.act)
"#;

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
    /// The `p` line that allowed the request, normalised as `p, subject, object, action`. `None` when denied.
    pub matched: Option<String>,
    /// The 1-based line number of that `p` line in the policy text. `None` when denied.
    pub line: Option<usize>,
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
    /// Builds an engine from policy text, with the default cache capacity. The first version is 1.
    pub fn new(text: &str) -> Result<Self, PolicyError> {
        Self::with_cache_capacity(text, DEFAULT_CACHE_CAPACITY)
    }

    /// Builds an engine whose decision cache holds at most about `capacity` entries before it is cleared.
    pub fn with_cache_capacity(text: &str, capacity: usize) -> Result<Self, PolicyError> {
        let compiled = Compiled::build(text)?;
        Ok(PolicyEngine {
            current: ArcSwap::from_pointee(Snapshot::new(compiled, 1, capacity)),
            writer: Mutex::new(()),
            cache_capacity: capacity,
        })
    }

    /// Validates policy text exactly as [`replace`](Self::replace) would, without installing it.
    pub fn validate(text: &str) -> Result<(), PolicyError> {
        Compiled::build(text).map(drop)
    }

    /// Whether `principal` may perform `action` on `object`.
    ///
    /// The principal is allowed when its subject, or any one of its roles, is allowed by the policy. Decisions
    /// are cached per (subject or role, object, action) in the current snapshot, so a repeated check costs a
    /// hash lookup. Objects longer than 512 bytes are denied outright. If casbin reports an error the request is
    /// denied (and the error logged), never allowed.
    pub fn check(&self, principal: &Principal, object: &str, action: Action) -> bool {
        if object.len() > MAX_OBJECT_LEN {
            return false;
        }
        let snapshot = self.current.load();
        snapshot.decide(&principal.subject, object, action)
            || principal.roles.iter().any(|role| snapshot.decide(role, object, action))
    }

    /// Like [`check`](Self::check), and also names the policy line that allowed the request.
    ///
    /// Meant for diagnostics (the studio's "why was this allowed?"); it bypasses the cache.
    pub fn explain(&self, principal: &Principal, object: &str, action: Action) -> Explanation {
        let denied = Explanation { allowed: false, matched: None, line: None };
        if object.len() > MAX_OBJECT_LEN {
            return denied;
        }
        let snapshot = self.current.load();
        for who in std::iter::once(&principal.subject).chain(&principal.roles) {
            if snapshot.enforce(who, object, action) {
                let permission = snapshot.matching_permission(who, object, action);
                return Explanation {
                    allowed: true,
                    matched: permission.map(ToString::to_string),
                    line: permission.map(|p| p.line),
                };
            }
        }
        denied
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
        let compiled = Compiled::build(text)?;
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
    fn build(text: &str) -> Result<Self, PolicyError> {
        let policy = ParsedPolicy::parse(text)?;
        let csv = policy.to_casbin_csv();
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
}

impl Snapshot {
    fn new(compiled: Compiled, version: u64, cache_capacity: usize) -> Self {
        let Compiled { text, policy, enforcer } = compiled;
        Snapshot { text, policy, enforcer, version, cache: DecisionCache::new(cache_capacity) }
    }

    /// The cached decision for one subject or role.
    fn decide(&self, who: &str, object: &str, action: Action) -> bool {
        // Policy subjects are validated names of at most 128 bytes, so a longer one can never match; refusing it
        // here also keeps oversized keys out of the cache.
        if who.len() > MAX_NAME_LEN {
            return false;
        }
        if let Some(allowed) = self.cache.get(who, object, action) {
            return allowed;
        }
        let allowed = self.enforce(who, object, action);
        self.cache.insert(who, object, action, allowed);
        allowed
    }

    /// An uncached casbin decision. Errors deny.
    fn enforce(&self, who: &str, object: &str, action: Action) -> bool {
        match self.enforcer.enforce((who, object, action.as_str())) {
            Ok(allowed) => allowed,
            Err(error) => {
                tracing::warn!(%error, subject = who, object, %action, "casbin enforce failed; denying");
                false
            }
        }
    }

    /// The first `p` line, in text order, that allows `who` to do `action` on `object`.
    ///
    /// This re-applies the model's matcher in Rust (role links come from casbin's own role manager), because
    /// casbin only reports matched lines when its logging feature is on, which starts a logging thread per
    /// enforcer.
    fn matching_permission(&self, who: &str, object: &str, action: Action) -> Option<&Permission> {
        let roles = self.enforcer.get_role_manager();
        let roles = roles.read();
        self.policy.permissions.iter().find(|p| {
            p.action.allows(action) && object_matches(&p.object, object) && roles.has_link(who, &p.subject, None)
        })
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
