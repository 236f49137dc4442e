//! One plugin's applier: the second stage of its pipeline. The driver calls the plugin and hands each successful
//! call's output here; the applier checks it against the grant and the policy and makes it durable and visible,
//! in call order, while the driver already calls the plugin with the next batch.
//!
//! Outputs that queue up while a commit runs are applied together: their updates and state changes go to the
//! store in one transaction, so a slow commit makes the next one larger instead of making the queue longer. A
//! group is a run of consecutive calls, so what is stored is always the effect of a prefix of the calls: a
//! plugin's state never runs ahead of (or behind) the updates the same calls produced.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
};

use base64::Engine as _;
use hub_model::{Name, ProviderDoc, ResourcePath, Timestamp, Update};
use hub_plugin_sdk::abi::{AppCall, CallRequest, LogLevel, Output, ResourceUpdate};
use hub_policy::{Action, Principal};
use hub_store::RecordWrite;
use hub_twin::{ActError, TwinError};
use tokio::sync::{mpsc, oneshot};

use crate::{HostShared, capability::CompiledGrant, driver::SlotShared, stats::Counters};

/// The most log lines kept from one call, and the longest line.
const MAX_LOG_LINES: usize = 64;
const MAX_LOG_CHARS: usize = 1024;

/// A plugin's state changes from one call (or `init`): key → new value, `None` for a deletion.
pub(crate) type StateChanges = BTreeMap<String, Option<Vec<u8>>>;

/// The answer to an ACT (or a rule app's call), sent once the call's output is applied.
pub(crate) struct ActReply {
    pub reply: oneshot::Sender<Result<serde_json::Value, ActError>>,
    pub result: Result<serde_json::Value, ActError>,
}

/// One successful call's effects.
pub(crate) struct Applied {
    pub output: Output,
    /// The timestamp of updates that carry none.
    pub fallback_us: i64,
    pub state: StateChanges,
    /// The grant the call ran under (an upgrade may change it while the output waits).
    pub grant: Arc<CompiledGrant>,
    pub reply: Option<ActReply>,
}

impl Applied {
    /// State changes with no output (those of `init`).
    pub fn state_only(state: StateChanges, grant: Arc<CompiledGrant>) -> Applied {
        Applied { output: Output::default(), fallback_us: 0, state, grant, reply: None }
    }
}

/// What the driver sends its applier.
pub(crate) enum Stage {
    Apply(Box<Applied>),
    /// Answered once everything sent before it is applied.
    Flush(oneshot::Sender<()>),
}

pub(crate) struct Applier {
    pub shared: Arc<SlotShared>,
    pub host: Arc<HostShared>,
    pub principal: Principal,
    /// The most calls applied in one group (one store commit).
    pub max_group: usize,
}

