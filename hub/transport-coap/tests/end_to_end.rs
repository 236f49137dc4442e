//! The whole CoAP path with the real runtime and the real adapter module: `coap-client-notls` → the endpoint
//! → `PluginHost::dispatch` → the `coap` wasm plugin → the twin; and ACT → the plugin → this transport → an
//! aiocoap device. This is the wiring `hub serve` does.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::{aiocoap_device, coap_client, loopback_config, next_line};
use hub_runtime::{HostConfig, Manifest, PluginHost, Transports};
use hub_transport_coap::{CoapTransport, Delivery, StaticDeviceAuth};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Builds the adapter for wasm32 (in `<target>/wasm`, as the runtime's tests do) and returns the module.
fn adapter_module() -> Result<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let exe = std::env::current_exe()?;
    let target: PathBuf = exe.ancestors().nth(3).context("target dir")?.join("wasm");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args(["build", "--release", "--target", "wasm32-unknown-unknown", "-p", "hub-adapter-coap", "--manifest-path"])
        .arg(root.join("plugins/Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()?;
    if !output.status.success() {
        bail!(
            "building plugins/coap for wasm32 failed (install the target with `rustup target add \
             wasm32-unknown-unknown`):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(std::fs::read(target.join("wasm32-unknown-unknown/release/hub_adapter_coap.wasm"))?)
}

async fn wait_for_value(twin: &hub_twin::Twin, path: &str, want: &Value) -> Result<()> {
    let path = path.parse()?;
    let deadline = Instant::now() + common::WAIT;
    loop {
        if twin.resource(&path).and_then(|r| r.value).as_ref() == Some(want) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{path} never became {want}: {:?}", twin.resource(&path).and_then(|r| r.value));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_reach_the_twin_through_the_adapter_and_act_reaches_a_device() -> Result<()> {
    let wasm = tokio::task::spawn_blocking(adapter_module).await??;
    let (device, device_port) = aiocoap_device(10).await?;

    // The runtime over a real twin, store and policy.
    let dir = tempfile::tempdir()?;
    let store = hub_store::SqliteStore::open(&dir.path().join("hub.db"))?;
    let twin = Arc::new(hub_twin::Twin::open(Arc::new(store), hub_bus::Bus::new(1024)).await?);
    let policy = Arc::new(hub_policy::PolicyEngine::new("p, admin, *, *\np, plugin:coap, *, write\n")?);
    let transports = Arc::new(Transports::new());
    let mut host_config = HostConfig::new(dir.path(), semver::Version::new(0, 1, 0));
    host_config.linger = Duration::from_millis(1);
    let plugins = PluginHost::new(host_config, twin.clone(), policy, transports.clone());

    // The CoAP transport, its pump, its outbound registration and its links.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Delivery>(1024);
    let transport = CoapTransport::start(&loopback_config(), Arc::new(StaticDeviceAuth::new()), tx).await?;
    transports.register("coap", transport.outbound());
    let pump_plugins = plugins.clone();
    tokio::spawn(async move {
        while let Some(delivery) = rx.recv().await {
            let (message, reply) = delivery.into_parts();
            reply.send(pump_plugins.dispatch(message).await);
        }
    });

    // Install the official adapter with everything its manifest asks for.
    let text =
        include_str!("../../../plugins/coap/plugin.toml").replace(&"0".repeat(64), &hex::encode(Sha256::digest(&wasm)));
    let grant = Manifest::parse(&text)?.capabilities;
    let config = json!({
        "up_path": "/up", "max_records": 100, "observe": [],
        "devices": [{ "provider": "valve-1", "uri": format!("coap://127.0.0.1:{device_port}/cmd"),
                      "actions": { "valve/open": { "level": "integer" } } }]
    });
    let info = plugins.install(&text, wasm, grant, Some(config)).await?;
    assert_eq!(info.state, hub_runtime::PluginState::Running, "{:?}", info.stats.last_error);
    let links: Vec<String> =
        plugins.subscriptions().into_iter().filter(|(_, s)| s.transport == "coap").map(|(_, s)| s.pattern).collect();
    transport.set_links(links);

    let base = format!("coap://127.0.0.1:{}", transport.local_addr().context("server")?.port());
    let out = coap_client(vec![
        "-m".into(),
        "post".into(),
        "-t".into(),
        "json".into(),
        "-e".into(),
        "21.5".into(),
        format!("{base}/up/meters-7/power/w"),
    ])
    .await?;
    assert!(out.is_empty(), "{out}");
    wait_for_value(&twin, "meters-7/power/w", &json!(21.5)).await?;

    let pack = r#"[{"bn":"meters-8/env/","n":"temp","v":19.5},{"n":"door","vb":true}]"#;
    let out = coap_client(vec![
        "-m".into(),
        "put".into(),
        "-t".into(),
        "110".into(),
        "-e".into(),
        pack.into(),
        format!("{base}/up"),
    ])
    .await?;
    assert!(out.is_empty(), "{out}");
    wait_for_value(&twin, "meters-8/env/temp", &json!(19.5)).await?;
    wait_for_value(&twin, "meters-8/env/door", &json!(true)).await?;

    // Nobody subscribes here: 4.04. Discovery lists what the plugin subscribes to.
    let out = coap_client(vec!["-m".into(), "post".into(), "-e".into(), "1".into(), format!("{base}/other/x")]).await?;
    assert!(out.starts_with("4.04"), "{out}");
    let out = coap_client(vec!["-m".into(), "get".into(), format!("{base}/.well-known/core")]).await?;
    assert_eq!(out.trim(), r#"</up>;ct="0 42 50 60 110 112",</up/*>;ct="0 42 50 60 110 112""#);

    // ACT through the plugin: a CoAP request the device receives.
    let params = json!({ "level": 3 }).as_object().cloned().unwrap_or_default();
    let result =
        plugins.act("coap", &"valve-1/valve/open".parse()?, params).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(result["sent"]["method"], "POST");
    assert_eq!(next_line(&device, "CMD").await?, r#"CMD POST JSON 11 {"level":3}"#);

    let info = plugins.get("coap").context("installed")?;
    assert_eq!(info.stats.errors, 0, "{info:?}");
    plugins.shutdown(Duration::from_secs(5)).await;
    transport.shutdown();
    Ok(())
}
