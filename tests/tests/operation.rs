//! Operating the binary: first-start admin token, configuration errors that name their key, a taken port,
//! and the token CLI against a running hub.

use std::process::Command;

use hub_e2e::{HubProcess, Launch, client, free_port, hub_binary};
use serde_json::json;

#[tokio::test]
async fn first_start_prints_an_admin_token_once_and_writes_it_privately() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new(hub_binary())
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--mqtt-listen",
            &format!("127.0.0.1:{}", free_port()),
            "--coap-listen",
            "127.0.0.1:0",
            "--gwmp-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("HUB_ADMIN_TOKEN")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let token_file = dir.path().join("admin.token");
    for _ in 0..600 {
        if token_file.exists() && std::fs::read_to_string(&token_file).unwrap().ends_with('\n') {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let token = std::fs::read_to_string(&token_file).unwrap().trim().to_string();
    assert!(token.starts_with("hub_"), "{token}");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let mut ok = false;
    for _ in 0..200 {
        if let Ok(r) = client().get(format!("http://127.0.0.1:{port}/api/v1/healthz")).bearer_auth(&token).send().await
        {
            assert_eq!(r.status(), 200);
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ok, "the hub never answered");
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches(&token).count(), 1, "printed exactly once: {stdout}");
    // The store keeps only its hash.
    let db = std::fs::read(dir.path().join("hub.db")).unwrap();
    let wal = std::fs::read(dir.path().join("hub.db-wal")).unwrap_or_default();
    let haystack = [db, wal].concat();
    assert!(!haystack.windows(token.len()).any(|w| w == token.as_bytes()), "the secret is not stored in clear");
}

#[test]
fn configuration_errors_name_their_key_and_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hub.toml");
    std::fs::write(&config, "[http]\nlisten = \"127.0.0.1:1\"\nmax_bodybytes = 3\n[bus]\ncapacity = 2\n").unwrap();
    let out = Command::new(hub_binary()).args(["serve", "--config"]).arg(&config).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("http.max_bodybytes"), "{stderr}");

    std::fs::write(&config, "[bus]\ncapacity = 2\n[http]\nmax_batch = 0\n").unwrap();
    let out = Command::new(hub_binary()).args(["check-config"]).arg(&config).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bus.capacity") && stderr.contains("http.max_batch"), "every issue at once: {stderr}");

    std::fs::write(&config, "[mqtt.broker]\nlisen = \"127.0.0.1:1\"\n").unwrap();
    let out = Command::new(hub_binary()).args(["serve", "--config"]).arg(&config).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("mqtt.broker.lisen"), "the MQTT section is validated too: {stderr}");

    std::fs::write(&config, "[coap]\nlisten = \"nowhere\"\n").unwrap();
    let out = Command::new(hub_binary()).args(["check-config"]).arg(&config).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("coap.listen"), "the CoAP section is validated too: {stderr}");

    std::fs::write(&config, "[gwmp]\nallowed_gateways = [\"0102\"]\n").unwrap();
    let out = Command::new(hub_binary()).args(["serve", "--config"]).arg(&config).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("gwmp.allowed_gateways[0]"), "the GWMP section is validated too: {stderr}");

    std::fs::write(&config, "[plugins]\nofficial = [\"mqtt\", \"zigbee\"]\n").unwrap();
    let out = Command::new(hub_binary()).args(["check-config"]).arg(&config).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("plugins.official[1]") && stderr.contains("lorawan"), "{stderr}");

    std::fs::write(&config, "[http]\nlisten = \"127.0.0.1:8089\"\n").unwrap();
    let out = Command::new(hub_binary()).args(["check-config"]).arg(&config).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_example_configurations_are_valid() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for name in ["hub.toml", "santander.toml"] {
        let out = Command::new(hub_binary()).arg("check-config").arg(examples.join(name)).output().unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[tokio::test]
async fn a_taken_port_is_an_error_naming_the_key_and_the_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(hub_binary())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("http.listen") && stderr.contains("--listen"), "{stderr}");
}

#[tokio::test]
async fn taken_udp_ports_are_errors_naming_the_key_and_the_flag() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for (flag, key) in [("--coap-listen", "coap.listen"), ("--gwmp-listen", "gwmp.listen")] {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(hub_binary())
            .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port()), "--data-dir"])
            .arg(dir.path())
            .args(["--mqtt-listen", &format!("127.0.0.1:{}", free_port())])
            .args(
                ["--coap-listen", "--gwmp-listen"]
                    .iter()
                    .flat_map(|f| [*f, if *f == flag { &addr } else { "127.0.0.1:0" }]),
            )
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key) && stderr.contains(flag), "{flag}: {stderr}");
    }
}

#[tokio::test]
async fn token_cli_creates_a_working_restricted_token() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(Launch::new(dir.path())).await.unwrap();
    let (s, _) = hub
        .post(
            "/api/v1/ingest",
            &json!({"updates": [
            {"provider": "noise-1", "service": "sound", "resource": "level", "value": 1},
            {"provider": "cam-1", "service": "people", "resource": "count", "value": 2}]}),
        )
        .await
        .unwrap();
    assert_eq!(s, 200);
    let out = Command::new(hub_binary())
        .args([
            "token",
            "create",
            "--subject",
            "viewer",
            "--role",
            "noise-reader",
            "--hub",
            &hub.base,
            "--token",
            &hub.admin,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let http = client();
    let policy = http
        .get(format!("{}/api/v1/policy", hub.base))
        .bearer_auth(&hub.admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(hub.put_policy(&format!("{policy}\np, noise-reader, noise-*, read\n")).await.unwrap(), 204);
    let list: serde_json::Value = http
        .get(format!("{}/api/v1/providers", hub.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = list["providers"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["noise-1"]);
    let res = http.get(format!("{}/api/v1/providers/cam-1", hub.base)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(res.status(), 403);
    let out =
        Command::new(hub_binary()).args(["token", "list", "--hub", &hub.base, "--token", &hub.admin]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("viewer"));
}

#[tokio::test]
async fn sigterm_ends_open_streams_and_exits_cleanly() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(Launch::new(dir.path())).await.unwrap();
    let (s, _) = hub
        .post("/api/v1/ingest", &json!({"updates": [{"provider": "p", "service": "s", "resource": "r", "value": 1}]}))
        .await
        .unwrap();
    assert_eq!(s, 200);
    let sse = client().get(format!("{}/api/v1/events", hub.base)).bearer_auth(&hub.admin).send().await.unwrap();
    assert_eq!(sse.status(), 200);
    let mut body = sse.bytes_stream();
    let started = std::time::Instant::now();
    let status = tokio::task::spawn_blocking(move || hub.stop()).await.unwrap().unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "shutdown took {:?}", started.elapsed());
    // The stream was ended by the hub, not left hanging.
    let end =
        tokio::time::timeout(std::time::Duration::from_secs(5), async { while let Some(Ok(_)) = body.next().await {} })
            .await;
    assert!(end.is_ok(), "the SSE stream did not end");
}
