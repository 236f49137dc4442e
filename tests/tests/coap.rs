//! CoAP through the real binary: `hub serve` starts the CoAP endpoint and installs the official CoAP adapter;
//! libcoap's `coap-client-notls` posts readings (with and without a device token), and ACT reaches a
//! `coap-server-notls` device.

use std::{path::PathBuf, process::Command, time::Duration};

use hub_e2e::{HubProcess, Launch, client, free_udp_port, require_program, sse_until};
use serde_json::{Value, json};

const LIBCOAP: &str = "apt-get install -y libcoap3-bin";

fn coap_client() -> PathBuf {
    require_program("coap-client-notls", LIBCOAP)
}

/// Runs `coap-client-notls -v 7 ARGS URI` (bounded by its own `-B` wait); returns what it printed.
fn coap(args: &[&str], uri: &str) -> String {
    let out = Command::new(coap_client()).args(["-B", "10", "-v", "7"]).args(args).arg(uri).output().unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Creates a token for `subject` through the API; returns the secret.
async fn device_token(hub: &HubProcess, subject: &str) -> String {
    let (status, body) = hub.post("/api/v1/tokens", &json!({"subject": subject, "roles": []})).await.unwrap();
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn devices_post_readings_to_hub_serve_and_tokens_are_checked_against_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(Launch::new(dir.path())).await.unwrap();
    let (status, info) = hub.get("/api/v1/plugins/coap").await.unwrap();
    assert_eq!(status, 200, "the official CoAP adapter is installed by `hub serve`: {info}");
    assert_eq!(info["state"], "running", "{info}");
    let base = format!("coap://127.0.0.1:{}", hub.coap_port);

    // Anonymous on loopback, as for MQTT: a JSON reading with the device's timestamp, seen on a stream.
    let sse = hub.events("provider=noise-1").await;
    let out = coap(
        &["-m", "put", "-t", "json", "-e", r#"{"value": 71.5, "timestamp": "2026-11-22T08:00:00Z"}"#],
        &format!("{base}/up/noise-1/sound/level"),
    );
    assert!(out.contains("2.04"), "coap-client got no 2.04:\n{out}");
    let seen = sse_until(sse, "\"resource\":\"level\"").await;
    assert!(seen.contains("71.5"), "{seen}");
    let level = hub.wait_for_value("noise-1/services/sound/resources/level", &json!(71.5)).await;
    assert_eq!(level["timestamp"], "2026-11-22T08:00:00Z", "{level}");

    // A SenML pack under the provider's path.
    let pack = r#"[{"bn":"env/","n":"temperature","v":19.25},{"n":"humidity","v":41}]"#;
    let out = coap(&["-m", "post", "-t", "110", "-e", pack], &format!("{base}/up/meter-3"));
    assert!(out.contains("2.04"), "{out}");
    hub.wait_for_value("meter-3/services/env/resources/temperature", &json!(19.25)).await;
    hub.wait_for_value("meter-3/services/env/resources/humidity", &json!(41.0)).await;

    // A device token is bound to what the policy lets its subject write.
    let policy = "p, admin, *, *\np, plugin:coap, *, write\np, plugin:mqtt, *, write\np, plugin:lorawan, lora-*, write\n\
                  p, dev-7, noise-7/*, write\n";
    assert_eq!(hub.put_policy(policy).await.unwrap(), 204);
    let token = device_token(&hub, "dev-7").await;
    let out = coap(&["-m", "put", "-t", "json", "-e", "55"], &format!("{base}/up/noise-7/sound/level?token={token}"));
    assert!(out.contains("2.04"), "{out}");
    hub.wait_for_value("noise-7/services/sound/resources/level", &json!(55)).await;
    let out = coap(&["-m", "put", "-t", "json", "-e", "1"], &format!("{base}/up/noise-8/sound/level?token={token}"));
    assert!(out.contains("4.03"), "another provider is forbidden:\n{out}");
    let out = coap(&["-m", "put", "-t", "json", "-e", "1"], &format!("{base}/up/*?token={token}"));
    assert!(out.contains("4.03") || out.contains("4.00") || out.contains("4.04"), "{out}");
    let out = coap(&["-m", "put", "-t", "json", "-e", "1"], &format!("{base}/up/noise-7/sound/level?token=hub_forged"));
    assert!(out.contains("4.01"), "an unknown token is unauthenticated:\n{out}");

    // Garbage is refused with 4.00 and changes nothing.
    let out = coap(&["-m", "put", "-t", "json", "-e", "{oops"], &format!("{base}/up/noise-1/sound/level"));
    assert!(out.contains("4.00"), "{out}");
    let (_, level) = hub.get("/api/v1/providers/noise-1/services/sound/resources/level").await.unwrap();
    assert_eq!(level["value"], json!(71.5));

    // Discovery lists what the adapter is granted.
    let out = coap(&["-m", "get"], &format!("{base}/.well-known/core"));
    assert!(out.contains("</up"), "{out}");

    // Status and metrics show the endpoint's counters.
    let (status, transports) = hub.get("/api/v1/transports").await.unwrap();
    assert_eq!(status, 200);
    let coap_status = transports.as_array().unwrap().iter().find(|t| t["name"] == "coap").cloned().unwrap_or_default();
    assert_eq!(coap_status["listen"], format!("127.0.0.1:{}", hub.coap_port), "{transports}");
    assert!(coap_status["counters"]["changed"].as_u64().unwrap() >= 3, "{coap_status}");
    assert!(coap_status["counters"]["forbidden"].as_u64().unwrap() >= 1, "{coap_status}");
    let metrics = hub.metrics().await;
    assert!(metrics.contains(r#"hub_transport_events_total{transport="coap",counter="changed"}"#), "{metrics}");
    assert!(metrics.contains(r#"hub_plugin_updates_total{plugin="coap"}"#), "{metrics}");
}

/// `coap-server-notls` on a free port, killed when dropped.
struct CoapDevice(std::process::Child, u16);

impl CoapDevice {
    fn start() -> CoapDevice {
        let port = free_udp_port();
        let child = Command::new(require_program("coap-server-notls", LIBCOAP))
            .args(["-A", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let device = CoapDevice(child, port);
        for _ in 0..100 {
            if coap(&["-m", "get"], &device.uri("/time")).contains("2.05") {
                return device;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("coap-server-notls did not answer on port {port}");
    }

    fn uri(&self, path: &str) -> String {
        format!("coap://127.0.0.1:{}{path}", self.1)
    }
}

impl Drop for CoapDevice {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn act_on_a_coap_device_reaches_it_through_hub_serve() {
    let device = tokio::task::spawn_blocking(CoapDevice::start).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(Launch::new(dir.path())).await.unwrap();

    // The adapter's configuration declares the device and its action; the hub declares the model.
    let config = json!({
        "devices": [{
            "provider": "sign-4", "uri": device.uri("/example_data"), "method": "PUT", "content_format": 0,
            "actions": {"display/show": {"text": "string"}}
        }]
    });
    let res = client()
        .put(format!("{}/api/v1/plugins/coap/config", hub.base))
        .bearer_auth(&hub.admin)
        .json(&json!({"config": config}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let mut declared = Value::Null;
    for _ in 0..150 {
        let (status, body) = hub.get("/api/v1/providers/sign-4/services/display/resources/show").await.unwrap();
        if status == 200 {
            declared = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(declared["kind"], "action", "the adapter declares the device's action: {declared}");

    let (status, result) = hub
        .post(
            "/api/v1/providers/sign-4/services/display/resources/show/act",
            &json!({"params": {"text": "quiet please"}}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{result}");
    let mut stored = String::new();
    for _ in 0..100 {
        stored = tokio::task::spawn_blocking({
            let uri = device.uri("/example_data");
            move || {
                let out = Command::new(coap_client()).args(["-B", "5", "-m", "get"]).arg(uri).output().unwrap();
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            }
        })
        .await
        .unwrap();
        if stored == "quiet please" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stored, "quiet please", "the device stored the ACT's text");

    // Ill-typed parameters never leave the hub.
    let (status, _) = hub
        .post("/api/v1/providers/sign-4/services/display/resources/show/act", &json!({"params": {"text": 3}}))
        .await
        .unwrap();
    assert_eq!(status, 422);
}
