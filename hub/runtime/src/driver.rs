//! One plugin's driver: a tokio task that owns the plugin's instance, batches its inbound messages, runs its
//! calls on blocking threads, applies their output, and restarts or quarantines it when calls fail.

use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use base64::Engine as _;
use hub_model::{Name, ProviderDoc, ResourcePath, Timestamp, Update};
use hub_plugin_sdk::abi::{
    ActRequest, ActResponse, CallRequest, InboundMessage, InitRequest, LogLevel, MessageBatch, Output, TickRequest,
    exports,
};
use hub_policy::{Action, Principal};
use hub_store::RecordWrite;
use hub_twin::{ActError, TwinError};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::{
    HostShared, PluginState, RuntimeError,
    capability::CompiledGrant,
    instance::{CallFailure, FailureKind, Instance, Module, SharedState, with_state},
    manifest::Manifest,
    stats::Counters,
};

/// The most log lines kept from one call, and the longest line.
const MAX_LOG_LINES: usize = 64;
const MAX_LOG_CHARS: usize = 1024;

/// One installed version: manifest, compiled module, grant, configuration.
#[derive(Clone)]
pub(crate) struct Loaded {
    pub manifest: Arc<Manifest>,
    pub module: Module,
    pub grant: Arc<CompiledGrant>,
    pub config: serde_json::Value,
}

/// What the admin side asks of a driver. Each carries its answer channel.
pub(crate) enum Control {
    Start(oneshot::Sender<Result<(), RuntimeError>>),
    Stop(oneshot::Sender<()>),
    /// Swap in a new version (or configuration). The old instance keeps running if the new one fails to start.
    Replace(Box<Loaded>, oneshot::Sender<Result<(), RuntimeError>>),
    Act(Invocation, oneshot::Sender<Result<serde_json::Value, ActError>>),
}

/// Whether a model document declares an action resource.
fn declares_actions(doc: &ProviderDoc) -> bool {
    doc.services.values().flat_map(|s| s.resources.values()).any(|r| r.kind == Some(hub_model::ResourceKind::Action))
}

/// A request that answers with an [`ActResponse`]: an ACT on a resource the plugin owns, or a rule's call of a
/// rule app.
pub(crate) enum Invocation {
    Act(ActRequest),
    Call(CallRequest),
}

/// What everyone may read about a plugin while its driver runs.
pub(crate) struct SlotShared {
    pub id: String,
    pub state: ArcSwap<PluginState>,
    pub counters: Counters,
    pub loaded: ArcSwap<Loaded>,
}

impl SlotShared {
    pub fn state(&self) -> PluginState {
        **self.state.load()
    }
}

pub(crate) struct Driver {
    pub shared: Arc<SlotShared>,
    pub host: Arc<HostShared>,
    pub messages: mpsc::Receiver<InboundMessage>,
    pub control: mpsc::Receiver<Control>,
    pub state: SharedState,
    pub cancel: CancellationToken,
    instance: Option<Instance>,
    failures: VecDeque<Instant>,
    next_restart: Option<tokio::time::Instant>,
    principal: Principal,
    /// The state changes of the last successful call, committed with that call's updates by `apply`.
    pending_state: BTreeMap<String, Option<Vec<u8>>>,
}

impl Driver {
    pub fn new(
        shared: Arc<SlotShared>,
        host: Arc<HostShared>,
        messages: mpsc::Receiver<InboundMessage>,
        control: mpsc::Receiver<Control>,
        state: SharedState,
        cancel: CancellationToken,
    ) -> Self {
        let principal = Principal::new(hub_policy::objects::plugin(&shared.id), Vec::new());
        Driver {
            shared,
            host,
            messages,
            control,
            state,
            cancel,
            instance: None,
            failures: VecDeque::new(),
            next_restart: None,
            principal,
            pending_state: BTreeMap::new(),
        }
    }

    fn id(&self) -> &str {
        &self.shared.id
    }

