//! The pieces of a LoRaWAN hub for tests and benchmarks: the lorawan adapter built for wasm32 and installed in a
//! real plugin runtime over a real twin (SQLite in a temp dir) and policy, the GWMP transport registered as
//! `udp`, the pump that hands inbound messages to the runtime, and lora-packet (npm) as an independent LoRaWAN
//! implementation.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hub_runtime::{Capabilities, HostConfig, PluginHost, Transports};
use hub_transport_gwmp::{GwmpConfig, GwmpTransport};
use hub_twin::Twin;
use serde_json::Value;
use sha2::{Digest, Sha256};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The folder of the lora-packet peer (`package.json`, `lora.js`).
pub fn peer_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lora-packet")
}

/// Checks that node and lora-packet are installed, or fails with how to install them.
pub fn require_lora_packet() -> Result<()> {
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        bail!(
            "these tests need Node.js (`node`) to run lora-packet, an independent LoRaWAN implementation; install \
             it (`apt-get install -y nodejs npm` on Debian/Ubuntu), then run `npm ci` in {}",
            peer_dir().display()
        );
    }
    if !peer_dir().join("node_modules/lora-packet/package.json").is_file() {
        bail!(
            "the npm package lora-packet is not installed; run `npm ci` (or `npm install`) in {} and run the tests \
             again",
            peer_dir().display()
        );
    }
    Ok(())
}

/// Runs `lora.js` on a batch of requests (see the script for the operations).
pub fn lora_packet(requests: &Value) -> Result<Vec<Value>> {
    require_lora_packet()?;
    let mut child = Command::new("node")
        .arg("lora.js")
        .current_dir(peer_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting node")?;
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().context("node stdin")?;
        stdin.write_all(requests.to_string().as_bytes())?;
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!("lora.js failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    serde_json::from_slice(&output.stdout).context("lora.js output")
}

/// Builds the lorawan adapter for wasm32 once per process and returns the module's bytes.
pub fn adapter_wasm() -> Vec<u8> {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    let path = PATH.get_or_init(|| {
        // The test binary lives in <target>/<profile>/deps/; the wasm build gets <target>/wasm (as hub-runtime's
        // tests do) so it never waits for the lock of the build running the tests.
        let exe = std::env::current_exe().expect("test binary path");
        let target = exe.ancestors().nth(3).expect("target dir").to_path_buf();
        let wasm_target = target.join("wasm");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let output = Command::new(cargo)
            .args(["build", "--release", "--target", "wasm32-unknown-unknown", "-p", "hub-adapter-lorawan"])
            .arg("--manifest-path")
            .arg(repo_root().join("plugins/Cargo.toml"))
            .env("CARGO_TARGET_DIR", &wasm_target)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .output()
            .expect("running cargo to build the lorawan adapter");
        if !output.status.success() {
            panic!(
                "building plugins/lorawan for wasm32 failed (install the target with `rustup target add \
                 wasm32-unknown-unknown`):\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        wasm_target.join("wasm32-unknown-unknown/release/hub_adapter_lorawan.wasm")
    });
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The adapter's real manifest, with the module's digest and the transport's port filled in.
pub fn adapter_manifest(wasm: &[u8], port: u16) -> String {
    let text = std::fs::read_to_string(repo_root().join("plugins/lorawan/plugin.toml")).expect("plugin.toml");
    let digest = hex::encode(Sha256::digest(wasm));
    text.replace(&"0".repeat(64), &digest).replace("ports = [1700]", &format!("ports = [{port}]"))
}

pub const POLICY: &str = "p, admin, *, *\np, plugin:lorawan, lora-*, write\n";

/// A hub with the GWMP transport and the lorawan adapter.
pub struct LoraHub {
    pub dir: tempfile::TempDir,
    pub twin: Arc<Twin>,
    pub host: PluginHost,
    pub gwmp: Arc<GwmpTransport>,
    pump: tokio::task::JoinHandle<()>,
}

impl LoraHub {
    /// Starts everything and installs the adapter with `config` (its registry).
    pub async fn start(config: Value, host_config: impl FnOnce(&mut HostConfig)) -> Result<LoraHub> {
        let dir = tempfile::tempdir()?;
        let store = hub_store::SqliteStore::open(&dir.path().join("hub.db")).context("store")?;
        let twin = Arc::new(Twin::open(Arc::new(store), hub_bus::Bus::new(4096)).await?);
        let policy = Arc::new(hub_policy::PolicyEngine::new(POLICY)?);
        let transports = Arc::new(Transports::new());
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let gwmp = Arc::new(GwmpTransport::start(
            &GwmpConfig { listen: "127.0.0.1:0".parse()?, ..GwmpConfig::default() },
            tx,
        )?);
        transports.register("udp", gwmp.clone());
        let mut hc = HostConfig::new(dir.path(), semver::Version::new(0, 1, 0));
        host_config(&mut hc);
        let host = PluginHost::new(hc, twin.clone(), policy, transports);
        let port = gwmp.local_addr().port();
        let wasm = adapter_wasm();
        let grant: Capabilities = toml::from_str(&format!(
            "providers = [\"lora-*\"]\n[udp]\nports = [{port}]\n[mqtt]\nsubscribe = [\"application/+/device/+/event/up\", \"v3/+/devices/+/up\"]\n"
        ))?;
        host.install(&adapter_manifest(&wasm, port), wasm, grant, Some(config)).await.context("install lorawan")?;
        let pump_host = host.clone();
        let pump = tokio::spawn(async move {
            while let Some(message) = rx.recv().await {
                pump_host.dispatch(message).await;
            }
        });
        Ok(LoraHub { dir, twin, host, gwmp, pump })
    }

    pub fn value(&self, path: &str) -> Option<Value> {
        self.twin.resource(&path.parse().ok()?)?.value
    }

    /// Waits until `path` holds `want`.
    pub async fn wait_value(&self, path: &str, want: &Value) -> Result<()> {
        let start = std::time::Instant::now();
        while self.value(path).as_ref() != Some(want) {
            if start.elapsed() > Duration::from_secs(20) {
                let info = self.host.get("lorawan").map(|i| format!("{:?} {:?}", i.state, i.stats));
                bail!("timed out waiting for {path} = {want}; it is {:?}; plugin {info:?}", self.value(path));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    pub async fn close(self) {
        self.gwmp.shutdown().await;
        self.pump.abort();
        self.host.shutdown(Duration::from_secs(5)).await;
        let _ = self.twin.store().close().await;
    }
}
