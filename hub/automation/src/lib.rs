//! Runs the hub's Event-Condition-Action rules.
//!
//! `hub-rules` is a pure engine; this crate hosts it. It keeps deployed rules in the store (record namespace
//! `rules`), validates new ones against the live twin, feeds the engine every committed update from the bus
//! (off the ingest path: a slow rule or webhook never slows ingest), ticks it for `for` durations and
//! schedules, and executes each firing's actions as the subject `rule:<id>`, through the policy: SET and ACT
//! through the twin, webhooks by HTTP POST with retries and backoff, events published on the bus, and `call`
//! through the [`AppRunner`] the binary gives it (the plugin runtime, running rule apps). Every rule keeps its
//! counters, its last error, its last app result and its recent firings with the values that made it fire.
//!
//! Window state, `for` clocks and hysteresis start empty after a restart; current values are seeded from the
//! twin so conditions on them are known at once.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use async_trait::async_trait;
use hub_bus::{Change, Received};
use hub_model::{Timestamp, Update};
use hub_plugin_sdk::abi::{CallRequest, CallTrigger};
use hub_policy::{Action as Permission, PolicyEngine, Principal};
use hub_rules::{Action, Cause, Diagnostic, Engine, Firing, Rule, RuleError, RuleStats, Severity};
use hub_twin::{ActError, Twin, TwinError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The store namespace of deployed rules.
pub const RULES_NAMESPACE: &str = "rules";
/// Firings kept per rule for `GET /rules/{id}/firings`.
pub const FIRINGS_KEPT: usize = 100;
/// Firings waiting for execution before the evaluator waits (back-pressure stays off the ingest path).
const ACTION_QUEUE: usize = 1024;
/// Webhook attempts when a rule does not say; also the retries of a SET or ACT that failed transiently.
const DEFAULT_RETRIES: u32 = 3;
/// Deadline of one webhook attempt.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the engine's clock advances when nothing arrives.
const TICK: Duration = Duration::from_millis(250);

/// Why an automation request failed.
#[derive(Debug, thiserror::Error)]
pub enum AutomationError {
    /// The rule source has errors; nothing was deployed.
    #[error("the rule has errors")]
    Invalid(Vec<Diagnostic>),
    /// No rule with that id.
    #[error("rule {0} not found")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] hub_store::StoreError),
}

/// Runs rule apps (plugins of kind `app`) for `call` actions. The binary implements it over the plugin runtime.
#[async_trait]
pub trait AppRunner: Send + Sync + 'static {
    /// Calls app `app` with `request`; the app's result, or why not. `Refused` is final (no such app, bad
    /// parameters); `Timeout` and `Failed` are retried like a failed ACT.
    async fn call(&self, app: &str, request: CallRequest) -> Result<Value, ActError>;

    /// Whether `app` is an installed rule app (for the checker's `unknown-app` warning).
    fn is_app(&self, app: &str) -> bool;
}

