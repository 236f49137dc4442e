//! The plugin runtime end to end: real wasm fixtures, the real runtime, a real twin over SQLite, a real policy.

mod common;

use std::time::Duration;

use common::*;
use hub_plugin_sdk::abi::InboundMessage;
use hub_runtime::{PluginState, RuntimeError};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn msg(topic: &str, payload: &str) -> InboundMessage {
    InboundMessage::mqtt(topic, payload, hub_model::Timestamp::now().as_micros())
}

async fn install_echo(hub: &Hub, id: &str, config: Option<serde_json::Value>) -> hub_runtime::PluginInfo {
    let wasm = wasm("echo");
    hub.host.install(&manifest(id, "0.1.0", &wasm, ECHO_CAPS), wasm, grant(ECHO_GRANT), config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_flows_acts_and_keeps_state_across_a_restart() {
    let hub = Hub::new().await.unwrap();
    let info = install_echo(&hub, "echo", Some(json!({ "tag": "one" }))).await;
    assert_eq!(info.state, PluginState::Running);
    assert_eq!(hub.host.subscriptions().len(), 1);

    for i in 0..100 {
        hub.host.deliver("echo", msg(&format!("echo/d{}", i % 4), &i.to_string())).await.unwrap();
    }
    wait_for("100 messages counted", WAIT, || hub.value("echo-stats/data/count") == Some(json!(100))).await;
    assert_eq!(hub.value("echo-stats/data/tag"), Some(json!("one")));
    assert_eq!(hub.value("echo-d3/data/value"), Some(json!(99)));

    // Fan-out by subscription: a topic nobody subscribed to reaches nobody.
    assert_eq!(hub.host.dispatch(msg("echo/d1", "7")).await.delivered, 1);
    assert_eq!(hub.host.dispatch(msg("other/x", "7")).await.delivered, 0);
    assert!(hub.host.deliver("echo", msg("other/x", "1")).await.is_err(), "not granted");
    wait_for("dispatched message counted", WAIT, || hub.value("echo-stats/data/count") == Some(json!(101))).await;

    // ACT on a provider the plugin owns reaches the plugin; its outbound message goes to the transport.
    let doc: hub_model::ProviderDoc = serde_json::from_value(json!({
        "services": { "switch": { "resources": { "set": { "kind": "action", "type": "object", "parameters": { "on": "boolean", "fail": "boolean" } } } } }
    }))
    .unwrap();
    hub.twin.put_provider(hub_model::Name::new("echo-d1").unwrap(), &doc).await.unwrap();
    let path: hub_model::ResourcePath = "echo-d1/switch/set".parse().unwrap();
    let params = json!({ "on": true, "fail": false }).as_object().unwrap().clone();
    assert_eq!(hub.twin.act(path.clone(), params).await.unwrap(), json!({ "sent": true }));
    assert_eq!(hub.recorder.addresses(), vec!["mqtt echo/d1/cmd"]);
    let refused = hub.twin.act(path, json!({ "on": true, "fail": true }).as_object().unwrap().clone()).await;
    assert!(matches!(refused, Err(hub_twin::TwinError::Act(hub_twin::ActError::Refused(_)))), "{refused:?}");

    let stats = hub.host.get("echo").unwrap().stats;
    assert_eq!(stats.messages_in, 101);
    assert_eq!(stats.errors, 0);
    assert!(stats.calls >= 3 && stats.latency_p99_us > 0, "{stats:?}");

    // Restart the hub: the plugin loads from the data directory and its state (the count) survives.
    let dir = hub.close().await;
    let hub = Hub::open(dir).await.unwrap();
    let loaded = hub.host.load_installed().await;
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].1.as_ref().unwrap().state, PluginState::Running);
    assert_eq!(hub.host.get("echo").unwrap().config, json!({ "tag": "one" }));
    hub.host.deliver("echo", msg("echo/d1", "1")).await.unwrap();
    wait_for("count continues after restart", WAIT, || hub.value("echo-stats/data/count") == Some(json!(102))).await;
    hub.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_stop_start_config_remove() {
    let hub = Hub::new().await.unwrap();
    install_echo(&hub, "echo", None).await;
    assert!(matches!(
        hub.host
            .install(&manifest("echo", "0.1.0", &wasm("echo"), ECHO_CAPS), wasm("echo"), grant(ECHO_GRANT), None)
            .await,
        Err(RuntimeError::AlreadyExists(_))
    ));

    assert_eq!(hub.host.stop("echo").await.unwrap().state, PluginState::Stopped);
    assert!(matches!(hub.host.deliver("echo", msg("echo/a", "1")).await, Err(RuntimeError::NotRunning { .. })));
    assert_eq!(hub.host.start("echo").await.unwrap().state, PluginState::Running);

    hub.host.set_config("echo", Some(json!({ "tag": "two" }))).await.unwrap();
    hub.host.deliver("echo", msg("echo/a", "1")).await.unwrap();
    wait_for("new config in effect", WAIT, || hub.value("echo-stats/data/tag") == Some(json!("two"))).await;
    assert!(hub.host.set_config("echo", Some(json!([1]))).await.is_err());

    hub.host.remove("echo").await.unwrap();
    assert!(hub.host.get("echo").is_none());
    assert!(!hub.dir.path().join("plugins/echo").exists());
    assert!(hub.twin.store().records("plugin-state:echo").await.unwrap().is_empty());
    assert!(matches!(hub.host.start("echo").await, Err(RuntimeError::NotFound(_))));
    // Nobody owns echo providers any more.
    let path: hub_model::ResourcePath = "echo-a/switch/set".parse().unwrap();
    assert!(hub.twin.act_registry().owner(&path).is_none());
    hub.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_refuses_bad_digest_unrequested_grants_and_wrong_hub() {
    let hub = Hub::new().await.unwrap();
    let wasm = wasm("echo");

    let mut bad = wasm.clone();
    bad.push(0);
    let err = hub.host.install(&manifest("echo", "0.1.0", &wasm, ECHO_CAPS), bad, grant(ECHO_GRANT), None).await;
    assert!(matches!(&err, Err(RuntimeError::InvalidInput(m)) if m.starts_with("sha256:")), "{err:?}");

    let greedy = grant("providers = [\"*\"]");
    let err = hub.host.install(&manifest("echo", "0.1.0", &wasm, ECHO_CAPS), wasm.clone(), greedy, None).await;
    assert!(matches!(&err, Err(RuntimeError::InvalidInput(m)) if m.starts_with("grant.providers[0]:")), "{err:?}");

    let future = manifest("echo", "0.1.0", &wasm, ECHO_CAPS).replace(">=0.1.0, <0.2.0", ">=2.0.0");
    let err = hub.host.install(&future, wasm.clone(), grant(ECHO_GRANT), None).await;
    assert!(matches!(&err, Err(RuntimeError::InvalidInput(m)) if m.starts_with("hub:")), "{err:?}");

    let not_wasm = b"definitely not wasm".to_vec();
    let err = hub.host.install(&manifest("junk", "0.1.0", &not_wasm, ""), not_wasm, grant(""), None).await;
    assert!(matches!(err, Err(RuntimeError::Load { .. })), "{err:?}");

    let err = hub.host.install("id = \"x\"\nversoin = 1", wasm, grant(""), None).await;
    assert!(matches!(err, Err(RuntimeError::Manifest(_))), "{err:?}");
    assert!(hub.host.list().is_empty());
    hub.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_adapter_maps_topics_and_acts() {
    let hub = Hub::new().await.unwrap();
    let wasm = wasm("template");
    let text = std::fs::read_to_string(repo_root().join("plugins/template/plugin.toml")).unwrap();
    let text = text.replace(&"0".repeat(64), &sha256(&wasm));
    let requested = hub_runtime::Manifest::parse(&text).unwrap().capabilities;
    let info = hub.host.install(&text, wasm, requested, None).await.unwrap();
    assert_eq!((info.state, info.tick_ms), (PluginState::Running, Some(10_000)));

    assert_eq!(hub.host.dispatch(msg("city/7/temperature", "21.5")).await.delivered, 1);
    wait_for("template reading", WAIT, || hub.value("tmpl-7/sensors/temperature") == Some(json!(21.5))).await;
    let path: hub_model::ResourcePath = "tmpl-7/switch/set".parse().unwrap();
    let result = hub.twin.act(path, json!({ "on": false }).as_object().unwrap().clone()).await.unwrap();
    assert_eq!(result, json!({ "sent": { "on": false } }));
    assert_eq!(hub.recorder.addresses(), vec!["mqtt city/7/cmd"]);
    hub.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_outside_the_namespace_and_policy_are_refused_and_counted() {
    let hub = Hub::new().await.unwrap();
    let wasm = wasm("outside-namespace");
    let caps = "[capabilities]\nproviders = [\"inside-*\"]\n[capabilities.mqtt]\nsubscribe = [\"in/#\"]\n";
    hub.host
        .install(
            &manifest("trespasser", "0.1.0", &wasm, caps),
            wasm,
            grant("providers = [\"inside-*\"]\n[mqtt]\nsubscribe = [\"in/#\"]"),
            None,
        )
        .await
        .unwrap();
    hub.host.deliver("trespasser", msg("in/x", "1")).await.unwrap();
    wait_for("inside update", WAIT, || hub.value("inside-1/data/n").is_some()).await;
    wait_for("rejects counted", WAIT, || hub.host.get("trespasser").unwrap().stats.rejects >= 2).await;
    assert!(hub.twin.provider("victim-1").is_none());
    assert!(hub.twin.provider("victim-2").is_none());
    let info = hub.host.get("trespasser").unwrap();
    assert_eq!(info.state, PluginState::Running, "refusals are not failures");
    assert_eq!(info.stats.errors, 0);

    // The policy has the last word: `echo2`'s grant covers echo-*, but the policy lets plugin:echo2 write
    // nothing when its id is not in the policy.
    let echo = common::wasm("echo");
    hub.host.install(&manifest("unlisted", "0.1.0", &echo, ECHO_CAPS), echo, grant(ECHO_GRANT), None).await.unwrap();
    hub.host.deliver("unlisted", msg("echo/p", "1")).await.unwrap();
    wait_for("policy refusals", WAIT, || hub.host.get("unlisted").unwrap().stats.rejects >= 3).await;
    assert!(hub.twin.provider("echo-p").is_none());
    assert!(hub.host.get("unlisted").unwrap().stats.last_error.unwrap().contains("denied by policy"));
    hub.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_outside_the_grant_are_refused_and_counted() {
    let hub = Hub::new().await.unwrap();
    let wasm = wasm("outside-topics");
    let caps = "[capabilities.mqtt]\nsubscribe = [\"in/#\"]\npublish = [\"allowed/#\", \"forbidden/#\"]\n";
    // The manifest asks for forbidden/#, but the admin grants only allowed/#.
    let granted = grant("[mqtt]\nsubscribe = [\"in/#\"]\npublish = [\"allowed/#\"]");
    hub.host.install(&manifest("loud", "0.1.0", &wasm, caps), wasm, granted, None).await.unwrap();
    for _ in 0..3 {
        hub.host.deliver("loud", msg("in/x", "hello")).await.unwrap();
    }
    wait_for("sends and rejects", WAIT, || hub.host.get("loud").unwrap().stats.rejects >= 6).await;
    assert_eq!(hub.recorder.addresses(), vec!["mqtt allowed/out"; 3]);
    let stats = hub.host.get("loud").unwrap().stats;
    assert_eq!((stats.messages_out, stats.rejects, stats.errors), (3, 6, 0));
    hub.close().await;
}

/// Installs `hostile` next to a healthy echo, feeds both, and checks the hostile one is contained, counted and
/// quarantined while echo processes every message.
async fn hostile_is_contained(fixture: &str, limits: &str) {
    let hub = Hub::new().await.unwrap();
    install_echo(&hub, "echo", None).await;
    let wasm = wasm(fixture);
    let caps =
        format!("[capabilities]\nproviders = [\"bad-*\"]\n[capabilities.mqtt]\nsubscribe = [\"bad/#\"]\n{limits}");
    let info = hub
        .host
        .install(
            &manifest("bad", "0.1.0", &wasm, &caps),
            wasm,
            grant("providers = [\"bad-*\"]\n[mqtt]\nsubscribe = [\"bad/#\"]"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(info.state, PluginState::Running);

    let host = hub.host.clone();
    let feeder = tokio::spawn(async move {
        for i in 0..40 {
            // Refused once quarantined; that is the point.
            let _ = host.deliver("bad", msg("bad/x", &i.to_string())).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    for i in 0..400 {
        hub.host.deliver("echo", msg("echo/ok", &i.to_string())).await.unwrap();
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    wait_for("quarantine", WAIT, || hub.host.get("bad").unwrap().state == PluginState::Quarantined).await;
    wait_for("echo kept flowing", WAIT, || hub.value("echo-stats/data/count") == Some(json!(400))).await;
    feeder.await.unwrap();

    let bad = hub.host.get("bad").unwrap();
    assert!(bad.stats.errors >= 3, "{:?}", bad.stats);
    assert!(bad.stats.restarts >= 2, "{:?}", bad.stats);
    assert!(bad.stats.last_error.is_some());
    assert!(hub.twin.provider("bad-x").is_none());
    let echo = hub.host.get("echo").unwrap();
    assert_eq!((echo.state, echo.stats.errors), (PluginState::Running, 0));
    assert!(matches!(hub.host.deliver("bad", msg("bad/x", "1")).await, Err(RuntimeError::NotRunning { .. })));

    // An admin can give it another chance: it starts (and will fail again on its next batch).
    assert_eq!(hub.host.start("bad").await.unwrap().state, PluginState::Running);
    hub.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_is_contained() {
    hostile_is_contained("loop", "[limits]\ntimeout_ms = 200\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_is_contained() {
    hostile_is_contained("membomb", "[limits]\nmemory_mib = 8\ntimeout_ms = 2000\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_is_contained() {
    hostile_is_contained("trap", "[limits]\ntimeout_ms = 200\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_output_is_contained() {
    hostile_is_contained("garbage", "[limits]\ntimeout_ms = 200\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_under_load_loses_nothing() {
    let hub = Hub::new().await.unwrap();
    install_echo(&hub, "echo", Some(json!({ "tag": "v1" }))).await;
    const N: usize = 3000;
    let host = hub.host.clone();
    let producer = tokio::spawn(async move {
        for i in 0..N {
            host.deliver("echo", msg("echo/load", &i.to_string())).await.unwrap();
            if i % 100 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });
    // Upgrade twice while the producer runs: to 0.2.0, then to 0.3.0 with a new grant and config.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let wasm = common::wasm("echo");
    let info =
        hub.host.upgrade("echo", &manifest("echo", "0.2.0", &wasm, ECHO_CAPS), wasm.clone(), None).await.unwrap();
    assert_eq!((info.version.as_str(), info.state), ("0.2.0", PluginState::Running));
    hub.host.set_config("echo", Some(json!({ "tag": "v3" }))).await.unwrap();
    let info =
        hub.host.upgrade("echo", &manifest("echo", "0.3.0", &wasm, ECHO_CAPS), wasm.clone(), None).await.unwrap();
    assert_eq!(info.version, "0.3.0");
    producer.await.unwrap();

    wait_for("every message counted", WAIT, || hub.value("echo-stats/data/count") == Some(json!(N))).await;
    // The tag is reported with each batch: one more message shows the configuration in effect now.
    hub.host.deliver("echo", msg("echo/load", "0")).await.unwrap();
    wait_for("last message counted", WAIT, || hub.value("echo-stats/data/count") == Some(json!(N + 1))).await;
    assert_eq!(hub.value("echo-stats/data/tag"), Some(json!("v3")));
    let stats = hub.host.get("echo").unwrap().stats;
    assert_eq!((stats.messages_in, stats.dropped, stats.errors), (N as u64 + 1, 0, 0));

    // A failed upgrade (the module is not wasm) leaves the running version alone.
    let junk = b"junk".to_vec();
    assert!(hub.host.upgrade("echo", &manifest("echo", "0.4.0", &junk, ECHO_CAPS), junk, None).await.is_err());
    assert_eq!(hub.host.get("echo").unwrap().version, "0.3.0");
    // An upgrade for another id is refused.
    assert!(hub.host.upgrade("echo", &manifest("other", "0.4.0", &wasm, ECHO_CAPS), wasm, None).await.is_err());
    hub.close().await;
}

/// A runtime whose pipeline fills: small batches, no linger, so calls run ahead of the durable commits.
async fn pipelined_hub(dir: tempfile::TempDir) -> Hub {
    let mut config = host_config(dir.path());
    config.max_batch = 8;
    config.linger = Duration::ZERO;
    config.pipeline_depth = 4;
    Hub::open_with(dir, config).await.unwrap()
}

/// The plugin's stored state (`count`, JSON) and the stored readings it produced.
async fn stored_count_and_readings(hub: &Hub) -> (u64, u64, usize) {
    let state = hub.twin.store().records(&hub_runtime::state_namespace("echo")).await.unwrap();
    let count = state.iter().find(|(k, _)| k == "count").map(|(_, v)| v.clone()).unwrap_or_default();
    let count: u64 = if count.is_empty() {
        0
    } else {
        let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, count).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    let reported = hub.value("echo-stats/data/count").and_then(|v| v.as_u64()).unwrap_or(0);
    let page = hub
        .twin
        .store()
        .history(hub_store::HistoryQuery {
            path: "echo-load/data/value".parse().unwrap(),
            from: None,
            to: None,
            limit: 1_000_000,
            order: hub_store::Order::Asc,
            cursor: None,
        })
        .await
        .unwrap();
    (count, reported, page.points.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_batches_apply_in_order_with_their_state() {
    let hub = pipelined_hub(tempfile::tempdir().unwrap()).await;
    install_echo(&hub, "echo", Some(json!({ "tag": "v1" }))).await;
    let mut bus = hub.twin.bus().subscribe();
    const N: u64 = 2000;
    let reader = tokio::spawn(async move {
        // Every batch reports the running count: in apply order, it only grows, and ends at N.
        let mut counts = Vec::new();
        while counts.last() != Some(&N) {
            match tokio::time::timeout(WAIT, bus.recv()).await.expect("bus event") {
                hub_bus::Received::Event(event) => {
                    if let hub_bus::Change::Updates(updates) = &event.change {
                        counts.extend(
                            updates
                                .iter()
                                .filter(|u| u.path.to_string() == "echo-stats/data/count")
                                .filter_map(|u| u.value.as_u64()),
                        );
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        counts
    });
    for i in 0..N {
        hub.host.deliver("echo", msg("echo/load", &i.to_string())).await.unwrap();
    }
    let counts = reader.await.unwrap();
    assert!(counts.len() > 1, "several batches: {}", counts.len());
    assert!(counts.windows(2).all(|w| w[0] < w[1]), "applied out of order: {counts:?}");
    wait_for("last reading", WAIT, || hub.value("echo-load/data/value") == Some(json!(N - 1))).await;
    assert_eq!(stored_count_and_readings(&hub).await, (N, N, N as usize));
    let stats = hub.host.get("echo").unwrap().stats;
    assert_eq!((stats.messages_in, stats.dropped, stats.errors, stats.rejects), (N, 0, 0, 0), "{stats:?}");
    assert!(stats.calls >= counts.len() as u64, "{stats:?}");
    hub.close().await;
}

/// A crash at any point of the pipeline leaves a plugin's stored state in step with the readings its calls
/// stored: the store goes away mid-stream (every commit after that point fails, as if the process had died),
/// and after a restart the state says exactly how many readings are stored, and counting continues from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_pipeline_keeps_state_and_readings_in_step() {
    let hub = pipelined_hub(tempfile::tempdir().unwrap()).await;
    install_echo(&hub, "echo", None).await;
    let host = hub.host.clone();
    let producer = tokio::spawn(async move {
        for i in 0..20_000u64 {
            if host.deliver("echo", msg("echo/load", &i.to_string())).await.is_err() {
                break;
            }
        }
    });
    wait_for("some readings stored", WAIT, || {
        hub.value("echo-stats/data/count").and_then(|v| v.as_u64()).is_some_and(|n| n >= 500)
    })
    .await;
    hub.twin.store().close().await.unwrap();
    producer.abort();
    let dir = hub.close().await;

    let hub = pipelined_hub(dir).await;
    let (count, reported, readings) = stored_count_and_readings(&hub).await;
    assert!(count >= 500, "{count}");
    assert_eq!((reported, readings), (count, count as usize), "state and readings out of step");
    hub.host.load_installed().await;
    for i in 0..10 {
        hub.host.deliver("echo", msg("echo/load", &i.to_string())).await.unwrap();
    }
    let want = json!(count + 10);
    wait_for("counting continues", WAIT, || hub.value("echo-stats/data/count") == Some(want.clone())).await;
    assert_eq!(stored_count_and_readings(&hub).await, (count + 10, count + 10, count as usize + 10));
    hub.close().await;
}

/// Upgrades and a stop while the pipeline is full: every message delivered before them is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_and_stop_with_a_full_pipeline_lose_nothing() {
    let hub = pipelined_hub(tempfile::tempdir().unwrap()).await;
    install_echo(&hub, "echo", Some(json!({ "tag": "v1" }))).await;
    const N: u64 = 3000;
    let host = hub.host.clone();
    let producer = tokio::spawn(async move {
        for i in 0..N {
            host.deliver("echo", msg("echo/load", &i.to_string())).await.unwrap();
        }
    });
    let wasm = common::wasm("echo");
    for (n, version) in ["0.2.0", "0.3.0", "0.4.0"].into_iter().enumerate() {
        let at = 500 * (n as u64 + 1);
        wait_for("messages flowing", WAIT, || hub.host.get("echo").unwrap().stats.messages_in >= at).await;
        let manifest = manifest("echo", version, &wasm, ECHO_CAPS);
        hub.host.upgrade("echo", &manifest, wasm.clone(), None).await.unwrap();
        hub.host.set_config("echo", Some(json!({ "tag": version }))).await.unwrap();
    }
    producer.await.unwrap();
    wait_for("every message counted", WAIT, || hub.value("echo-stats/data/count") == Some(json!(N))).await;
    assert_eq!(stored_count_and_readings(&hub).await, (N, N, N as usize));

    // A stop answers once what the plugin already produced is applied: the count it reported is stored.
    for i in 0..200 {
        hub.host.deliver("echo", msg("echo/load", &i.to_string())).await.unwrap();
    }
    hub.host.stop("echo").await.unwrap();
    let stats = hub.host.get("echo").unwrap().stats;
    let (count, reported, readings) = stored_count_and_readings(&hub).await;
    assert_eq!(count + stats.dropped, N + 200, "{stats:?}");
    assert_eq!((reported, readings), (count, count as usize));
    assert_eq!(stats.errors, 0);
    hub.close().await;
}
