//! The sandboxed WebAssembly plugin runtime: manifests, grants, lifecycle, limits and capability checks.
//!
//! A plugin (see the `hub-plugin-sdk` crate) is a wasm module with a `plugin.toml` [`Manifest`]. The
//! [`PluginHost`] installs, starts, stops, upgrades, reconfigures and removes plugins while the hub runs, and
//! keeps them in `<data-dir>/plugins/<id>/` so they load again at start.
//!
//! Each plugin has a *driver*: a tokio task that owns its extism instance, takes inbound messages from a bounded
//! queue in batches (up to [`HostConfig::max_batch`], lingering at most [`HostConfig::linger`]), runs every call
//! on a blocking thread under the manifest's deadline and memory limit, and hands the output to the plugin's
//! applier, which applies outputs in call order while the driver already calls the plugin again (at most
//! [`HostConfig::pipeline_depth`] outputs wait; those that wait are committed together): updates and
//! model documents only inside the granted provider namespace *and* allowed by the policy for subject
//! `plugin:<id>`; outbound messages only on granted bindings, through the registered [`Transports`]; log lines
//! to `tracing` tagged with the plugin id. A call that traps, times out, exhausts memory or returns garbage fails
//! alone: the instance is discarded and restarted with exponential backoff, and after
//! [`RestartPolicy::max_failures`] failures within [`RestartPolicy::window`] the plugin is quarantined until an
//! admin starts it again. Other plugins have their own drivers and are not affected.
//!
//! Plugin key-value state lives in the store under namespace `plugin-state:<id>` (values base64); a call's
//! writes are committed when it succeeds and discarded when it fails, and the store gets them in the same
//! transaction as the updates of that call. ACT on a provider in a plugin's namespace
//! reaches the plugin through the twin's [`ActRegistry`](hub_twin::ActRegistry).

mod applier;
mod capability;
mod driver;
mod error;
mod host;
mod instance;
mod manifest;
pub mod secrets;
mod stats;
mod transport;

use std::{fmt, path::PathBuf, sync::Arc, time::Duration};

use serde::Serialize;

pub use capability::{
    Capabilities, CompiledGrant, PubSub, Subscription, Udp, mqtt_filter_covers, mqtt_matches, validate_mqtt_filter,
};
pub use error::RuntimeError;
pub use host::{DispatchOutcome, PluginHost};
pub use instance::FailureKind;
pub use manifest::{
    Limits, MEMORY_MIB_RANGE, MIN_TICK_MS, Manifest, ManifestError, ManifestIssue, PluginKind, SUPPORTED_ABI_VERSIONS,
    TIMEOUT_MS_RANGE, validate_id,
};
pub use stats::{LATENCY_WINDOW, PluginStats};
pub use transport::{Outbound, TransportError, Transports};

/// The store namespace of a plugin's key-value state.
pub fn state_namespace(id: &str) -> String {
    format!("plugin-state:{id}")
}

/// Where a plugin is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginState {
    /// Taking messages.
    Running,
    /// Stopped by an admin (or installed stopped).
    Stopped,
    /// Its last call or start failed; it restarts when its backoff ends. Messages queue meanwhile.
    Failed,
    /// Failed too often; takes nothing until an admin starts it again.
    Quarantined,
}

impl PluginState {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginState::Running => "running",
            PluginState::Stopped => "stopped",
            PluginState::Failed => "failed",
            PluginState::Quarantined => "quarantined",
        }
    }
}

impl fmt::Display for PluginState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a failed plugin restarts, and when it is quarantined instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// The wait after the first failure; doubles with each further failure in the window.
    pub initial_backoff: Duration,
    /// The longest wait.
    pub max_backoff: Duration,
    /// This many failures within `window` quarantine the plugin.
    pub max_failures: u32,
    /// The window failures are counted in.
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            max_failures: 5,
            window: Duration::from_secs(60),
        }
    }
}

