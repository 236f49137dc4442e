//! Pseudonymisation with the real binary: phone MAC addresses reported over HTTP and over MQTT (`mosquitto_pub`
//! to the embedded broker, decoded by the official adapter) are kept, shown, streamed and exported to a federation
//! peer only as pseudonyms, stable within the rotation period; no clear MAC is in either hub's files or logs, even
//! at the debug log level.

use std::{path::Path, process::Command, time::Duration};

use hub_e2e::{HubProcess, Launch, require_program};
use serde_json::{Value, json};

const MACS: [&str; 2] = ["a4:5e:60:e1:7f:02", "b8:27:eb:4c:19:d3"];
/// A value of an ordinary resource, which must be found where the MACs must not: proof the search can see.
const MARKER: &str = "lobby-counter-7f3a91";

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in walk(dir) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            found.push(entry.display().to_string());
        }
    }
    found
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

async fn value_of(hub: &HubProcess, path: &str) -> Value {
    let [p, s, r] = path.split('/').collect::<Vec<_>>()[..] else { panic!("{path}") };
    let (status, body) = hub.get(&format!("/api/v1/providers/{p}/services/{s}/resources/{r}")).await.unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    body["value"].clone()
}

async fn wait_for(hub: &HubProcess, path: &str, test: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..300 {
        let [p, s, r] = path.split('/').collect::<Vec<_>>()[..] else { panic!("{path}") };
        let (status, body) = hub.get(&format!("/api/v1/providers/{p}/services/{s}/resources/{r}")).await.unwrap();
        if status == 200 && test(&body["value"]) {
            return body["value"].clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{path} never held the expected value");
}

fn is_pseudonym(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.starts_with("psn:") && s.len() == 36)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mac_addresses_are_kept_shown_and_exported_only_as_pseudonyms() {
    let mosquitto_pub = require_program("mosquitto_pub", "apt-get install mosquitto-clients");
    let logs = tempfile::tempdir().unwrap();

    // The counting hub: MACs are identifiers; everything is logged at debug level.
    let origin_dir = tempfile::tempdir().unwrap();
    let config = origin_dir.path().join("hub.toml");
    std::fs::write(&config, "[privacy]\nidentifiers = [\"*/wifi/mac\"]\npseudonym_rotation = \"1d\"\n").unwrap();
    let origin_log = logs.path().join("origin.log");
    let mut launch = Launch::new(origin_dir.path());
    launch.args = vec!["--config".into(), config.display().to_string()];
    launch.env = vec![("RUST_LOG".into(), "debug".into())];
    launch.log_file = Some(origin_log.clone());
    let origin = HubProcess::start(launch).await.unwrap();

    // Over HTTP, with an ordinary resource beside it.
    let updates = json!({"updates": [
        {"provider": "occ-1", "service": "wifi", "resource": "mac", "value": MACS[0]},
        {"provider": "occ-1", "service": "wifi", "resource": "label", "value": MARKER},
    ]});
    let (status, body) = origin.post("/api/v1/ingest", &updates).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let first = value_of(&origin, "occ-1/wifi/mac").await;
    assert!(is_pseudonym(&first), "{first}");
    assert_eq!(value_of(&origin, "occ-1/wifi/label").await, MARKER);

    // Over MQTT, through the official adapter: the same MAC gets the same pseudonym within the period, another
    // MAC another one.
    for (provider, mac) in [("occ-2", MACS[0]), ("occ-3", MACS[1])] {
        let status = Command::new(&mosquitto_pub)
            .args(["-h", "127.0.0.1", "-p", &origin.mqtt_port.to_string(), "-q", "1"])
            .args(["-t", &format!("hub/up/{provider}/wifi/mac"), "-m", &json!({"value": mac}).to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
    let second = wait_for(&origin, "occ-2/wifi/mac", is_pseudonym).await;
    let third = wait_for(&origin, "occ-3/wifi/mac", is_pseudonym).await;
    assert_eq!(second, first, "one phone, one pseudonym within the period");
    assert_ne!(third, first, "two phones, two pseudonyms");
    let history = origin.history("occ-1/wifi/mac").await;
    assert!(history.iter().all(|p| is_pseudonym(&p["value"])), "{history:?}");

    // A partner hub mirrors the counters: it receives pseudonyms.
    let mirror_dir = tempfile::tempdir().unwrap();
    let mirror_config = mirror_dir.path().join("hub.toml");
    let text = format!(
        "[policy]\ndomain = \"santander\"\n\n[[federation.peers]]\nname = \"fujisawa\"\nurl = \"{}\"\nimport = [\"occ-*\"]\ntoken_env = \"ORIGIN_TOKEN\"\nreconnect_max_secs = 1\n",
        origin.base
    );
    std::fs::write(&mirror_config, text).unwrap();
    let mirror_log = logs.path().join("mirror.log");
    let mut launch = Launch::new(mirror_dir.path());
    launch.args = vec!["--config".into(), mirror_config.display().to_string()];
    launch.env = vec![("ORIGIN_TOKEN".into(), origin.admin.clone()), ("RUST_LOG".into(), "debug".into())];
    launch.log_file = Some(mirror_log.clone());
    let mirror = HubProcess::start(launch).await.unwrap();
    let mirrored = wait_for(&mirror, "fujisawa.occ-3/wifi/mac", |v| !v.is_null()).await;
    assert_eq!(mirrored, third);
    assert_eq!(wait_for(&mirror, "fujisawa.occ-1/wifi/label", |v| !v.is_null()).await, MARKER);

    // Stopped cleanly, so every file is complete: no clear MAC anywhere, in either spelling; the marker is there.
    mirror.stop().unwrap();
    origin.stop().unwrap();
    for dir in [origin_dir.path(), mirror_dir.path(), logs.path()] {
        for mac in MACS {
            for spelling in [mac.to_owned(), mac.to_uppercase(), mac.replace(':', "")] {
                let found = files_containing(dir, &spelling);
                assert!(found.is_empty(), "{spelling} is in clear in {found:?}");
            }
        }
    }
    assert!(!files_containing(origin_dir.path(), MARKER).is_empty(), "the search does not see into the store");
    assert!(!files_containing(mirror_dir.path(), MARKER).is_empty(), "the search does not see into the mirror");
    let logged = std::fs::read_to_string(&origin_log).unwrap();
    assert!(logged.contains("DEBUG"), "the origin did not log at debug level: {logged:.300}");
}
