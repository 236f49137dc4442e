//! MQTT end to end with real peers: `mosquitto_pub` and `mosquitto_sub` talk to the hub's embedded broker, or to
//! the system's Mosquitto that the hub bridges to; the official MQTT adapter (a sandboxed WASM plugin that
//! `hub serve` installs by itself) maps readings into the twin and turns ACT into a command a device receives.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use base64::Engine as _;
use hub_e2e::{HubProcess, Launch, build_plugin, client, sse_until, unique_schema};
use serde_json::{Value, json};

fn mosquitto_pub(port: u16, topic: &str, message: &str) {
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-t", topic, "-m", message])
        .status()
        .expect("mosquitto_pub is missing: apt-get install mosquitto-clients");
    assert!(status.success(), "mosquitto_pub failed");
}

/// A device listening on `filter`: `mosquitto_sub -v -d` writing `topic payload` lines (and debug lines) to a
/// file, ending after `count` messages or 30 s.
struct Device {
    child: Child,
    output: tempfile::NamedTempFile,
}

impl Device {
    /// Subscribes and returns once the broker acknowledged the subscription.
    fn subscribe(port: u16, filter: &str, count: u32) -> Device {
        let output = tempfile::NamedTempFile::new().expect("a temporary file");
        // Unbuffered, so the SUBACK line is visible while it runs.
        let child = Command::new("stdbuf")
            .args([
                "-o0",
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-q",
                "1",
                "-v",
                "-d",
                "-t",
                filter,
            ])
            .args(["-C", &count.to_string(), "-W", "30"])
            .stdout(Stdio::from(output.reopen().expect("reopening the output file")))
            .stderr(Stdio::null())
            .spawn()
            .expect("stdbuf (coreutils) is missing");
        let device = Device { child, output };
        for _ in 0..100 {
            if device.text().contains("received SUBACK") {
                return device;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "mosquitto_sub did not subscribe within 5 s (apt-get install mosquitto-clients if missing): {}",
            device.text()
        );
    }

    fn text(&self) -> String {
        std::fs::read_to_string(self.output.path()).unwrap_or_default()
    }

    /// The `(topic, payload)` messages received, skipping debug lines; waits for the process to end.
    fn received(mut self) -> Vec<(String, Value)> {
        self.child.wait().expect("waiting for mosquitto_sub");
        self.text()
            .lines()
            .filter(|l| l.starts_with("hub/"))
            .filter_map(|l| l.split_once(' '))
            .map(|(topic, payload)| (topic.to_owned(), serde_json::from_str(payload).unwrap_or(json!(payload))))
            .collect()
    }
}

fn lamp_model() -> String {
    json!({"services": {"light": {"resources": {
        "switch": {"kind": "action", "type": "string", "parameters": {"on": "boolean"}},
        "level": {"kind": "state", "type": "integer"}
    }}}})
    .to_string()
}

#[tokio::test]
async fn the_official_adapter_maps_a_mosquitto_pub_reading_into_the_model_and_a_stream() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(Launch::new(dir.path())).await.unwrap();
    let (status, info) = hub.get("/api/v1/plugins/mqtt").await.unwrap();
    assert_eq!(status, 200, "the official adapter is installed by `hub serve`: {info}");
    assert_eq!(info["state"], "running", "{info}");
    assert_eq!(info["granted"]["mqtt"]["subscribe"], json!(["hub/up/#", "hub/senml/+", "hub/model/+"]), "{info}");

    let sse = client()
        .get(format!("{}/api/v1/events?provider=kiosk.7", hub.base))
        .bearer_auth(&hub.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    mosquitto_pub(
        hub.mqtt_port,
        "hub/up/kiosk.7/env/temperature",
        r#"{"value": 21.5, "timestamp": "2026-11-22T08:00:00Z"}"#,
    );
    let seen = sse_until(sse, "\"resource\":\"temperature\"").await;
    assert!(seen.contains("kiosk.7") && seen.contains("21.5"), "{seen}");

    let body = hub.wait_for_value("kiosk.7/services/env/resources/temperature", &json!(21.5)).await;
    assert_eq!(body["timestamp"], "2026-11-22T08:00:00Z", "the device's timestamp is kept: {body}");

    // A plain value and a SenML pack take the same road.
    mosquitto_pub(hub.mqtt_port, "hub/up/kiosk.7/env/door", "\"open\"");
    hub.wait_for_value("kiosk.7/services/env/resources/door", &json!("open")).await;
    mosquitto_pub(hub.mqtt_port, "hub/senml/kiosk.7", r#"[{"bn": "kiosk.7/", "n": "env/humidity", "v": 40}]"#);
    hub.wait_for_value("kiosk.7/services/env/resources/humidity", &json!(40)).await;

    // Garbage is skipped and counted as a warning; the adapter keeps running and the next reading flows.
    mosquitto_pub(hub.mqtt_port, "hub/up/kiosk.7/env/temperature", "{not json");
    mosquitto_pub(hub.mqtt_port, "hub/up/kiosk.7/env/temperature", "22");
    hub.wait_for_value("kiosk.7/services/env/resources/temperature", &json!(22)).await;
    let (_, info) = hub.get("/api/v1/plugins/mqtt").await.unwrap();
    assert_eq!(info["state"], "running", "{info}");
    assert_eq!(info["stats"]["errors"], 0, "{info}");

    // The plugin's counters are in the Prometheus exposition.
    let metrics = hub.metrics().await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("hub_plugin_updates_total{plugin=\"mqtt\"}"))
        .unwrap_or_else(|| panic!("no plugin counter in:\n{metrics}"));
    let updates: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(updates >= 4, "{line}");
}

#[tokio::test]
async fn act_reaches_a_device_listening_with_mosquitto_sub() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(Launch::new(dir.path())).await.unwrap();
    // The device declares its action over MQTT, then listens for commands.
    mosquitto_pub(hub.mqtt_port, "hub/model/lamp-1", &lamp_model());
    mosquitto_pub(hub.mqtt_port, "hub/up/lamp-1/light/level", "3");
    hub.wait_for_value("lamp-1/services/light/resources/level", &json!(3)).await;
    let device = Device::subscribe(hub.mqtt_port, "hub/down/lamp-1/#", 1);

