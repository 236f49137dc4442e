//! One plugin's driver: a tokio task that owns the plugin's instance, batches its inbound messages, runs its
//! calls on blocking threads, hands their output to the plugin's [applier](crate::applier), and restarts or
//! quarantines the plugin when calls fail.
//!
//! The two stages form a pipeline: the driver calls the plugin with batch N+1 while the applier commits batch N.
//! At most [`HostConfig::pipeline_depth`](crate::HostConfig::pipeline_depth) outputs wait between them; when
//! that many wait, the driver stops taking messages and the plugin's queue (and behind it the transports) feels
//! the back-pressure.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use hub_model::Timestamp;
use hub_plugin_sdk::abi::{
    ActRequest, ActResponse, CallRequest, InboundMessage, InitRequest, MessageBatch, Output, TickRequest, exports,
};
use hub_policy::Principal;
use hub_twin::ActError;
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::{
    HostShared, PluginState, RuntimeError,
    applier::{ActReply, Applied, Applier, Stage, StateChanges},
    capability::CompiledGrant,
    instance::{CallFailure, FailureKind, Instance, Module, SharedState, with_state},
    manifest::Manifest,
    stats::Counters,
};

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
    /// The second stage of the pipeline: it applies call outputs in order while this driver calls on.
    to_applier: mpsc::Sender<Stage>,
    applier: Option<(Applier, mpsc::Receiver<Stage>)>,
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
        let depth = host.config.pipeline_depth.max(1);
        let (to_applier, stages) = mpsc::channel(depth);
        let applier =
            Applier { shared: shared.clone(), host: host.clone(), principal, max_group: depth.saturating_add(1) };
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
            to_applier,
            applier: Some((applier, stages)),
        }
    }

    fn set_state(&self, state: PluginState) {
        self.shared.state.store(Arc::new(state));
    }

    /// Runs until the plugin is removed or the host shuts down. The plugin starts when told ([`Control::Start`]).
    pub async fn run(mut self) {
        let applier = self.applier.take().map(|(applier, stages)| tokio::spawn(applier.run(stages)));
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
        // Outputs already produced are applied, not lost: a stopping hub still commits them.
        self.flush().await;
        drop(self);
        if let Some(applier) = applier
            && let Err(e) = applier.await
        {
            tracing::error!(error = %e, "plugin applier failed");
        }
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
                self.flush().await;
                let _ = reply.send(());
            }
            Control::Replace(loaded, reply) => {
                let result = self.replace(*loaded).await;
                // The old version's outputs are applied (under the grant they ran with) before the answer.
                self.flush().await;
                let _ = reply.send(result);
            }
            Control::Act(request, reply) => self.act(request, reply).await,
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
                    StateChanges::new()
                }
            });
            (result, changes)
        })
        .await;
        match outcome {
            Ok((result, changes)) => {
                match changes {
                    Ok(changes) if !changes.is_empty() => {
                        self.submit(Applied::state_only(changes, loaded.grant.clone())).await
                    }
                    Ok(_) => {}
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
    /// engine's own deadline ever fails. Commits the call's state writes in memory on success (and returns them,
    /// for the store), discards them on failure.
    async fn call<I, O>(&mut self, export: &'static str, input: I) -> Result<(O, StateChanges), CallFailure>
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
        let changes = with_state(&self.state, |s| {
            if result.is_ok() {
                s.commit()
            } else {
                s.discard();
                StateChanges::new()
            }
        });
        let changes = changes.unwrap_or_else(|e| {
            tracing::error!(plugin = %self.shared.id, error = %e, "plugin state unavailable");
            StateChanges::new()
        });
        result.map(|output| (output, changes))
    }

    /// Hands a successful call's effects to the applier; waits while `pipeline_depth` outputs already wait
    /// there, which stops this driver taking messages, so a slow store back-pressures the queue.
    async fn submit(&self, applied: Applied) {
        if self.to_applier.send(Stage::Apply(Box::new(applied))).await.is_err() {
            // The applier lives as long as this driver; it only ends if it panicked.
            Counters::add(&self.shared.counters.errors, 1);
            tracing::error!(plugin = %self.shared.id, "plugin applier is gone; a call's output was lost");
        }
    }

    /// Waits until every output handed to the applier so far is applied.
    async fn flush(&self) {
        let (done, applied) = oneshot::channel();
        if self.to_applier.send(Stage::Flush(done)).await.is_ok() {
            let _ = applied.await;
        }
    }

    fn applied(&self, output: Output, fallback_us: i64, state: StateChanges, reply: Option<ActReply>) -> Applied {
        Applied { output, fallback_us, state, grant: self.shared.loaded.load().grant.clone(), reply }
    }

    async fn process_batch(&mut self, messages: Vec<InboundMessage>) {
        let count = messages.len() as u64;
        Counters::add(&self.shared.counters.messages_in, count);
        let fallback = messages.last().map(|m| m.received_us).unwrap_or_else(|| Timestamp::now().as_micros());
        let batch = MessageBatch { now_us: Timestamp::now().as_micros(), messages };
        match self.call::<MessageBatch, Output>(exports::ON_MESSAGES, batch).await {
            Ok((output, state)) => self.submit(self.applied(output, fallback, state, None)).await,
            Err(f) => self.record_failure(f),
        }
    }

    async fn tick(&mut self) {
        let now = Timestamp::now().as_micros();
        match self.call::<TickRequest, Output>(exports::ON_TICK, TickRequest { now_us: now }).await {
            Ok((output, state)) => self.submit(self.applied(output, now, state, None)).await,
            Err(f) => self.record_failure(f),
        }
    }

    /// Calls the plugin with an ACT (or a rule app's call); the answer goes back once its output is applied.
    async fn act(&mut self, request: Invocation, reply: oneshot::Sender<Result<serde_json::Value, ActError>>) {
        let state = self.shared.state();
        if state != PluginState::Running {
            let _ = reply.send(Err(ActError::Failed(format!("plugin {} is {state}", self.shared.id))));
            return;
        }
        let (now, response) = match request {
            Invocation::Act(r) => (r.now_us, self.call::<ActRequest, ActResponse>(exports::ON_ACT, r).await),
            Invocation::Call(r) => (r.now_us, self.call::<CallRequest, ActResponse>(exports::ON_CALL, r).await),
        };
        let (output, state, result) = match response {
            Ok((ActResponse::Done { result, output }, state)) => (output, state, Ok(result)),
            Ok((ActResponse::Refused { reason, output }, state)) => (output, state, Err(ActError::Refused(reason))),
            Err(f) => {
                let message = f.to_string();
                let timeout = f.kind == FailureKind::Timeout;
                self.record_failure(f);
                let _ = reply.send(Err(if timeout { ActError::Timeout } else { ActError::Failed(message) }));
                return;
            }
        };
        self.submit(self.applied(output, now, state, Some(ActReply { reply, result }))).await;
    }
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