    fn set_state(&self, state: PluginState) {
        self.shared.state.store(Arc::new(state));
    }

    /// Runs until the plugin is removed or the host shuts down. The plugin starts when told ([`Control::Start`]).
    pub async fn run(mut self) {
        let mut tick = self.tick_interval();
        loop {
            let state = self.shared.state();
            let running = state == PluginState::Running;
            let restart_at = self.next_restart.filter(|_| state == PluginState::Failed);
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => break,
                control = self.control.recv() => match control {
                    Some(control) => {
                        self.handle_control(control).await;
                        tick = self.tick_interval();
                    }
                    None => break,
                },
                () = sleep_until_opt(restart_at), if restart_at.is_some() => {
                    self.next_restart = None;
                    Counters::add(&self.shared.counters.restarts, 1);
                    let _ = self.start().await;
                }
                _ = tick_opt(&mut tick), if running && tick.is_some() => self.tick().await,
                first = self.messages.recv(), if running => match first {
                    Some(first) => {
                        let batch = self.collect_batch(first).await;
                        self.process_batch(batch).await;
                    }
                    None => break,
                },
            }
        }
        self.instance = None;
    }

    fn tick_interval(&self) -> Option<tokio::time::Interval> {
        let ms = self.shared.loaded.load().manifest.tick_ms?;
        let period = Duration::from_millis(ms);
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Some(interval)
    }

    /// Collects up to `max_batch` messages, waiting at most `linger` after the first, and stops adding once the
    /// payloads reach `max_batch_bytes` (so a batch holds at most that plus one message's payload).
    async fn collect_batch(&mut self, first: InboundMessage) -> Vec<InboundMessage> {
        let max = self.host.config.max_batch.max(1);
        let max_bytes = self.host.config.max_batch_bytes;
        let mut bytes = first.payload.0.len();
        let mut batch = Vec::with_capacity(max.min(64));
        batch.push(first);
        let room = |batch: &Vec<InboundMessage>, bytes: usize| batch.len() < max && bytes < max_bytes;
        while room(&batch, bytes) {
            match self.messages.try_recv() {
                Ok(m) => {
                    bytes += m.payload.0.len();
                    batch.push(m);
                }
                Err(_) => break,
            }
        }
        if room(&batch, bytes) && !self.host.config.linger.is_zero() {
            let deadline = tokio::time::Instant::now() + self.host.config.linger;
            while room(&batch, bytes) {
                match tokio::time::timeout_at(deadline, self.messages.recv()).await {
                    Ok(Some(m)) => {
                        bytes += m.payload.0.len();
                        batch.push(m);
                    }
                    _ => break,
                }
            }
        }
        batch
    }

    async fn handle_control(&mut self, control: Control) {
        match control {
            Control::Start(reply) => {
                self.failures.clear();
                self.next_restart = None;
                let result = if self.instance.is_some() { Ok(()) } else { self.start().await };
                let _ = reply.send(result);
            }
            Control::Stop(reply) => {
                self.instance = None;
                self.next_restart = None;
                self.set_state(PluginState::Stopped);
                self.drop_queued();
                let _ = reply.send(());
            }
            Control::Replace(loaded, reply) => {
                let _ = reply.send(self.replace(*loaded).await);
            }
            Control::Act(request, reply) => {
                let _ = reply.send(self.act(request).await);
            }
        }
    }

    fn init_request(&self, loaded: &Loaded) -> InitRequest {
        InitRequest {
            plugin_id: self.shared.id.clone(),
            abi_version: loaded.manifest.abi,
            config: loaded.config.clone(),
            now_us: Timestamp::now().as_micros(),
        }
    }

    /// Creates an instance of the current version; on failure counts it and schedules a restart.
    async fn start(&mut self) -> Result<(), RuntimeError> {
        let loaded = self.shared.loaded.load_full();
        match self.instantiate(&loaded).await {
            Ok(instance) => {
                self.instance = Some(instance);
                self.set_state(PluginState::Running);
                Ok(())
            }
            Err(f) => {
                let err = self.trap_error(&f);
                self.record_failure(f);
                Err(err)
            }
        }
    }

    async fn instantiate(&mut self, loaded: &Loaded) -> Result<Instance, CallFailure> {
        let request = self.init_request(loaded);
        let module = loaded.module.clone();
        let state = self.state.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let result = module.start(&request);
            // Writes made by `init` are kept only if it succeeded, and then made durable like a call's.
            let changes = with_state(&state, |s| {
                if result.is_ok() {
                    s.commit()
                } else {
                    s.discard();
                    BTreeMap::new()
                }
            });
            (result, changes)
        })
        .await;
        match outcome {
            Ok((result, changes)) => {
                match changes {
                    Ok(changes) => self.persist_state(self.state_records(changes)).await,
                    Err(e) => tracing::error!(plugin = %self.shared.id, error = %e, "plugin state unavailable"),
                }
                result
            }
            Err(e) => Err(CallFailure { kind: FailureKind::Start, message: format!("start task failed: {e}") }),
        }
    }

    /// Swaps in a new version or configuration: starts the new instance first, and keeps the old one (and
    /// returns the error) if the new one does not start. Queued messages stay queued for the new instance.
    async fn replace(&mut self, loaded: Loaded) -> Result<(), RuntimeError> {
        let state = self.shared.state();
        if state == PluginState::Running || state == PluginState::Failed {
            let instance = self.instantiate(&loaded).await.map_err(|f| self.trap_error(&f))?;
            self.instance = Some(instance);
            self.set_state(PluginState::Running);
            self.failures.clear();
            self.next_restart = None;
        }
        self.shared.loaded.store(Arc::new(loaded));
        Ok(())
    }

    fn trap_error(&self, f: &CallFailure) -> RuntimeError {
        RuntimeError::PluginTrap { id: self.shared.id.clone(), kind: f.kind, message: f.message.clone() }
    }

    /// Counts a failure, drops the instance, and either schedules a restart with backoff or quarantines.
    fn record_failure(&mut self, f: CallFailure) {
        let counters = &self.shared.counters;
        Counters::add(&counters.errors, 1);
        counters.set_last_error(f.to_string());
        self.instance = None;
        let policy = &self.host.config.restart;
        let now = Instant::now();
        self.failures.push_back(now);
        while self.failures.front().is_some_and(|t| now.duration_since(*t) > policy.window) {
            self.failures.pop_front();
        }
        let recent = self.failures.len() as u32;
        if recent >= policy.max_failures {
            tracing::error!(plugin = %self.shared.id, failures = recent, error = %f, "plugin quarantined after repeated failures");
            self.next_restart = None;
            self.set_state(PluginState::Quarantined);
            self.drop_queued();
        } else {
            let backoff = policy.backoff(recent);
            tracing::warn!(plugin = %self.shared.id, error = %f, backoff_ms = backoff.as_millis() as u64, "plugin call failed; restarting");
            self.next_restart = Some(tokio::time::Instant::now() + backoff);
            self.set_state(PluginState::Failed);
        }
    }

    /// Drops (and counts) every queued message: they were sent to a plugin that no longer runs.
    fn drop_queued(&mut self) {
        let mut dropped = 0;
        while self.messages.try_recv().is_ok() {
            dropped += 1;
        }
        Counters::add(&self.shared.counters.dropped, dropped);
    }

    /// Runs one export on a blocking thread with the instance, under a host-side guard deadline in case the
    /// engine's own deadline ever fails. Commits the call's state writes on success, discards them on failure.
    async fn call<I, O>(&mut self, export: &'static str, input: I) -> Result<O, CallFailure>
    where
        I: Serialize + Send + 'static,
        O: DeserializeOwned + Send + 'static,
    {
        let Some(mut instance) = self.instance.take() else {
            return Err(CallFailure { kind: FailureKind::Start, message: "no instance".to_owned() });
        };
        let timeout = Duration::from_millis(self.shared.loaded.load().manifest.limits.timeout_ms);
        let cancel = instance.cancel_handle();
        let started = Instant::now();
        let task = tokio::task::spawn_blocking(move || {
            let result = instance.call::<I, O>(export, &input);
            (instance, result)
        });
        let guard = timeout.saturating_mul(2) + Duration::from_secs(1);
        let outcome = tokio::time::timeout(guard, task).await;
        let elapsed = started.elapsed();
        let counters = &self.shared.counters;
        Counters::add(&counters.calls, 1);
        counters.record_latency(elapsed.as_micros().min(u128::from(u64::MAX)) as u64);
        let result = match outcome {
            Ok(Ok((instance, result))) => {
                if result.is_ok() {
                    self.instance = Some(instance);
                }
                result
            }
            Ok(Err(join)) => Err(CallFailure { kind: FailureKind::Trap, message: format!("call task failed: {join}") }),
            Err(_) => {
                // The engine missed its deadline; cancel and abandon the instance (its thread ends when the
                // cancellation lands).
                let _ = cancel.cancel();
                Err(CallFailure { kind: FailureKind::Timeout, message: format!("no answer within {guard:?}") })
            }
        };
        let persisted = with_state(&self.state, |s| {
            if result.is_ok() {
                s.commit()
            } else {
                s.discard();
                BTreeMap::new()
            }
        });
        match persisted {
            // Made durable by `apply`, in the same transaction as the call's updates.
            Ok(changes) => self.pending_state = changes,
            Err(e) => tracing::error!(plugin = %self.shared.id, error = %e, "plugin state unavailable"),
        }
        result
    }

    /// Makes state changes durable on their own, all in one store transaction (those of `init`, and those of
    /// a call whose output carries no update to commit them with).
    async fn persist_state(&self, changes: Vec<RecordWrite>) {
        if changes.is_empty() {
            return;
        }
        let namespace = crate::state_namespace(self.id());
        let count = changes.len();
        let changes = changes.into_iter().map(|r| (r.key, r.body)).collect();
        if let Err(e) = self.host.twin.store().write_records(&namespace, changes).await {
            Counters::add(&self.shared.counters.errors, 1);
            tracing::error!(plugin = %self.shared.id, keys = count, error = %e, "persisting plugin state failed");
        }
    }

    /// State changes as store records of this plugin's state namespace (values in base64).
    fn state_records(&self, changes: BTreeMap<String, Option<Vec<u8>>>) -> Vec<RecordWrite> {
        let namespace = crate::state_namespace(self.id());
        changes
            .into_iter()
            .map(|(key, value)| RecordWrite {
                namespace: namespace.clone(),
                key,
                body: value.map(|bytes| base64::engine::general_purpose::STANDARD.encode(bytes)),
            })
            .collect()
    }

    async fn process_batch(&mut self, messages: Vec<InboundMessage>) {
        let count = messages.len() as u64;
        Counters::add(&self.shared.counters.messages_in, count);
        let fallback = messages.last().map(|m| m.received_us).unwrap_or_else(|| Timestamp::now().as_micros());
        let batch = MessageBatch { now_us: Timestamp::now().as_micros(), messages };
        match self.call::<MessageBatch, Output>(exports::ON_MESSAGES, batch).await {
            Ok(output) => {
                let state = std::mem::take(&mut self.pending_state);
                self.apply(output, fallback, state).await
            }
            Err(f) => self.record_failure(f),
        }
    }

    async fn tick(&mut self) {
        let now = Timestamp::now().as_micros();
        match self.call::<TickRequest, Output>(exports::ON_TICK, TickRequest { now_us: now }).await {
            Ok(output) => {
                let state = std::mem::take(&mut self.pending_state);
                self.apply(output, now, state).await
            }
            Err(f) => self.record_failure(f),
        }
    }

    async fn act(&mut self, request: Invocation) -> Result<serde_json::Value, ActError> {
        let state = self.shared.state();
        if state != PluginState::Running {
            return Err(ActError::Failed(format!("plugin {} is {state}", self.shared.id)));
        }
        let (now, response) = match request {
            Invocation::Act(r) => (r.now_us, self.call::<ActRequest, ActResponse>(exports::ON_ACT, r).await),
            Invocation::Call(r) => (r.now_us, self.call::<CallRequest, ActResponse>(exports::ON_CALL, r).await),
        };
        match response {
            Ok(ActResponse::Done { result, output }) => {
                let state = std::mem::take(&mut self.pending_state);
                self.apply(output, now, state).await;
                Ok(result)
            }
            Ok(ActResponse::Refused { reason, output }) => {
                let state = std::mem::take(&mut self.pending_state);
                self.apply(output, now, state).await;
                Err(ActError::Refused(reason))
            }
            Err(f) => {
                let message = f.to_string();
                let timeout = f.kind == FailureKind::Timeout;
                self.record_failure(f);
                Err(if timeout { ActError::Timeout } else { ActError::Failed(message) })
            }
        }
    }

    /// Makes this plugin the ACT owner of `provider`, whose actions it just declared: an exact name beats every
    /// granted glob, so when two adapters may both write `*`, ACT reaches the one that declared the action.
    /// Remembered in the store, so it holds across restarts.
    async fn claim_actions(&self, provider: &str) {
        let id = &self.shared.id;
        if self.host.declared.get(provider).is_some_and(|owner| owner.value() == id) {
            return;
        }
        if let Err(e) = self.host.twin.store().put_record(crate::ACT_OWNERS_NAMESPACE, provider, id).await {
            tracing::warn!(plugin = %id, provider, "the ACT owner is not remembered across restarts: {e}");
        }
        self.host.declared.insert(provider.to_owned(), id.clone());
        if let Some(handler) = self.host.act_handlers.get(id) {
            self.host.twin.act_registry().register(hub_model::Glob::new(provider), handler.value().clone());
        }
    }

    /// Applies one call's output: logs, model documents, updates, outbound messages, each checked against the
    /// grant and the policy. Refusals are counted and logged (once per call), never fatal.
    async fn apply(&self, output: Output, fallback_us: i64, state: BTreeMap<String, Option<Vec<u8>>>) {
        let counters = &self.shared.counters;
        let loaded = self.shared.loaded.load_full();
        let grant = &loaded.grant;
        let mut rejected: Vec<String> = Vec::new();

        self.write_logs(&output);

        for model in output.models {
            let doc = serde_json::from_value::<ProviderDoc>(model.model);
            match (Name::new(&model.provider), doc) {
                (Ok(name), Ok(doc)) if self.may_write(grant, name.as_str()) => {
                    let declares_actions = declares_actions(&doc);
                    match self.host.twin.put_provider(name.clone(), &doc).await {
                        Ok(_) if declares_actions => self.claim_actions(name.as_str()).await,
                        Ok(_) => {}
                        Err(e) => rejected.push(format!("model {}: {e}", model.provider)),
                    }
                }
                (Ok(_), Ok(_)) => rejected.push(format!("model {}: outside the granted providers", model.provider)),
                (Err(e), _) => rejected.push(format!("model {}: {e}", model.provider)),
                (_, Err(e)) => rejected.push(format!("model {}: {e}", model.provider)),
            }
        }

        let mut updates = Vec::with_capacity(output.updates.len());
        let mut allowed_paths: HashSet<ResourcePath> = HashSet::new();
        for u in output.updates {
            let path = match ResourcePath::parse_parts(&u.provider, &u.service, &u.resource) {
                Ok(path) => path,
                Err(e) => {
                    rejected.push(format!("update {}/{}/{}: {e}", u.provider, u.service, u.resource));
                    continue;
                }
            };
            if !allowed_paths.contains(&path) {
                if !grant.may_write(path.provider.as_str()) {
                    rejected.push(format!("update {path}: outside the granted providers"));
                    continue;
                }
                if !self.host.policy.check(&self.principal, &path.to_string(), Action::Write) {
                    rejected.push(format!("update {path}: denied by policy"));
                    continue;
                }
                allowed_paths.insert(path.clone());
            }
            let timestamp = Timestamp::from_micros(u.timestamp_us.unwrap_or(fallback_us));
            updates.push(Update { path, value: u.value, timestamp });
        }
        self.ingest(updates, self.state_records(state), &mut rejected).await;

        for message in output.outbound {
            if !grant.may_send(&message.transport, &message.address) {
                rejected.push(format!("send {} {}: outside the granted bindings", message.transport, message.address));
                continue;
            }
            let Some(transport) = self.host.transports.get(&message.transport) else {
                rejected.push(format!("send {} {}: no such transport is running", message.transport, message.address));
                continue;
            };
            let (t, a) = (message.transport.clone(), message.address.clone());
            match transport.send(&self.shared.id, message).await {
                Ok(()) => Counters::add(&counters.messages_out, 1),
                Err(e) => rejected.push(format!("send {t} {a}: {e}")),
            }
        }

        if let Some(first) = rejected.first() {
            Counters::add(&counters.rejects, rejected.len() as u64);
            counters.set_last_error(first.clone());
            tracing::warn!(plugin = %self.shared.id, rejected = rejected.len(), first = %first, "plugin output refused");
        }
    }

    fn may_write(&self, grant: &CompiledGrant, provider: &str) -> bool {
        grant.may_write(provider) && self.host.policy.check(&self.principal, provider, Action::Write)
    }

    /// Ingests the updates; an update the twin refuses (wrong type, wrong kind) is dropped and the rest retried,
    /// so one bad value does not cost the batch.
    /// Ingests the call's updates with its state changes in one commit. An invalid update is dropped (and the
    /// rest retried); when no update is left, or the ingest fails otherwise, the state is written on its own.
    async fn ingest(&self, mut updates: Vec<Update>, state: Vec<RecordWrite>, rejected: &mut Vec<String>) {
        while !updates.is_empty() {
            let n = updates.len() as u64;
            match self.host.twin.ingest_with_records(updates.clone(), state.clone()).await {
                Ok(_) => {
                    Counters::add(&self.shared.counters.updates, n);
                    return;
                }
                Err(TwinError::Invalid { index: Some(i), source }) if i < updates.len() => {
                    let bad = updates.remove(i);
                    rejected.push(format!("update {}: {source}", bad.path));
                }
                Err(e) => {
                    Counters::add(&self.shared.counters.errors, 1);
                    rejected.push(format!("{n} updates: {e}"));
                    break;
                }
            }
        }
        self.persist_state(state).await;
    }

    fn write_logs(&self, output: &Output) {
        let id = self.id();
        for line in output.logs.iter().take(MAX_LOG_LINES) {
            let text = truncate(&line.message, MAX_LOG_CHARS);
            match line.level {
                LogLevel::Trace => tracing::trace!(plugin = %id, "{text}"),
                LogLevel::Debug => tracing::debug!(plugin = %id, "{text}"),
                LogLevel::Info => tracing::info!(plugin = %id, "{text}"),
                LogLevel::Warn => tracing::warn!(plugin = %id, "{text}"),
                LogLevel::Error => tracing::error!(plugin = %id, "{text}"),
            }
        }
        if output.logs.len() > MAX_LOG_LINES {
            tracing::warn!(plugin = %id, dropped = output.logs.len() - MAX_LOG_LINES, "plugin log lines dropped");
        }
    }
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn tick_opt(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}