impl RestartPolicy {
    /// The wait after the `n`-th failure in the window (1-based).
    pub fn backoff(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1).min(20)).unwrap_or(u32::MAX);
        self.initial_backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// The runtime's settings. Every plugin deadline the host applies is here or in the plugin's manifest.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The hub's data directory; plugins live in `<data_dir>/plugins/<id>/`.
    pub data_dir: PathBuf,
    /// This hub's version, matched against each manifest's `hub` range.
    pub hub_version: semver::Version,
    /// Inbound messages queued per plugin before senders wait (back-pressure) or drop (fan-out).
    pub queue_capacity: usize,
    /// The most messages in one call.
    pub max_batch: usize,
    /// How long a batch waits for more messages after its first.
    pub linger: Duration,
    /// A batch stops growing once its payloads reach this many bytes, so large messages do not multiply into a
    /// call bigger than the plugin's memory.
    pub max_batch_bytes: usize,
    /// Call outputs that may wait for their durable commit while the plugin is called again (the pipeline
    /// between a plugin's calls and its commits). Outputs that wait are committed together. At least 1.
    pub pipeline_depth: usize,
    /// Restart and quarantine.
    pub restart: RestartPolicy,
    /// The longest an ACT waits for the plugin (queueing and the call).
    pub act_timeout: Duration,
    /// The longest [`PluginHost::dispatch`] waits for room in one plugin's queue before dropping the message for
    /// that plugin.
    pub dispatch_timeout: Duration,
    /// The longest an admin operation waits for a plugin's driver.
    pub control_timeout: Duration,
}

impl HostConfig {
    /// Defaults for a hub of version `hub_version` with its data in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>, hub_version: semver::Version) -> Self {
        HostConfig {
            data_dir: data_dir.into(),
            hub_version,
            queue_capacity: 4096,
            max_batch: 256,
            linger: Duration::from_millis(2),
            max_batch_bytes: 1 << 20,
            pipeline_depth: 4,
            restart: RestartPolicy::default(),
            act_timeout: Duration::from_secs(5),
            dispatch_timeout: Duration::from_millis(100),
            control_timeout: Duration::from_secs(30),
        }
    }

    /// `<data_dir>/plugins`.
    pub fn plugins_dir(&self) -> PathBuf {
        self.data_dir.join("plugins")
    }
}

/// What every driver shares.
pub(crate) struct HostShared {
    pub config: HostConfig,
    pub twin: Arc<hub_twin::Twin>,
    pub policy: Arc<hub_policy::PolicyEngine>,
    pub transports: Arc<Transports>,
    /// Which plugin declared each provider's actions (provider → plugin id); kept in the store under
    /// [`ACT_OWNERS_NAMESPACE`] so that ACT keeps reaching the declaring plugin after a restart.
    pub declared: dashmap::DashMap<String, String>,
    /// Each running plugin's ACT handler, by plugin id (so a declaration can register it for one provider).
    pub act_handlers: dashmap::DashMap<String, Arc<dyn hub_twin::ActHandler>>,
    /// The host itself, for the calls of apps that adapters ask for (weak: the host owns this).
    pub host: std::sync::Weak<host::Inner>,
}

/// The store namespace of declared ACT owners: key = provider, body = plugin id.
pub const ACT_OWNERS_NAMESPACE: &str = "plugin-act-owners";

/// Everything the API shows about one plugin.
#[derive(Debug, Clone, Serialize)]
pub struct PluginInfo {
    /// The id.
    pub id: String,
    /// The installed version.
    pub version: String,
    /// The ABI version it speaks.
    pub abi: u32,
    /// Adapter or app.
    pub kind: PluginKind,
    /// Its one-line description.
    pub description: Option<String>,
    /// Where it is in its life.
    pub state: PluginState,
    /// What its manifest asks for.
    pub requested: Capabilities,
    /// What an admin granted.
    pub granted: Capabilities,
    /// The effective configuration, with secret fields (`*key`, `*secret`, `*password`, `*token`) redacted.
    pub config: serde_json::Value,
    /// Its limits.
    pub limits: Limits,
    /// Its tick interval, if any.
    pub tick_ms: Option<u64>,
    /// The SHA-256 of its module.
    pub sha256: String,
    /// Its counters.
    pub stats: PluginStats,
}
