//! MQTT end to end with real peers: `mosquitto_pub` publishes to the hub's embedded broker, the template adapter
//! (a sandboxed WASM plugin) maps the reading, the twin stores it, and an SSE subscriber sees it.

use std::{process::Command, time::Duration};

use base64::Engine as _;
use futures::StreamExt;
use hub_e2e::{HubProcess, Launch, build_plugin, client};
use serde_json::json;

fn mosquitto_pub(port: u16, topic: &str, message: &str) {
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-t", topic, "-m", message])
        .status()
        .expect("mosquitto_pub is missing: apt-get install mosquitto-clients");
    assert!(status.success(), "mosquitto_pub failed");
}

#[tokio::test]
async fn a_device_reading_flows_from_mosquitto_pub_through_a_plugin_to_a_stream() {
    let (manifest, wasm) = build_plugin("template", "hub-plugin-template").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(Launch::new(dir.path())).await.unwrap();
    let http = client();
    let policy = "p, admin, *, *\np, plugin:template, tmpl-*, write\n";
    assert_eq!(hub.put_policy(policy).await.unwrap(), 204);
    let grant = json!({"providers": ["tmpl-*"], "mqtt": {"subscribe": ["city/+/+"], "publish": ["city/+/cmd"]}});
    let wasm = base64::engine::general_purpose::STANDARD.encode(&wasm);
    let (s, v) =
        hub.post("/api/v1/plugins", &json!({"manifest": manifest, "wasm": wasm, "grant": grant})).await.unwrap();
    assert_eq!(s, 201, "{v}");

    let sse =
        http.get(format!("{}/api/v1/events?provider=tmpl-*", hub.base)).bearer_auth(&hub.admin).send().await.unwrap();
    assert_eq!(sse.status(), 200);
    let mut body = sse.bytes_stream();
    mosquitto_pub(hub.mqtt_port, "city/kiosk.7/temperature", "21.5");

    let seen = tokio::time::timeout(Duration::from_secs(15), async {
        let mut text = String::new();
        while let Some(Ok(chunk)) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if text.contains("\"resource\":\"temperature\"") {
                return text;
            }
        }
        text
    })
    .await
    .expect("no SSE update in time");
    assert!(seen.contains("tmpl-kiosk.7") && seen.contains("21.5"), "{seen}");
    let (s, r) = hub.get("/api/v1/providers/tmpl-kiosk.7/services/sensors/resources/temperature").await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(r["value"], 21.5);
    let (_, info) = hub.get("/api/v1/plugins/template").await.unwrap();
    assert!(info.to_string().contains("messages_in"), "{info}");
}
