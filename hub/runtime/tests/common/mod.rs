//! Shared test harness: builds the wasm fixtures once per test process and runs the real runtime over a real
//! twin, a temp-dir SQLite store and a real policy engine.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use async_trait::async_trait;
use hub_plugin_sdk::abi::OutboundMessage;
use hub_runtime::{Capabilities, HostConfig, Outbound, PluginHost, RestartPolicy, TransportError, Transports};
use hub_twin::Twin;
use sha2::{Digest, Sha256};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds `plugins/` for wasm32 once per test process and returns the directory holding the `.wasm` files.
/// Panics with instructions when the wasm target is not installed.
pub fn wasm_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // The test binary lives in <target>/debug/deps/; the wasm build gets <target>/wasm so it never waits
        // for the lock of the build that is running the tests.
        let exe = std::env::current_exe().expect("test binary path");
        let target = exe.ancestors().nth(3).expect("target dir").to_path_buf();
        let wasm_target = target.join("wasm");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let output = Command::new(cargo)
            .args(["build", "--release", "--target", "wasm32-unknown-unknown", "--manifest-path"])
            .arg(repo_root().join("plugins/Cargo.toml"))
            .env("CARGO_TARGET_DIR", &wasm_target)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .output()
            .expect("running cargo to build the wasm fixtures");
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            panic!(
                "building the wasm plugin fixtures failed.\n\
                 If the target is missing, install it with:\n\n    rustup target add wasm32-unknown-unknown\n\n\
                 cargo said:\n{stderr}"
            );
        }
        wasm_target.join("wasm32-unknown-unknown/release")
    })
}

/// The bytes of fixture `name` (crate `hub-plugin-<name>`).
pub fn wasm(name: &str) -> Vec<u8> {
    let file = wasm_dir().join(format!("hub_plugin_{}.wasm", name.replace('-', "_")));
    std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A manifest for a fixture: `extra` is appended (capabilities, limits, config).
pub fn manifest(id: &str, version: &str, wasm: &[u8], extra: &str) -> String {
    format!(
        "id = \"{id}\"\nversion = \"{version}\"\nabi = 1\nhub = \">=0.1.0, <0.2.0\"\nkind = \"adapter\"\nsha256 = \"{}\"\n{extra}",
        sha256(wasm)
    )
}

/// Parses a capabilities table written as TOML.
pub fn grant(toml_text: &str) -> Capabilities {
    toml::from_str(toml_text).expect("grant")
}

/// Everything outbound messages were handed to, by plugin.
#[derive(Default)]
pub struct Recorder {
    pub sent: Mutex<Vec<(String, OutboundMessage)>>,
}

#[async_trait]
impl Outbound for Recorder {
    async fn send(&self, plugin_id: &str, message: OutboundMessage) -> Result<(), TransportError> {
        self.sent.lock().unwrap().push((plugin_id.to_owned(), message));
        Ok(())
    }
}

impl Recorder {
    pub fn addresses(&self) -> Vec<String> {
        self.sent.lock().unwrap().iter().map(|(_, m)| format!("{} {}", m.transport, m.address)).collect()
    }
}

pub const POLICY: &str = "p, admin, *, *\n\
p, plugin:echo, echo-*, write\n\
p, plugin:echo2, echo-*, write\n\
p, plugin:template, tmpl-*, write\n\
p, plugin:trespasser, *, write\n";

pub struct Hub {
    pub dir: tempfile::TempDir,
    pub twin: Arc<Twin>,
    pub host: PluginHost,
    pub recorder: Arc<Recorder>,
}

pub fn host_config(data_dir: &Path) -> HostConfig {
    let mut config = HostConfig::new(data_dir, semver::Version::new(0, 1, 0));
    config.restart = RestartPolicy {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        max_failures: 3,
        window: Duration::from_secs(60),
    };
    config.linger = Duration::from_millis(1);
    config
}

impl Hub {
    pub async fn new() -> anyhow::Result<Hub> {
        let dir = tempfile::tempdir()?;
        Hub::open(dir).await
    }

    /// Opens (or reopens) a hub over `dir`: the store and the plugin directory survive.
    pub async fn open(dir: tempfile::TempDir) -> anyhow::Result<Hub> {
        let config = host_config(dir.path());
        Hub::open_with(dir, config).await
    }

    /// Opens a hub with a custom runtime configuration.
    pub async fn open_with(dir: tempfile::TempDir, config: HostConfig) -> anyhow::Result<Hub> {
        let store = hub_store::SqliteStore::open(&dir.path().join("hub.db")).context("store")?;
        let twin = Arc::new(Twin::open(Arc::new(store), hub_bus::Bus::new(1024)).await?);
        let policy = Arc::new(hub_policy::PolicyEngine::new(POLICY)?);
        let transports = Arc::new(Transports::new());
        let recorder = Arc::new(Recorder::default());
        transports.register("mqtt", recorder.clone());
        let host = PluginHost::new(config, twin.clone(), policy, transports);
        Ok(Hub { dir, twin, host, recorder })
    }

    /// Shuts the host down and hands back the data directory.
    pub async fn close(self) -> tempfile::TempDir {
        self.host.shutdown(Duration::from_secs(5)).await;
        let _ = self.twin.store().close().await;
        self.dir
    }

    pub fn value(&self, path: &str) -> Option<serde_json::Value> {
        self.twin.resource(&path.parse().ok()?)?.value
    }
}

/// Polls `cond` every 10 ms until it holds; fails after `timeout`.
pub async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub const ECHO_CAPS: &str = "[capabilities]\nproviders = [\"echo-*\"]\n[capabilities.mqtt]\nsubscribe = [\"echo/#\"]\npublish = [\"echo/+/cmd\"]\n[limits]\nmemory_mib = 16\ntimeout_ms = 1000\n";
pub const ECHO_GRANT: &str = "providers = [\"echo-*\"]\n[mqtt]\nsubscribe = [\"echo/#\"]\npublish = [\"echo/+/cmd\"]\n";
