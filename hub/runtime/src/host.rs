//! The plugin host: the registry of installed plugins and their lifecycle, message delivery, and ACT routing.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, Weak},
};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use base64::Engine as _;
use hub_model::{ResourcePath, Timestamp};
use hub_plugin_sdk::abi::{ActRequest, CallRequest, InboundMessage};
use hub_twin::{ActError, ActHandler};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    Capabilities, HostConfig, HostShared, PluginInfo, PluginKind, PluginState, RuntimeError, Subscription, Transports,
    capability::CompiledGrant,
    driver::{Control, Driver, Invocation, Loaded, SlotShared},
    instance::{Module, SharedState, StateCell},
    manifest::Manifest,
    stats::Counters,
};

/// File names inside `<data-dir>/plugins/<id>/`.
const MANIFEST_FILE: &str = "plugin.toml";
const WASM_FILE: &str = "plugin.wasm";
const INSTALL_FILE: &str = "install.json";

/// Control messages queued per plugin; admin calls wait for room.
const CONTROL_CAPACITY: usize = 64;

/// What the admin decided at install: the grant, a configuration override, and whether it should run.
/// Kept in `install.json` next to the manifest and module.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstallRecord {
    #[serde(default)]
    grant: Capabilities,
    #[serde(default)]
    config: Option<Value>,
    #[serde(default = "yes")]
    enabled: bool,
}

fn yes() -> bool {
    true
}

/// What [`PluginHost::dispatch`] did with one message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DispatchOutcome {
    /// Plugins that got the message.
    pub delivered: usize,
    /// Plugins whose queue stayed full (the message was dropped for them and counted).
    pub dropped: usize,
}

struct Slot {
    shared: Arc<SlotShared>,
    messages: mpsc::Sender<InboundMessage>,
    control: mpsc::Sender<Control>,
    state: SharedState,
    cancel: CancellationToken,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    config_override: Mutex<Option<Value>>,
    /// The ACT handler registered for this plugin's provider globs, to unregister it.
    act_owner: Mutex<Option<Arc<dyn ActHandler>>>,
}

pub(crate) struct Inner {
    shared: Arc<HostShared>,
    slots: ArcSwap<HashMap<String, Arc<Slot>>>,
    // Serialises lifecycle operations (install, upgrade, remove, ...); message delivery never takes it.
    admin: tokio::sync::Mutex<()>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

/// Owns every installed plugin. Cheap to clone (a handle).
#[derive(Clone)]
pub struct PluginHost {
    inner: Arc<Inner>,
}

impl PluginHost {
    /// A host with no plugins yet. Call [`PluginHost::load_installed`] to start the ones in the data directory.
    /// Must be called inside a tokio runtime (drivers are tokio tasks).
    pub fn new(
        config: HostConfig,
        twin: Arc<hub_twin::Twin>,
        policy: Arc<hub_policy::PolicyEngine>,
        transports: Arc<Transports>,
    ) -> PluginHost {
        PluginHost {
            inner: Arc::new_cyclic(|host| Inner {
                shared: Arc::new(HostShared {
                    config,
                    twin,
                    policy,
                    transports,
                    declared: Default::default(),
                    act_handlers: Default::default(),
                    host: host.clone(),
                }),
                slots: ArcSwap::from_pointee(HashMap::new()),
                admin: tokio::sync::Mutex::new(()),
                cancel: CancellationToken::new(),
                tracker: TaskTracker::new(),
            }),
        }
    }

    /// The host a plugin's applier belongs to, while it exists.
    pub(crate) fn from_weak(inner: &std::sync::Weak<Inner>) -> Option<PluginHost> {
        inner.upgrade().map(|inner| PluginHost { inner })
    }

    /// The settings.
    pub fn config(&self) -> &HostConfig {
        &self.inner.shared.config
    }

    /// The transports outbound messages go to.
    pub fn transports(&self) -> &Arc<Transports> {
        &self.inner.shared.transports
    }