impl Applier {
    /// Applies what arrives until the driver drops its sender.
    pub async fn run(self, mut stages: mpsc::Receiver<Stage>) {
        let mut next: Option<Stage> = None;
        loop {
            let first = match next.take() {
                Some(stage) => stage,
                None => match stages.recv().await {
                    Some(stage) => stage,
                    None => break,
                },
            };
            match first {
                Stage::Flush(done) => {
                    let _ = done.send(());
                }
                Stage::Apply(first) => {
                    // Model documents are applied before the updates of their own call; a later call's
                    // documents would jump ahead of earlier updates, so they start a new group.
                    let mut group = vec![*first];
                    while group.len() < self.max_group.max(1) {
                        match stages.try_recv() {
                            Ok(Stage::Apply(applied)) if applied.output.models.is_empty() => group.push(*applied),
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.apply(group).await;
                }
            }
        }
    }

    /// Applies a run of consecutive calls: logs, the first call's model documents, every call's updates and
    /// state changes in one commit, then every call's outbound messages in call order, each checked against
    /// its grant and the policy. Refusals are counted and logged (once per group), never fatal.
    async fn apply(&self, group: Vec<Applied>) {
        let counters = &self.shared.counters;
        let mut rejected: Vec<String> = Vec::new();
        let mut updates = Vec::new();
        let mut state = StateChanges::new();
        let mut sends = Vec::new();
        let mut calls = Vec::new();
        let mut replies = Vec::new();
        for applied in group {
            let Applied { mut output, fallback_us, state: changes, grant, reply } = applied;
            if !output.calls.is_empty() {
                calls.push((grant.clone(), fallback_us, std::mem::take(&mut output.calls)));
            }
            self.write_logs(&output);
            self.apply_models(&grant, output.models, &mut rejected).await;
            self.check_updates(&grant, output.updates, fallback_us, &mut updates, &mut rejected);
            // Later calls overwrite earlier ones: the store gets each key's value after the last call.
            state.extend(changes);
            if !output.outbound.is_empty() {
                sends.push((grant, output.outbound));
            }
            replies.extend(reply);
        }
        self.ingest(updates, self.state_records(state), &mut rejected).await;

        for (grant, outbound) in sends {
            for message in outbound {
                if !grant.may_send(&message.transport, &message.address) {
                    rejected
                        .push(format!("send {} {}: outside the granted bindings", message.transport, message.address));
                    continue;
                }
                let Some(transport) = self.host.transports.get(&message.transport) else {
                    rejected
                        .push(format!("send {} {}: no such transport is running", message.transport, message.address));
                    continue;
                };
                let (t, a) = (message.transport.clone(), message.address.clone());
                match transport.send(&self.shared.id, message).await {
                    Ok(()) => Counters::add(&counters.messages_out, 1),
                    Err(e) => rejected.push(format!("send {t} {a}: {e}")),
                }
            }
        }

        for (grant, fallback_us, list) in calls {
            for call in list {
                self.call_app(&grant, fallback_us, call, &mut rejected).await;
            }
        }

        if let Some(first) = rejected.first() {
            Counters::add(&counters.rejects, rejected.len() as u64);
            counters.set_last_error(first.clone());
            tracing::warn!(plugin = %self.shared.id, rejected = rejected.len(), first = %first, "plugin output refused");
        }
        for ActReply { reply, result } in replies {
            let _ = reply.send(result);
        }
    }

    async fn apply_models(
        &self,
        grant: &CompiledGrant,
        models: Vec<hub_plugin_sdk::abi::ProviderModel>,
        rejected: &mut Vec<String>,
    ) {
        for model in models {
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
    }

    /// Turns a call's updates into twin updates, keeping those inside the grant and allowed by the policy.
    fn check_updates(
        &self,
        grant: &CompiledGrant,
        list: Vec<hub_plugin_sdk::abi::ResourceUpdate>,
        fallback_us: i64,
        updates: &mut Vec<Update>,
        rejected: &mut Vec<String>,
    ) {
        let mut allowed_paths: HashSet<ResourcePath> = HashSet::new();
        updates.reserve(list.len());
        for u in list {
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
    }

    /// Calls an app on this plugin's behalf and writes the object it returns as resources of the call's
    /// provider and service (see [`AppCall`]), checked like the plugin's own updates.
    async fn call_app(&self, grant: &CompiledGrant, fallback_us: i64, call: AppCall, rejected: &mut Vec<String>) {
        let AppCall { app, params, provider, service, timestamp_us } = call;
        // Only adapters ask for calls: an app calling apps could wait on itself.
        if self.shared.loaded.load().manifest.kind == crate::PluginKind::App {
            rejected.push(format!("call {app}: an app cannot call apps"));
            return;
        }
        if !self.host.policy.check(&self.principal, &hub_policy::objects::plugin(&app), Action::Act) {
            rejected.push(format!("call {app}: denied by policy (needs act on plugin:{app})"));
            return;
        }
        let Some(host) = crate::host::PluginHost::from_weak(&self.host.host) else {
            return;
        };
        let request = CallRequest {
            rule: String::new(),
            plugin: Some(self.shared.id.clone()),
            params,
            bindings: Default::default(),
            trigger: None,
            now_us: Timestamp::now().as_micros(),
        };
        let values = match host.call_app(&app, request).await {
            Ok(serde_json::Value::Object(values)) => values,
            Ok(other) => {
                rejected.push(format!("call {app}: the result is not an object of resource values: {other}"));
                return;
            }
            Err(e) => {
                rejected.push(format!("call {app} for {provider}: {e}"));
                return;
            }
        };
        let list = values
            .into_iter()
            .map(|(resource, value)| ResourceUpdate {
                provider: provider.clone(),
                service: service.clone(),
                resource,
                value,
                timestamp_us,
            })
            .collect();
        let mut updates = Vec::new();
        self.check_updates(grant, list, fallback_us, &mut updates, rejected);
        self.ingest(updates, Vec::new(), rejected).await;
    }

    fn may_write(&self, grant: &CompiledGrant, provider: &str) -> bool {
        grant.may_write(provider) && self.host.policy.check(&self.principal, provider, Action::Write)
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

    /// Ingests the updates with the state changes in one commit. An invalid update is dropped (and the rest
    /// retried), so one bad value does not cost the others; when no update is left, or the ingest fails
    /// otherwise, the state is written on its own.
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

    /// Makes state changes durable on their own, all in one store transaction.
    async fn persist_state(&self, changes: Vec<RecordWrite>) {
        if changes.is_empty() {
            return;
        }
        let namespace = crate::state_namespace(&self.shared.id);
        let count = changes.len();
        let changes = changes.into_iter().map(|r| (r.key, r.body)).collect();
        if let Err(e) = self.host.twin.store().write_records(&namespace, changes).await {
            Counters::add(&self.shared.counters.errors, 1);
            tracing::error!(plugin = %self.shared.id, keys = count, error = %e, "persisting plugin state failed");
        }
    }

    /// State changes as store records of this plugin's state namespace (values in base64).
    fn state_records(&self, changes: StateChanges) -> Vec<RecordWrite> {
        let namespace = crate::state_namespace(&self.shared.id);
        changes
            .into_iter()
            .map(|(key, value)| RecordWrite {
                namespace: namespace.clone(),
                key,
                body: value.map(|bytes| base64::engine::general_purpose::STANDARD.encode(bytes)),
            })
            .collect()
    }

    fn write_logs(&self, output: &Output) {
        let id = &self.shared.id;
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

/// Whether a model document declares an action resource.
fn declares_actions(doc: &ProviderDoc) -> bool {
    doc.services.values().flat_map(|s| s.resources.values()).any(|r| r.kind == Some(hub_model::ResourceKind::Action))
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
