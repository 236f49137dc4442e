//! Plugins through the real binary: install with the CLI (granting what the manifest requests), see it running,
//! survive a restart (plugins in <data-dir>/plugins load at start), remove it.

use std::process::Command;

use hub_e2e::{HubProcess, Launch, build_plugin, free_port, hub_binary};

fn cli(hub: &HubProcess, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(hub_binary())
        .args(args)
        .args(["--hub", &hub.base, "--token", &hub.admin])
        .output()
        .expect("running the hub CLI");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_plugin_is_installed_listed_reloaded_and_removed_with_the_cli() {
    let (manifest, wasm) = build_plugin("template", "hub-plugin-template").unwrap();
    let work = tempfile::tempdir().unwrap();
    let manifest_path = work.path().join("plugin.toml");
    std::fs::write(&manifest_path, &manifest).unwrap();
    let wasm_path = work.path().join("plugin.wasm");
    std::fs::write(&wasm_path, &wasm).unwrap();
    let wasm = wasm_path;
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let hub = HubProcess::start(Launch { port, ..Launch::new(data.path()) }).await.unwrap();

    // Without a grant nothing is granted, and the manifest's checksum is enforced.
    let tampered = work.path().join("bad.toml");
    std::fs::write(&tampered, manifest.replace("sha256 = \"", "sha256 = \"0")).unwrap();
    let (ok, _, err) =
        cli(&hub, &["plugin", "install", "--manifest", tampered.to_str().unwrap(), "--wasm", wasm.to_str().unwrap()]);
    assert!(!ok, "a manifest whose sha256 does not match is refused");
    assert!(err.contains("400") || err.contains("sha256"), "{err}");

    let (ok, out, err) = cli(
        &hub,
        &[
            "plugin",
            "install",
            "--manifest",
            manifest_path.to_str().unwrap(),
            "--wasm",
            wasm.to_str().unwrap(),
            "--grant-requested",
        ],
    );
    assert!(ok, "{err}");
    let info: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["state"], "running", "{info}");
    let (_, plugin) = hub.get("/api/v1/plugins/template").await.unwrap();
    assert_eq!(plugin["granted"]["providers"], serde_json::json!(["tmpl-*"]), "{plugin}");

    let status = hub.stop().unwrap();
    assert!(status.success());
    let hub = HubProcess::start(Launch { port: free_port(), ..Launch::new(data.path()) }).await.unwrap();
    let (ok, out, err) = cli(&hub, &["plugin", "list"]);
    assert!(ok, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let reloaded = list["plugins"].as_array().unwrap().iter().find(|p| p["id"] == "template");
    let reloaded = reloaded.unwrap_or_else(|| panic!("reloaded from the data directory: {list}"));
    assert_eq!(reloaded["state"], "running", "{reloaded}");

    let (ok, _, err) = cli(&hub, &["plugin", "remove", "template"]);
    assert!(ok, "{err}");
    let (status, _) = hub.get("/api/v1/plugins/template").await.unwrap();
    assert_eq!(status, 404);
    assert!(!data.path().join("plugins/template").exists(), "its files are gone");
}