    /// Loads every plugin in `<data-dir>/plugins/` and starts those that were enabled. Returns each plugin
    /// directory's id and whether it loaded; one bad plugin does not stop the others.
    pub async fn load_installed(&self) -> Vec<(String, Result<PluginInfo, RuntimeError>)> {
        let _admin = self.inner.admin.lock().await;
        match self.inner.shared.twin.store().records(crate::ACT_OWNERS_NAMESPACE).await {
            Ok(owners) => owners.into_iter().for_each(|(provider, id)| {
                self.inner.shared.declared.insert(provider, id);
            }),
            Err(e) => tracing::error!("the declared ACT owners are unreadable; ACT falls back to grants: {e}"),
        }
        let dir = self.config().plugins_dir();
        let mut ids = Vec::new();
        match tokio::fs::read_dir(&dir).await {
            Ok(mut entries) => loop {
                match entries.next_entry().await {
                    Ok(Some(entry)) => {
                        if entry.file_type().await.is_ok_and(|t| t.is_dir())
                            && let Some(name) = entry.file_name().to_str()
                            && !name.starts_with('.')
                        {
                            ids.push(name.to_owned());
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(dir = %dir.display(), error = %e, "reading the plugin directory failed");
                        break;
                    }
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!(dir = %dir.display(), error = %e, "reading the plugin directory failed"),
        }
        ids.sort();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let result = self.load_one(&id).await;
            if let Err(e) = &result {
                tracing::error!(plugin = %id, error = %e, "plugin not loaded");
            }
            out.push((id, result));
        }
        out
    }

    async fn load_one(&self, id: &str) -> Result<PluginInfo, RuntimeError> {
        if self.inner.slots.load().contains_key(id) {
            return Err(RuntimeError::AlreadyExists(id.to_owned()));
        }
        let dir = self.plugin_dir(id)?;
        let manifest_text = read_file(&dir.join(MANIFEST_FILE)).await?;
        let manifest_text = String::from_utf8(manifest_text)
            .map_err(|_| RuntimeError::InvalidInput(format!("{MANIFEST_FILE}: not UTF-8")))?;
        let wasm = read_file(&dir.join(WASM_FILE)).await?;
        let record = match tokio::fs::read(dir.join(INSTALL_FILE)).await {
            Ok(bytes) => serde_json::from_slice::<InstallRecord>(&bytes)
                .map_err(|e| RuntimeError::InvalidInput(format!("{INSTALL_FILE}: {e}")))?,
            // A plugin copied in by hand: it runs, but nothing is granted until an admin grants it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => InstallRecord { enabled: true, ..Default::default() },
            Err(e) => return Err(RuntimeError::Io(format!("{}: {e}", dir.join(INSTALL_FILE).display()))),
        };
        let state = self.load_state(id).await?;
        let (loaded, _) = self.prepare(&manifest_text, wasm, record.grant, record.config.clone(), &state).await?;
        if loaded.manifest.id != id {
            return Err(RuntimeError::InvalidInput(format!(
                "id: the manifest says {:?} but the directory is {id:?}",
                loaded.manifest.id
            )));
        }
        self.spawn(loaded, record.config, state, record.enabled).await
    }

    /// Installs a plugin: validates the manifest (and that this hub is in its `hub` range), checks the module
    /// against the manifest's `sha256`, checks that `grant` only contains what the manifest requested, compiles
    /// the module, saves it under `<data-dir>/plugins/<id>/`, and starts it. `config` replaces the manifest's
    /// default configuration. A plugin whose `init` fails is installed in state `failed` and retried.
    pub async fn install(
        &self,
        manifest: &str,
        wasm: Vec<u8>,
        grant: Capabilities,
        config: Option<Value>,
    ) -> Result<PluginInfo, RuntimeError> {
        let _admin = self.inner.admin.lock().await;
        let parsed = Manifest::parse(manifest)?;
        if self.inner.slots.load().contains_key(&parsed.id) {
            return Err(RuntimeError::AlreadyExists(parsed.id));
        }
        let state = self.load_state(&parsed.id).await?;
        let (loaded, wasm) = self.prepare(manifest, wasm, grant.clone(), config.clone(), &state).await?;
        let id = loaded.manifest.id.clone();
        let record = InstallRecord { grant, config: config.clone(), enabled: true };
        self.write_files(&id, Some((manifest, &wasm)), &record).await?;
        self.spawn(loaded, config, state, true).await
    }

    /// Replaces a plugin's grant (it must stay within what its manifest requests). The running version takes the
    /// new grant the way an upgrade would: queued messages are kept, state is kept, ACT ownership follows the new
    /// provider globs.
    pub async fn set_grant(&self, id: &str, grant: Capabilities) -> Result<PluginInfo, RuntimeError> {
        let dir = self.plugin_dir(id)?;
        self.slot(id)?;
        let manifest = String::from_utf8(read_file(&dir.join(MANIFEST_FILE)).await?)
            .map_err(|_| RuntimeError::InvalidInput(format!("{MANIFEST_FILE}: not UTF-8")))?;
        let wasm = read_file(&dir.join(WASM_FILE)).await?;
        self.upgrade(id, &manifest, wasm, Some(grant)).await
    }

    /// Upgrades (or downgrades, or reinstalls) a plugin in place. The new version is compiled and started
    /// before it replaces the old one; if it does not start, the old one keeps running and the error is
    /// returned. Queued messages are handed to the new version, so none are lost. State is kept. `grant`
    /// `None` keeps the current grant (it must still be a subset of what the new manifest requests).
    pub async fn upgrade(
        &self,
        id: &str,
        manifest: &str,
        wasm: Vec<u8>,
        grant: Option<Capabilities>,
    ) -> Result<PluginInfo, RuntimeError> {
        let _admin = self.inner.admin.lock().await;
        let slot = self.slot(id)?;
        let grant = grant.unwrap_or_else(|| slot.shared.loaded.load().grant.capabilities().clone());
        let config = slot.config_override.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let (loaded, wasm) = self.prepare(manifest, wasm, grant.clone(), config.clone(), &slot.state).await?;
        if loaded.manifest.id != id {
            return Err(RuntimeError::InvalidInput(format!(
                "id: the new manifest is for {:?}, not {id:?}",
                loaded.manifest.id
            )));
        }
        let new_grant = loaded.grant.clone();
        self.control(&slot, |reply| Control::Replace(Box::new(loaded), reply)).await??;
        let enabled = slot.shared.state() != PluginState::Stopped;
        self.write_files(id, Some((manifest, &wasm)), &InstallRecord { grant, config, enabled }).await?;
        self.register_act(&slot, &new_grant);
        Ok(info(&slot))
    }

    /// Replaces the plugin's configuration (`None` returns to the manifest's defaults) and restarts its
    /// instance with it; if the new instance does not start, the old one keeps running and the error is
    /// returned. Secret fields sent back as `<redacted>` keep their current value (see [`crate::secrets`]).
    pub async fn set_config(&self, id: &str, mut config: Option<Value>) -> Result<PluginInfo, RuntimeError> {
        let _admin = self.inner.admin.lock().await;
        let slot = self.slot(id)?;
        if let Some(c) = &config
            && !c.is_object()
        {
            return Err(RuntimeError::InvalidInput("config: must be a JSON object".to_owned()));
        }
        let current = slot.shared.loaded.load_full();
        if let Some(c) = &mut config {
            crate::secrets::restore(c, &current.config);
        }
        let mut loaded = Loaded::clone(&current);
        loaded.config = config.clone().unwrap_or_else(|| loaded.manifest.default_config());
        self.control(&slot, |reply| Control::Replace(Box::new(loaded), reply)).await??;
        *slot.config_override.lock().unwrap_or_else(PoisonError::into_inner) = config.clone();
        let enabled = slot.shared.state() != PluginState::Stopped;
        let record = InstallRecord { grant: current.grant.capabilities().clone(), config, enabled };
        self.write_files(id, None, &record).await?;
        Ok(info(&slot))
    }

    /// Starts a stopped, failed or quarantined plugin (clearing its failure history).
    pub async fn start(&self, id: &str) -> Result<PluginInfo, RuntimeError> {
        let _admin = self.inner.admin.lock().await;
        let slot = self.slot(id)?;
        self.control(&slot, Control::Start).await??;
        self.save_enabled(&slot, true).await?;
        Ok(info(&slot))
    }

    /// Stops a plugin: its instance is dropped and messages still queued for it are dropped (and counted).
    pub async fn stop(&self, id: &str) -> Result<PluginInfo, RuntimeError> {
        let _admin = self.inner.admin.lock().await;
        let slot = self.slot(id)?;
        self.control(&slot, Control::Stop).await?;
        self.save_enabled(&slot, false).await?;
        Ok(info(&slot))
    }

    /// Removes a plugin: stops it, unregisters its ACT ownership, deletes its files and its state.
    pub async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let _admin = self.inner.admin.lock().await;
        let slot = self.slot(id)?;
        self.inner.slots.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.remove(id);
            next
        });
        self.unregister_act(&slot);
        slot.cancel.cancel();
        let task = slot.task.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(self.config().control_timeout, task).await;
        }
        let dir = self.plugin_dir(id)?;
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(RuntimeError::Io(format!("{}: {e}", dir.display())));
        }
        let store = self.inner.shared.twin.store();
        let namespace = crate::state_namespace(id);
        for (key, _) in store.records(&namespace).await? {
            store.delete_record(&namespace, &key).await?;
        }
        Ok(())
    }

    /// Every installed plugin, by id.
    pub fn list(&self) -> Vec<PluginInfo> {
        let slots = self.inner.slots.load();
        let mut out: Vec<PluginInfo> = slots.values().map(|s| info(s)).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// One plugin.
    pub fn get(&self, id: &str) -> Option<PluginInfo> {
        self.inner.slots.load().get(id).map(|s| info(s))
    }

    /// The plugin's committed key-value state (for diagnostics and tests).
    pub fn state_entries(&self, id: &str) -> Result<BTreeMap<String, Vec<u8>>, RuntimeError> {
        let slot = self.slot(id)?;
        crate::instance::with_state(&slot.state, |s| s.entries().clone()).map_err(RuntimeError::Io)
    }

    /// Every inbound binding of every installed plugin, for the transports to subscribe to.
    pub fn subscriptions(&self) -> Vec<(String, Subscription)> {
        let slots = self.inner.slots.load();
        let mut out: Vec<(String, Subscription)> = slots
            .iter()
            .flat_map(|(id, s)| {
                s.shared.loaded.load().grant.capabilities().subscriptions().into_iter().map(|sub| (id.clone(), sub))
            })
            .collect();
        out.sort_by(|a, b| (&a.0, a.1.transport, &a.1.pattern).cmp(&(&b.0, b.1.transport, &b.1.pattern)));
        out
    }

    /// Hands one message to one plugin, waiting for room in its queue (back-pressure). Refused when the plugin
    /// is stopped or quarantined, or when the message is not one its grant subscribes to.
    pub async fn deliver(&self, id: &str, message: InboundMessage) -> Result<(), RuntimeError> {
        let slot = self.slot(id)?;
        accepting(&slot)?;
        if !slot.shared.loaded.load().grant.receives(&message.transport, &message.address) {
            Counters::add(&slot.shared.counters.rejects, 1);
            return Err(RuntimeError::InvalidInput(format!(
                "plugin {id:?} is not granted {} {}",
                message.transport, message.address
            )));
        }
        slot.messages.send(message).await.map_err(|_| RuntimeError::Closed)
    }

    /// Hands one message to every running plugin whose grant subscribes to it. Waits at most
    /// [`HostConfig::dispatch_timeout`] for room in each queue; a plugin whose queue stays full loses the
    /// message (counted in its `dropped`), so one slow plugin cannot stall a transport.
    pub async fn dispatch(&self, message: InboundMessage) -> DispatchOutcome {
        let slots = self.inner.slots.load_full();
        let mut targets: Vec<&Arc<Slot>> = slots
            .values()
            .filter(|s| accepting(s).is_ok())
            .filter(|s| s.shared.loaded.load().grant.receives(&message.transport, &message.address))
            .collect();
        let mut outcome = DispatchOutcome::default();
        let Some(last) = targets.pop() else {
            return outcome;
        };
        for slot in targets {
            send_bounded(slot, message.clone(), self.config().dispatch_timeout, &mut outcome).await;
        }
        send_bounded(last, message, self.config().dispatch_timeout, &mut outcome).await;
        outcome
    }

    /// Carries out an ACT through plugin `id` (what the twin's ACT registry calls).
    pub async fn act(
        &self,
        id: &str,
        path: &ResourcePath,
        params: serde_json::Map<String, Value>,
    ) -> Result<Value, ActError> {
        let slot = self.slot(id).map_err(|e| ActError::Failed(e.to_string()))?;
        let request = ActRequest {
            provider: path.provider.to_string(),
            service: path.service.to_string(),
            resource: path.resource.to_string(),
            params,
            now_us: Timestamp::now().as_micros(),
        };
        let (tx, rx) = oneshot::channel();
        let exchange = async {
            slot.control
                .send(Control::Act(Invocation::Act(request), tx))
                .await
                .map_err(|_| ActError::Failed("plugin removed".into()))?;
            rx.await.map_err(|_| ActError::Failed("plugin removed".into()))?
        };
        tokio::time::timeout(self.config().act_timeout, exchange).await.map_err(|_| ActError::Timeout)?
    }

    /// Runs a rule's `call` of the rule app `id` (a plugin of kind `app`): its result, or why not. No such
    /// plugin, or one that is not an app, is `Refused`; a stopped or failing app is `Failed` (worth a retry).
    pub async fn call_app(&self, id: &str, request: CallRequest) -> Result<Value, ActError> {
        let slot = self.slot(id).map_err(|_| ActError::Refused(format!("no rule app {id} is installed")))?;
        if slot.shared.loaded.load().manifest.kind != PluginKind::App {
            return Err(ActError::Refused(format!("plugin {id} is an adapter, not a rule app (kind \"app\")")));
        }
        let (tx, rx) = oneshot::channel();
        let exchange = async {
            slot.control
                .send(Control::Act(Invocation::Call(request), tx))
                .await
                .map_err(|_| ActError::Failed("plugin removed".into()))?;
            rx.await.map_err(|_| ActError::Failed("plugin removed".into()))?
        };
        tokio::time::timeout(self.config().act_timeout, exchange).await.map_err(|_| ActError::Timeout)?
    }

    /// Stops every driver and waits for them (at most `deadline`).
    pub async fn shutdown(&self, deadline: std::time::Duration) {
        self.inner.cancel.cancel();
        self.inner.tracker.close();
        if tokio::time::timeout(deadline, self.inner.tracker.wait()).await.is_err() {
            tracing::warn!("plugin drivers did not stop within the shutdown deadline");
        }
    }

    fn slot(&self, id: &str) -> Result<Arc<Slot>, RuntimeError> {
        self.inner.slots.load().get(id).cloned().ok_or_else(|| RuntimeError::NotFound(id.to_owned()))
    }

    fn plugin_dir(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        crate::manifest::validate_id(id).map_err(|reason| RuntimeError::InvalidInput(format!("id: {reason}")))?;
        Ok(self.config().plugins_dir().join(id))
    }

    async fn control<T>(
        &self,
        slot: &Slot,
        make: impl FnOnce(oneshot::Sender<T>) -> Control,
    ) -> Result<T, RuntimeError> {
        let (tx, rx) = oneshot::channel();
        let exchange = async {
            slot.control.send(make(tx)).await.map_err(|_| RuntimeError::Closed)?;
            rx.await.map_err(|_| RuntimeError::Closed)
        };
        tokio::time::timeout(self.config().control_timeout, exchange)
            .await
            .map_err(|_| RuntimeError::Busy(slot.shared.id.clone()))?
    }

    async fn load_state(&self, id: &str) -> Result<SharedState, RuntimeError> {
        let records = self.inner.shared.twin.store().records(&crate::state_namespace(id)).await?;
        let mut entries = BTreeMap::new();
        for (key, body) in records {
            match base64::engine::general_purpose::STANDARD.decode(body.as_bytes()) {
                Ok(bytes) => {
                    entries.insert(key, bytes);
                }
                Err(e) => tracing::error!(plugin = %id, key, error = %e, "skipping undecodable plugin state"),
            }
        }
        Ok(SharedState::new(StateCell::new(entries)))
    }

    /// Validates and compiles one version. Returns it with the wasm bytes (for saving).
    async fn prepare(
        &self,
        manifest_text: &str,
        wasm: Vec<u8>,
        grant: Capabilities,
        config: Option<Value>,
        state: &SharedState,
    ) -> Result<(Loaded, Vec<u8>), RuntimeError> {
        let manifest = Manifest::parse(manifest_text)?;
        let hub = &self.config().hub_version;
        if !manifest.supports_hub(hub) {
            return Err(RuntimeError::InvalidInput(format!(
                "hub: the plugin needs hub {}, this hub is {hub}",
                manifest.hub
            )));
        }
        let digest = hex::encode(Sha256::digest(&wasm));
        if digest != manifest.sha256 {
            return Err(RuntimeError::InvalidInput(format!(
                "sha256: the module's SHA-256 is {digest}, the manifest says {}",
                manifest.sha256
            )));
        }
        let problems = grant.check_subset_of(&manifest.capabilities);
        if !problems.is_empty() {
            let text: Vec<String> = problems.into_iter().map(|(k, m)| format!("grant.{k}: {m}")).collect();
            return Err(RuntimeError::InvalidInput(text.join("; ")));
        }
        if let Some(c) = &config
            && !c.is_object()
        {
            return Err(RuntimeError::InvalidInput("config: must be a JSON object".to_owned()));
        }
        let manifest = Arc::new(manifest);
        let (m, s) = (manifest.clone(), state.clone());
        let module = tokio::task::spawn_blocking(move || {
            let module = Module::compile(&wasm, &m, &s);
            (module, wasm)
        })
        .await;
        let (module, wasm) =
            module.map_err(|e| RuntimeError::Load { id: manifest.id.clone(), reason: e.to_string() })?;
        let module = module.map_err(|reason| RuntimeError::Load { id: manifest.id.clone(), reason })?;
        let config = config.unwrap_or_else(|| manifest.default_config());
        let grant = Arc::new(CompiledGrant::new(&grant));
        Ok((Loaded { manifest, module, grant, config }, wasm))
    }

    /// Creates the slot and driver for a prepared version and waits for its first start.
    async fn spawn(
        &self,
        loaded: Loaded,
        config_override: Option<Value>,
        state: SharedState,
        enabled: bool,
    ) -> Result<PluginInfo, RuntimeError> {
        let id = loaded.manifest.id.clone();
        let grant = loaded.grant.clone();
        let (msg_tx, msg_rx) = mpsc::channel(self.config().queue_capacity.max(1));
        let (ctl_tx, ctl_rx) = mpsc::channel(CONTROL_CAPACITY);
        let shared = Arc::new(SlotShared {
            id: id.clone(),
            state: ArcSwap::from_pointee(PluginState::Stopped),
            counters: Counters::default(),
            loaded: ArcSwap::from_pointee(loaded),
        });
        let cancel = self.inner.cancel.child_token();
        let slot = Arc::new(Slot {
            shared: shared.clone(),
            messages: msg_tx,
            control: ctl_tx,
            state: state.clone(),
            cancel: cancel.clone(),
            task: Mutex::new(None),
            config_override: Mutex::new(config_override),
            act_owner: Mutex::new(None),
        });
        let driver = Driver::new(shared, self.inner.shared.clone(), msg_rx, ctl_rx, state, cancel);
        let task = self.inner.tracker.spawn(driver.run());
        *slot.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
        self.inner.slots.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.insert(id.clone(), slot.clone());
            next
        });
        self.register_act(&slot, &grant);
        if enabled {
            // A plugin that does not start is still installed (state `failed`, restarting with backoff).
            if let Err(e) = self.control(&slot, Control::Start).await? {
                tracing::warn!(plugin = %id, error = %e, "plugin installed but did not start");
            }
        }
        Ok(info(&slot))
    }

    fn register_act(&self, slot: &Arc<Slot>, grant: &CompiledGrant) {
        self.unregister_act(slot);
        let handler: Arc<dyn ActHandler> =
            Arc::new(PluginAct { host: Arc::downgrade(&self.inner), id: slot.shared.id.clone() });
        let registry = self.inner.shared.twin.act_registry();
        for glob in grant.provider_globs() {
            registry.register(glob.clone(), handler.clone());
        }
        let id = &slot.shared.id;
        for entry in self.inner.shared.declared.iter().filter(|e| e.value() == id && grant.may_write(e.key())) {
            registry.register(hub_model::Glob::new(entry.key()), handler.clone());
        }
        self.inner.shared.act_handlers.insert(id.clone(), handler.clone());
        *slot.act_owner.lock().unwrap_or_else(PoisonError::into_inner) = Some(handler);
    }

    fn unregister_act(&self, slot: &Slot) {
        if let Some(handler) = slot.act_owner.lock().unwrap_or_else(PoisonError::into_inner).take() {
            self.inner.shared.twin.act_registry().unregister(&handler);
            self.inner.shared.act_handlers.remove_if(&slot.shared.id, |_, h| Arc::ptr_eq(h, &handler));
        }
    }

    async fn save_enabled(&self, slot: &Slot, enabled: bool) -> Result<(), RuntimeError> {
        let grant = slot.shared.loaded.load().grant.capabilities().clone();
        let config = slot.config_override.lock().unwrap_or_else(PoisonError::into_inner).clone();
        self.write_files(&slot.shared.id, None, &InstallRecord { grant, config, enabled }).await
    }

    /// Writes the plugin's files, each through a temporary file and a rename.
    async fn write_files(
        &self,
        id: &str,
        module: Option<(&str, &[u8])>,
        record: &InstallRecord,
    ) -> Result<(), RuntimeError> {
        let dir = self.plugin_dir(id)?;
        tokio::fs::create_dir_all(&dir).await.map_err(|e| RuntimeError::Io(format!("{}: {e}", dir.display())))?;
        if let Some((manifest, wasm)) = module {
            write_atomic(&dir.join(WASM_FILE), wasm).await?;
            write_atomic(&dir.join(MANIFEST_FILE), manifest.as_bytes()).await?;
        }
        let record = serde_json::to_vec_pretty(record).map_err(|e| RuntimeError::Io(e.to_string()))?;
        write_atomic(&dir.join(INSTALL_FILE), &record).await
    }
}