    let (status, result) = hub
        .post("/api/v1/providers/lamp-1/services/light/resources/switch/act", &json!({"params": {"on": true}}))
        .await
        .unwrap();
    assert_eq!(status, 200, "{result}");
    let received = device.received();
    assert_eq!(received.len(), 1, "{received:?}");
    let (topic, command) = &received[0];
    assert_eq!(topic, "hub/down/lamp-1/light/switch");
    assert_eq!(command["params"], json!({"on": true}), "{command}");
    assert!(command["id"].is_string(), "{command}");
    assert!(result.to_string().contains(command["id"].as_str().unwrap()), "{result} vs {command}");

    // Ill-typed parameters never reach the device.
    let (status, _) = hub
        .post("/api/v1/providers/lamp-1/services/light/resources/switch/act", &json!({"params": {"on": "yes"}}))
        .await
        .unwrap();
    assert_eq!(status, 422);

    // After a restart the action still goes to the adapter that declared it, not to another adapter that may
    // also write every provider (the CoAP adapter), and the device need not declare it again.
    assert!(hub.stop().unwrap().success());
    let hub = HubProcess::start(Launch::new(dir.path())).await.unwrap();
    let device = Device::subscribe(hub.mqtt_port, "hub/down/lamp-1/#", 1);
    let (status, result) = hub
        .post("/api/v1/providers/lamp-1/services/light/resources/switch/act", &json!({"params": {"on": false}}))
        .await
        .unwrap();
    assert_eq!(status, 200, "{result}");
    let received = device.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].1["params"], json!({"on": false}));
}

#[tokio::test]
async fn through_a_bridge_to_the_system_mosquitto_readings_arrive_and_commands_leave() {
    // The machine's Mosquitto on 1883 is shared with other tests: this test's devices have unique names.
    let name = unique_schema("dev").replace('_', "-");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "[[mqtt.bridges]]\nname = \"city\"\nurl = \"mqtt://127.0.0.1:1883\"\nclient_id = \"hub-{name}\"\n\
             subscribe = [\"hub/up/{name}/#\", \"hub/model/{name}\"]\n"
        ),
    )
    .unwrap();
    let mut launch = Launch::new(dir.path());
    launch.args = vec!["--config".into(), config.display().to_string()];
    let hub = HubProcess::start(launch).await.unwrap();

    let path = format!("{name}/services/probe/resources/count");
    // The bridge connects in the background: publish until the reading arrives.
    let mut arrived = false;
    for attempt in 0..50 {
        mosquitto_pub(1883, &format!("hub/up/{name}/probe/count"), &attempt.to_string());
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (status, body) = hub.get(&format!("/api/v1/providers/{path}")).await.unwrap();
        if status == 200 && body["value"].is_i64() {
            arrived = true;
            break;
        }
    }
    assert!(arrived, "no reading came through the bridge from the system Mosquitto (is it running on 1883?)");

    mosquitto_pub(1883, &format!("hub/model/{name}"), &lamp_model());
    for _ in 0..100 {
        let (status, _) = hub.get(&format!("/api/v1/providers/{name}/services/light/resources/switch")).await.unwrap();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let device = Device::subscribe(1883, &format!("hub/down/{name}/#"), 1);
    let (status, result) = hub
        .post(
            &format!("/api/v1/providers/{name}/services/light/resources/switch/act"),
            &json!({"params": {"on": false}}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{result}");
    let received = device.received();
    assert_eq!(received.len(), 1, "the command goes back through the broker the device uses: {received:?}");
    assert_eq!(received[0].0, format!("hub/down/{name}/light/switch"));
    assert_eq!(received[0].1["params"], json!({"on": false}));
}

#[tokio::test]
async fn an_uploaded_adapter_runs_beside_the_official_one() {
    let (manifest, wasm) = build_plugin("template", "hub-plugin-template").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(Launch::new(dir.path())).await.unwrap();
    let policy = "p, admin, *, *\np, plugin:template, tmpl-*, write\np, plugin:mqtt, *, write\n";
    assert_eq!(hub.put_policy(policy).await.unwrap(), 204);
    let grant = json!({"providers": ["tmpl-*"], "mqtt": {"subscribe": ["city/+/+"], "publish": ["city/+/cmd"]}});
    let wasm = base64::engine::general_purpose::STANDARD.encode(&wasm);
    let (s, v) =
        hub.post("/api/v1/plugins", &json!({"manifest": manifest, "wasm": wasm, "grant": grant})).await.unwrap();
    assert_eq!(s, 201, "{v}");

    mosquitto_pub(hub.mqtt_port, "city/kiosk.8/temperature", "19.5");
    mosquitto_pub(hub.mqtt_port, "hub/up/kiosk.9/env/temperature", "18.5");
    hub.wait_for_value("tmpl-kiosk.8/services/sensors/resources/temperature", &json!(19.5)).await;
    hub.wait_for_value("kiosk.9/services/env/resources/temperature", &json!(18.5)).await;
    let (_, list) = hub.get("/api/v1/plugins").await.unwrap();
    let ids: Vec<&str> = list["plugins"].as_array().unwrap().iter().filter_map(|p| p["id"].as_str()).collect();
    assert_eq!(ids, ["coap", "lorawan", "mqtt", "template", "xmpp"], "the official adapters and the upload: {list}");
}
