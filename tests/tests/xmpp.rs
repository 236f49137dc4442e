//! XMPP through the real binary: `hub serve` connects to a real Prosody (STARTTLS, SASL) as `hub@localhost`,
//! follows the SOX nodes that slixmpp devices publish on, and the official `xmpp` adapter maps them to providers.
//! ACT publishes a SOX command the device hears. A bounded Fujisawa-style load (many trucks publishing at once)
//! arrives complete.

use std::time::Duration;

use hub_e2e::{
    HubProcess, Launch,
    prosody::{Prosody, hub_server_entry, run_sox_device, run_sox_device_at},
};
use serde_json::{Value, json};

/// Starts a hub that follows `server`, listing its nodes every 200 ms (new devices appear quickly).
async fn hub_for(server: &Prosody, dir: &std::path::Path) -> HubProcess {
    let config = dir.join("hub.toml");
    std::fs::write(&config, hub_server_entry(server, "fujisawa", 200)).unwrap();
    let mut launch = Launch::new(dir);
    launch.args = vec!["--config".into(), config.display().to_string()];
    HubProcess::start(launch).await.unwrap()
}

async fn wait_for(hub: &HubProcess, what: &str, check: impl Fn(&Value) -> bool, path: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..300 {
        let (status, body) = hub.get(path).await.unwrap_or((0, Value::Null));
        if status == 200 && check(&body) {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: never true; last {path}: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sox_devices_become_providers_and_act_reaches_them() {
    let server = Prosody::start(true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_for(&server, dir.path()).await;

    // A truck whose name is not a hub name: Japanese text and a space.
    let device = "藤沢 truck 12";
    run_sox_device(
        &server,
        &[
            "meta",
            "--device",
            device,
            "--transducer",
            "speed,Speed,km/h,0,200",
            "--transducer",
            "pm2.5,PM2.5,ug/m3,0,1000",
            "--transducer",
            "light,Warning light,,0,1,actuate",
        ],
    )
    .unwrap();
    run_sox_device(
        &server,
        &["data", "--device", device, "--value", "speed=41.5@2026-12-02T17:04:05.250+09:00", "--value", "pm2.5=12"],
    )
    .unwrap();

    // The provider appears under its safe name, with the original as its friendly name.
    let providers = wait_for(
        &hub,
        "the truck's provider",
        |body| {
            body["providers"]
                .as_array()
                .is_some_and(|list| list.iter().any(|p| p["name"].as_str().is_some_and(|n| n.contains("truck_12"))))
        },
        "/api/v1/providers",
    )
    .await;
    let provider = providers["providers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .find(|n| n.contains("truck_12"))
        .unwrap()
        .to_owned();
    let friendly =
        hub.wait_for_value(&format!("{provider}/services/admin/resources/friendly_name"), &json!(device)).await;
    assert_eq!(friendly["value"], json!(device));
    let speed = hub.wait_for_value(&format!("{provider}/services/sox/resources/speed"), &json!(41.5)).await;
    // 17:04:05.250 in Japan is 08:04:05.250 UTC.
    assert!(speed["timestamp"].as_str().unwrap().starts_with("2026-12-02T08:04:05.25"), "{speed}");
    let (_, resource) = hub.get(&format!("/api/v1/providers/{provider}/services/sox/resources/speed")).await.unwrap();
    assert_eq!(resource["unit"], json!("km/h"), "{resource}");

    // The transport reports its link.
    let (_, transports) = hub.get("/api/v1/transports").await.unwrap();
    let xmpp = transports.as_array().unwrap().iter().find(|t| t["name"] == "xmpp").expect("xmpp transport").clone();
    assert_eq!(xmpp["links"][0]["connected"], json!(true), "{xmpp}");
    assert!(xmpp["counters"]["items_in"].as_u64().unwrap() >= 2, "{xmpp}");

    // ACT on the actuator publishes a SOX command on the device's data node, which the device hears.
    let (address, ca) = (server.address(), server.ca_file());
    let data_node = format!("{device}_data");
    let listener = tokio::task::spawn_blocking(move || {
        run_sox_device_at(&address, &ca, &["listen", "--node", &data_node, "--count", "1"])
    });
    // The device hears only what is published after its subscription, which a loaded machine may take seconds
    // to set up: the command is sent again every 2 s until the device has heard one (at most 10 times).
    let act = format!("/api/v1/providers/{provider}/services/sox-act/resources/light/act");
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        if listener.is_finished() {
            break;
        }
        let (status, body) = hub.post(&act, &json!({"params": {"value": 1}})).await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let heard = listener.await.unwrap().unwrap().replace("\\\"", "'");
    assert!(
        heard.contains("transducerSetValue") && heard.contains("id='light'") && heard.contains("typedValue='1'"),
        "{heard}"
    );

    hub.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_trucks_arrives_complete() {
    let server = Prosody::start(true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_for(&server, dir.path()).await;
    // The trucks' nodes must appear after the link's first listing: the nodes of that listing are taken as they
    // are (history before the hub came is not imported), the nodes created later are caught up from their first
    // item. The listing follows the session at once and then every 200 ms.
    let linked = |t: &Value| {
        t.as_array().into_iter().flatten().any(|t| t["name"] == "xmpp" && t["links"][0]["connected"] == true)
    };
    wait_for(&hub, "the XMPP link is connected", linked, "/api/v1/transports").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // 20 trucks, 50 items a second each, for 3 seconds: about 3000 items, 6000 readings (bounded for CI; the
    // full Fujisawa load is in the `xmpp` benchmark).
    let out =
        run_sox_device(&server, &["load", "--prefix", "fleet-", "--devices", "20", "--rate", "50", "--seconds", "3"])
            .unwrap();
    let report: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let sent = report["sent"].as_u64().unwrap();
    assert_eq!(report["acked"].as_u64().unwrap(), sent, "the server confirmed every publish: {report}");
    assert!(sent >= 2000, "{report}");
    // Every item is mapped: each truck's speed history holds one point per item it sent.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut stored = 0;
    while std::time::Instant::now() < deadline {
        stored = 0;
        for truck in 0..20 {
            stored += hub.history(&format!("fleet-{truck}/sox/speed")).await.len() as u64;
        }
        if stored >= sent {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if stored != sent {
        let (_, transports) = hub.get("/api/v1/transports").await.unwrap();
        panic!(
            "{stored} speed readings stored of {sent} items published\ntransports: {transports}\nprosody log:\n{}",
            server.log()
        );
    }
    let (_, plugin) = hub.get("/api/v1/plugins/xmpp").await.unwrap();
    assert_eq!((&plugin["stats"]["errors"], &plugin["stats"]["dropped"]), (&json!(0), &json!(0)), "{plugin}");
    let (_, transports) = hub.get("/api/v1/transports").await.unwrap();
    let xmpp = transports.as_array().unwrap().iter().find(|t| t["name"] == "xmpp").unwrap().clone();
    assert!(xmpp["counters"]["items_in"].as_u64().unwrap() >= sent, "{xmpp}");
    hub.stop().unwrap();
}