fn accepting(slot: &Slot) -> Result<(), RuntimeError> {
    match slot.shared.state() {
        PluginState::Running | PluginState::Failed => Ok(()),
        state => Err(RuntimeError::NotRunning { id: slot.shared.id.clone(), state }),
    }
}

async fn send_bounded(slot: &Slot, message: InboundMessage, wait: std::time::Duration, outcome: &mut DispatchOutcome) {
    let sent = match slot.messages.try_send(message) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(message)) => {
            matches!(tokio::time::timeout(wait, slot.messages.send(message)).await, Ok(Ok(())))
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    };
    if sent {
        outcome.delivered += 1;
    } else {
        outcome.dropped += 1;
        Counters::add(&slot.shared.counters.dropped, 1);
    }
}

fn info(slot: &Slot) -> PluginInfo {
    let loaded = slot.shared.loaded.load();
    let m = &loaded.manifest;
    PluginInfo {
        id: m.id.clone(),
        version: m.version.to_string(),
        abi: m.abi,
        kind: m.kind,
        description: m.description.clone(),
        state: slot.shared.state(),
        requested: m.capabilities.clone(),
        granted: loaded.grant.capabilities().clone(),
        config: crate::secrets::redact(&loaded.config),
        limits: m.limits,
        tick_ms: m.tick_ms,
        sha256: m.sha256.clone(),
        stats: slot.shared.counters.snapshot(),
    }
}

async fn read_file(path: &Path) -> Result<Vec<u8>, RuntimeError> {
    tokio::fs::read(path).await.map_err(|e| RuntimeError::Io(format!("{}: {e}", path.display())))
}

async fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RuntimeError> {
    let tmp = path.with_extension("tmp");
    let io = |e: std::io::Error| RuntimeError::Io(format!("{}: {e}", path.display()));
    tokio::fs::write(&tmp, bytes).await.map_err(io)?;
    tokio::fs::rename(&tmp, path).await.map_err(io)
}

/// Routes ACT on the plugin's providers to the plugin.
struct PluginAct {
    host: Weak<Inner>,
    id: String,
}

#[async_trait]
impl ActHandler for PluginAct {
    async fn act(&self, path: &ResourcePath, params: serde_json::Map<String, Value>) -> Result<Value, ActError> {
        let Some(inner) = self.host.upgrade() else {
            return Err(ActError::Failed("the plugin runtime has stopped".to_owned()));
        };
        PluginHost { inner }.act(&self.id, path, params).await
    }
}