/// The policy object a rule needs `act` on to call app `app`: `plugin:<app>`.
pub fn app_object(app: &str) -> String {
    hub_policy::objects::plugin(app)
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredRule {
    source: String,
    enabled: bool,
}

/// What `GET /rules/{id}` shows.
#[derive(Debug, Clone, Serialize)]
pub struct RuleInfo {
    /// The rule id (its name).
    pub id: String,
    /// The source as deployed.
    pub source: String,
    /// Engine counters: enabled, instances, evaluations, firings, last fired.
    #[serde(flatten)]
    pub stats: RuleStats,
    /// Actions that failed (after retries) or were denied.
    pub action_failures: u64,
    /// The last action error.
    pub last_error: Option<String>,
    /// The last result a rule app returned to a `call` of this rule: `{"app", "result", "at"}`.
    pub last_result: Option<Value>,
}

#[derive(Default)]
struct Record {
    action_failures: u64,
    last_error: Option<String>,
    last_result: Option<Value>,
    firings: VecDeque<Value>,
}

struct Inner {
    engine: Mutex<Engine>,
    records: Mutex<HashMap<String, Record>>,
    twin: Arc<Twin>,
    policy: Arc<PolicyEngine>,
    http: reqwest::Client,
    apps: std::sync::OnceLock<Arc<dyn AppRunner>>,
}

/// The running automation. Cheap to clone.
#[derive(Clone)]
pub struct Automation {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Automation {
    /// Loads deployed rules from the store, seeds the engine with the twin's current values and starts the
    /// evaluator, the clock and the executor. They stop when `cancel` is cancelled.
    pub async fn start(
        twin: Arc<Twin>,
        policy: Arc<PolicyEngine>,
        cancel: CancellationToken,
    ) -> Result<Automation, AutomationError> {
        let http = reqwest::Client::builder()
            .timeout(WEBHOOK_TIMEOUT)
            .build()
            .map_err(|e| hub_store::StoreError::Unavailable(format!("HTTP client: {e}")))?;
        let mut engine = Engine::new();
        for (id, body) in twin.store().records(RULES_NAMESPACE).await? {
            let stored: StoredRule = match serde_json::from_str(&body) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(rule = %id, "stored rule unreadable, skipped: {e}");
                    continue;
                }
            };
            match hub_rules::parse(&stored.source).map(|mut rules| rules.pop()) {
                Ok(Some(rule)) => {
                    if let Err(e) = engine.deploy(rule) {
                        tracing::error!(rule = %id, "stored rule not deployed: {e}");
                    } else if !stored.enabled {
                        let _ = engine.disable(&id);
                    }
                }
                _ => tracing::error!(rule = %id, "stored rule no longer parses, skipped"),
            }
        }
        for provider in twin.providers(|_| true) {
            for (path, resource) in provider.resources() {
                engine.discover(&path);
                if let (Some(value), Some(timestamp)) = (&resource.value, resource.timestamp) {
                    engine.seed(&Update { path, value: value.clone(), timestamp });
                }
            }
        }
        let automation = Automation {
            inner: Arc::new(Inner {
                engine: Mutex::new(engine),
                records: Mutex::new(HashMap::new()),
                twin: twin.clone(),
                policy,
                http,
                apps: std::sync::OnceLock::new(),
            }),
        };
        let (tx, rx) = mpsc::channel(ACTION_QUEUE);
        tokio::spawn(automation.clone().evaluate(tx, cancel.clone()));
        tokio::spawn(automation.clone().execute(rx, cancel));
        Ok(automation)
    }

    /// Gives the automation the runner of rule apps (once; later calls are ignored). Until then, `call`
    /// actions fail with a clear error.
    pub fn set_apps(&self, runner: Arc<dyn AppRunner>) {
        let _ = self.inner.apps.set(runner);
    }

    /// Checks a rule source against the live model and the deployed rules (a deployed rule of the same name is
    /// replaced, not compared with). Returns every diagnostic; errors mean it would not deploy.
    pub fn validate(&self, source: &str) -> Vec<Diagnostic> {
        match hub_rules::parse(source) {
            Ok(rules) => self.check(&rules),
            Err(diagnostics) => diagnostics,
        }
    }

    /// The model and rule-set checks for parsed rules.
    fn check(&self, rules: &[Rule]) -> Vec<Diagnostic> {
        let providers = self.inner.twin.providers(|_| true);
        let engine = lock(&self.inner.engine);
        let deployed: Vec<Rule> = engine.rules().filter(|d| !rules.iter().any(|r| r.name == d.name)).cloned().collect();
        let mut diagnostics = hub_rules::check(rules, &providers, &deployed);
        diagnostics.extend(self.check_apps(rules));
        diagnostics
    }

    /// An `unknown-app` warning for each `call` of an app this hub does not run.
    fn check_apps(&self, rules: &[Rule]) -> Vec<Diagnostic> {
        let runner = self.inner.apps.get();
        let calls = rules.iter().flat_map(|r| r.then.iter().chain(&r.otherwise)).filter_map(|a| match &a.kind {
            hub_rules::ActionKind::Call { app, app_span, .. } => Some((app, *app_span)),
            _ => None,
        });
        calls
            .filter(|(app, _)| !runner.is_some_and(|r| r.is_app(app.as_str())))
            .map(|(app, span)| {
                Diagnostic::warning(
                    hub_rules::DiagCode::UnknownApp,
                    span,
                    format!("no rule app `{app}` is installed (a plugin of kind \"app\"); the call fails until one is"),
                )
            })
            .collect()
    }

    /// Validates and deploys (or replaces) the rule `id`. The source must hold exactly one rule named `id`.
    pub async fn deploy(&self, id: &str, source: &str) -> Result<Vec<Diagnostic>, AutomationError> {
        let rules = hub_rules::parse(source).map_err(AutomationError::Invalid)?;
        let mut diagnostics = self.check(&rules);
        if diagnostics.iter().all(|d| d.severity != Severity::Error) {
            match rules.as_slice() {
                [rule] if rule.name.as_str() == id => {}
                [rule] => diagnostics.push(Diagnostic::error(
                    hub_rules::DiagCode::Syntax,
                    rule.name_span,
                    format!("the rule is named {:?} but is deployed as {id:?}; use the same name", rule.name.as_str()),
                )),
                _ => diagnostics.push(Diagnostic::error(
                    hub_rules::DiagCode::Syntax,
                    hub_rules::Span::default(),
                    "deploy one rule per id; this source holds several (or none)",
                )),
            }
        }
        if diagnostics.iter().any(|d| d.severity == Severity::Error) {
            return Err(AutomationError::Invalid(diagnostics));
        }
        let Some(rule) = rules.into_iter().next() else { return Err(AutomationError::Invalid(diagnostics)) };
        let body = serde_json::to_string(&StoredRule { source: source.to_string(), enabled: true })
            .map_err(|e| hub_store::StoreError::Corrupt(e.to_string()))?;
        self.inner.twin.store().put_record(RULES_NAMESPACE, id, &body).await?;
        let mut engine = lock(&self.inner.engine);
        let _ = engine.remove(id);
        engine.deploy(rule).map_err(|e| match e {
            RuleError::Invalid { diagnostics, .. } => AutomationError::Invalid(diagnostics),
            other => AutomationError::Invalid(vec![Diagnostic::error(
                hub_rules::DiagCode::Syntax,
                hub_rules::Span::default(),
                other.to_string(),
            )]),
        })?;
        lock(&self.inner.records).insert(id.to_string(), Record::default());
        Ok(diagnostics)
    }

    /// Removes a rule.
    pub async fn remove(&self, id: &str) -> Result<(), AutomationError> {
        if lock(&self.inner.engine).rule(id).is_none() {
            return Err(AutomationError::NotFound(id.to_string()));
        }
        self.inner.twin.store().delete_record(RULES_NAMESPACE, id).await?;
        let _ = lock(&self.inner.engine).remove(id);
        lock(&self.inner.records).remove(id);
        Ok(())
    }

    /// Enables or disables a rule (kept across restarts).
    pub async fn set_enabled(&self, id: &str, enabled: bool) -> Result<RuleInfo, AutomationError> {
        let source = {
            let mut engine = lock(&self.inner.engine);
            let source =
                engine.rule(id).map(|r| r.source.to_string()).ok_or_else(|| AutomationError::NotFound(id.into()))?;
            let _ = if enabled { engine.enable(id) } else { engine.disable(id) };
            source
        };
        let body = serde_json::to_string(&StoredRule { source, enabled })
            .map_err(|e| hub_store::StoreError::Corrupt(e.to_string()))?;
        self.inner.twin.store().put_record(RULES_NAMESPACE, id, &body).await?;
        self.get(id).ok_or_else(|| AutomationError::NotFound(id.into()))
    }

    /// Every deployed rule.
    pub fn list(&self) -> Vec<RuleInfo> {
        let ids: Vec<String> = lock(&self.inner.engine).rules().map(|r| r.name.to_string()).collect();
        ids.iter().filter_map(|id| self.get(id)).collect()
    }

    /// One rule.
    pub fn get(&self, id: &str) -> Option<RuleInfo> {
        let (source, stats) = {
            let engine = lock(&self.inner.engine);
            (engine.rule(id)?.source.to_string(), engine.stats(id)?)
        };
        let records = lock(&self.inner.records);
        let record = records.get(id);
        Some(RuleInfo {
            id: id.to_string(),
            source,
            stats,
            action_failures: record.map_or(0, |r| r.action_failures),
            last_error: record.and_then(|r| r.last_error.clone()),
            last_result: record.and_then(|r| r.last_result.clone()),
        })
    }

    /// The rule's recent firings, newest first, each with the values that made it fire.
    pub fn firings(&self, id: &str) -> Option<Vec<Value>> {
        lock(&self.inner.engine).rule(id)?;
        Some(lock(&self.inner.records).get(id).map(|r| r.firings.iter().rev().cloned().collect()).unwrap_or_default())
    }

    async fn evaluate(self, tx: mpsc::Sender<Firing>, cancel: CancellationToken) {
        let mut sub = self.inner.twin.bus().subscribe();
        let mut ticker = tokio::time::interval(TICK);
        loop {
            let mut firings = Vec::new();
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = ticker.tick() => {
                    lock(&self.inner.engine).tick(Timestamp::now(), &mut |f| firings.push(f));
                }
                received = sub.recv() => match received {
                    Received::Event(event) => {
                        let mut engine = lock(&self.inner.engine);
                        let now = Timestamp::now();
                        match &event.change {
                            Change::Updates(updates) => {
                                for u in updates.iter() {
                                    // Hub time, not the device's: a device clock in the future must not move
                                    // every rule's clock.
                                    // An update of admin/status is also the provider's online/offline event.
                                    engine.on_update_at(u, now, &mut |f| firings.push(f));
                                }
                            }
                            Change::ModelChanged(name) => {
                                if let Some(p) = self.inner.twin.provider(name.as_str()) {
                                    for (path, _) in p.resources() {
                                        engine.discover(&path);
                                    }
                                }
                            }
                            Change::ProviderDeleted(name) => engine.on_provider_deleted(name),
                            Change::Published { .. } => {}
                        }
                    }
                    Received::Lagged(n) => tracing::warn!(dropped = n, "the rules engine fell behind; {n} events were not evaluated"),
                    Received::Closed => return,
                },
            }
            for firing in firings {
                self.remember(&firing);
                if tx.send(firing).await.is_err() {
                    return;
                }
            }
        }
    }

    fn remember(&self, firing: &Firing) {
        let mut records = lock(&self.inner.records);
        let record = records.entry(firing.rule.to_string()).or_default();
        if record.firings.len() == FIRINGS_KEPT {
            record.firings.pop_front();
        }
        record.firings.push_back(serde_json::to_value(firing).unwrap_or(Value::Null));
    }

    fn failed(&self, rule: &str, error: String) {
        tracing::warn!(rule, "rule action failed: {error}");
        let mut records = lock(&self.inner.records);
        let record = records.entry(rule.to_string()).or_default();
        record.action_failures += 1;
        record.last_error = Some(error);
    }

    async fn execute(self, mut rx: mpsc::Receiver<Firing>, cancel: CancellationToken) {
        loop {
            let firing = tokio::select! {
                _ = cancel.cancelled() => return,
                f = rx.recv() => match f { Some(f) => f, None => return },
            };
            let rule = firing.rule.to_string();
            let subject = Principal::new(format!("rule:{rule}"), Vec::new());
            let context = FiringContext::of(&firing);
            for action in firing.actions {
                if let Err(e) = self.perform(&rule, &subject, &context, action).await {
                    self.failed(&rule, e);
                }
            }
            for skipped in firing.skipped {
                self.failed(&rule, format!("action skipped: {skipped}"));
            }
        }
    }

    fn allowed(&self, subject: &Principal, object: &str, permission: Permission) -> Result<(), String> {
        if self.inner.policy.check(subject, object, permission) {
            Ok(())
        } else {
            Err(format!("{} may not {permission} {object} (grant it in the policy)", subject.subject))
        }
    }

    async fn perform(
        &self,
        rule: &str,
        subject: &Principal,
        context: &FiringContext,
        action: Action,
    ) -> Result<(), String> {
        match action {
            Action::Set { .. } | Action::Act { .. } | Action::Call { .. } => {
                match &action {
                    Action::Set { path, .. } => self.allowed(subject, &path.to_string(), Permission::Write)?,
                    Action::Act { path, .. } => self.allowed(subject, &path.to_string(), Permission::Act)?,
                    Action::Call { app, .. } => self.allowed(subject, &app_object(app.as_str()), Permission::Act)?,
                    _ => {}
                }
                let request = Request { rule: rule.to_string(), context: context.clone(), action };
                match self.apply(&request).await {
                    Ok(()) => Ok(()),
                    Err(e) if transient(&e) => {
                        // Retried in its own task with backoff: the next firings do not wait for this one.
                        let this = self.clone();
                        tokio::spawn(async move {
                            if let Err(e) = this.retry(&request, e).await {
                                this.failed(&request.rule, e);
                            }
                        });
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            Action::Publish { topic, payload } => {
                let object = format!("event:{topic}");
                if !self.inner.policy.check(subject, &object, Permission::Write) {
                    return Err(format!("{} may not write {object} (grant it in the policy)", subject.subject));
                }
                self.inner.twin.bus().publish(Change::Published { source: format!("rule:{rule}"), topic, payload });
                Ok(())
            }
            Action::Notify { url, body, retries } => {
                // Webhooks are delivered in their own task: a slow endpoint delays nothing else.
                let this = self.clone();
                let rule = rule.to_string();
                tokio::spawn(async move {
                    if let Err(e) = this.notify(&url, &body, retries.unwrap_or(DEFAULT_RETRIES)).await {
                        this.failed(&rule, e);
                    }
                });
                Ok(())
            }
        }
    }

    /// Carries out a SET, an ACT or a call once.
    async fn apply(&self, request: &Request) -> Result<(), TwinError> {
        match &request.action {
            Action::Set { path, value } => self.inner.twin.set(path.clone(), value.clone()).await.map(drop),
            Action::Act { path, params } => self.inner.twin.act(path.clone(), params.clone()).await.map(drop),
            Action::Call { app, params } => {
                let runner = self.inner.apps.get().ok_or_else(|| {
                    TwinError::Act(ActError::Refused("rule apps are not available in this hub".to_owned()))
                })?;
                let call = CallRequest {
                    rule: request.rule.clone(),
                    plugin: None,
                    params: params.clone(),
                    bindings: request.context.bindings.clone(),
                    trigger: request.context.trigger.clone(),
                    now_us: Timestamp::now().as_micros(),
                };
                let result = runner.call(app.as_str(), call).await.map_err(TwinError::Act)?;
                let mut records = lock(&self.inner.records);
                let record = records.entry(request.rule.clone()).or_default();
                record.last_result =
                    Some(json!({"app": app.as_str(), "result": result, "at": Timestamp::now().to_string()}));
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Retries a SET, an ACT or a call whose first attempt failed transiently, `DEFAULT_RETRIES` more times with
    /// a doubling delay from 200 ms; a permanent failure ends the retries at once.
    async fn retry(&self, action: &Request, first: TwinError) -> Result<(), String> {
        let mut delay = Duration::from_millis(200);
        let mut last = first;
        for _ in 0..DEFAULT_RETRIES {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
            match self.apply(action).await {
                Ok(()) => return Ok(()),
                Err(e) if transient(&e) => last = e,
                Err(e) => return Err(e.to_string()),
            }
        }
        Err(format!("failed after {} attempts: {last}", DEFAULT_RETRIES + 1))
    }

    async fn notify(&self, url: &str, body: &Value, retries: u32) -> Result<(), String> {
        let mut delay = Duration::from_millis(200);
        let mut last = String::new();
        for attempt in 0..=retries {
            match self.inner.http.post(url).json(body).send().await {
                Ok(res) if res.status().is_success() => return Ok(()),
                Ok(res) => last = format!("{url} answered {}", res.status()),
                Err(e) => last = format!("{url}: {e}"),
            }
            if attempt < retries {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
        Err(format!("webhook failed after {} attempts: {last}", retries + 1))
    }
}

/// What a `call` tells the app about the firing besides its parameters.
#[derive(Debug, Clone, Default)]
struct FiringContext {
    bindings: std::collections::BTreeMap<String, String>,
    trigger: Option<CallTrigger>,
}

impl FiringContext {
    fn of(firing: &Firing) -> FiringContext {
        FiringContext {
            bindings: firing
                .bindings
                .iter()
                .map(|(k, v)| (k.trim_start_matches('$').to_owned(), v.to_string()))
                .collect(),
            trigger: match &firing.cause {
                Cause::Update { path, value } => Some(CallTrigger { path: path.to_string(), value: value.clone() }),
                _ => None,
            },
        }
    }
}

/// A SET, ACT or call to carry out (and maybe retry) for a rule.
struct Request {
    rule: String,
    context: FiringContext,
    action: Action,
}

/// Whether a SET or ACT failure may pass: the owner timed out or failed, none is registered yet (an adapter
/// restarting), or the store failed. A refusal, an invalid value or a missing resource will not pass by waiting.
fn transient(error: &TwinError) -> bool {
    matches!(
        error,
        TwinError::Act(ActError::Timeout | ActError::Failed(_)) | TwinError::NoOwner(_) | TwinError::Storage(_)
    )
}

/// The JSON of a diagnostics list, for problem documents.
pub fn diagnostics_json(diagnostics: &[Diagnostic]) -> Value {
    json!(diagnostics)
}
