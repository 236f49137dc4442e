//! Bridges against real Mosquitto brokers: the shared system one on 127.0.0.1:1883 (never restarted, unique
//! topics and client ids) and private ones on free ports for restarts.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, ensure};
use common::*;
use hub_plugin_sdk::abi::{InboundMessage, OutboundMessage};
use hub_runtime::Outbound;
use hub_transport_mqtt::{Bridge, BridgeConfig, MqttOutbound};
use tokio::sync::mpsc;

fn system() -> SocketAddr {
    SYSTEM_MOSQUITTO.parse().unwrap()
}

/// Fails (never skips) when the shared Mosquitto is not there, saying how to get it.
fn require_system_mosquitto() -> Result<()> {
    require_binary("mosquitto")?;
    ensure!(
        std::net::TcpStream::connect_timeout(&system(), Duration::from_secs(2)).is_ok(),
        "these tests need Mosquitto listening on {SYSTEM_MOSQUITTO}: `apt-get install -y mosquitto` and start it \
         (`mosquitto -d` or `service mosquitto start`)"
    );
    Ok(())
}

fn bridge_config(addr: SocketAddr, topic_filter: &str) -> BridgeConfig {
    let mut config = BridgeConfig::new(&unique("b").replace('-', "_"), &format!("mqtt://{addr}"), &unique("hub"));
    config.subscribe = vec![topic_filter.to_owned()];
    config.reconnect_min_ms = 100;
    config.reconnect_max_ms = 1_000;
    config.keep_alive_secs = 5;
    config
}

fn start(config: &BridgeConfig, capacity: usize) -> Result<(Bridge, mpsc::Receiver<InboundMessage>)> {
    let (tx, rx) = mpsc::channel(capacity);
    Ok((Bridge::start(config, tx)?, rx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_reaches_the_hub_through_a_bridge() -> Result<()> {
    require_system_mosquitto()?;
    let topic = unique("city/up/noise-3/level");
    let (bridge, mut rx) = start(&bridge_config(system(), &topic), 64)?;
    wait_for_flow(system(), &mut rx, &topic).await?;

    let t = topic.clone();
    tokio::task::spawn_blocking(move || publish(system(), &t, "63.5", 1)).await??;
    let message = recv_matching(&mut rx, &topic, "63.5").await?;
    assert_eq!(message.metadata.get("broker").map(String::as_str), Some(bridge.name()));
    assert_eq!(message.metadata.get("qos").map(String::as_str), Some("1"));
    let status = bridge.status();
    assert!(status.connected && status.messages_in >= 2 && status.connects == 1, "{status:?}");
    bridge.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_publish_through_a_bridge_reaches_a_mosquitto_sub() -> Result<()> {
    require_system_mosquitto()?;
    let topic = unique("city/down/lamp-9/set");
    let config = bridge_config(system(), &unique("unused/topic"));
    let (bridge, _rx) = start(&config, 8)?;
    eventually(WAIT, "the bridge is connected", || bridge.is_connected()).await?;
    let bridge = std::sync::Arc::new(bridge);
    let outbound = MqttOutbound::new().with_bridge(bridge.clone());

    let mut sub = spawn_sub(system(), &topic, 1, &["-q", "1"])?;
    let message = OutboundMessage::mqtt(&topic, "dim:40").with_metadata("broker", bridge.name());
    let deadline = tokio::time::Instant::now() + WAIT;
    while !exited(&mut sub) && tokio::time::Instant::now() < deadline {
        outbound.send("test-plugin", message.clone()).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let output = tokio::task::spawn_blocking(move || wait_child(sub, Duration::from_secs(1))).await??;
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), format!("{topic} dim:40"));

    let unknown = OutboundMessage::mqtt(&topic, "x").with_metadata("broker", "nope");
    assert!(matches!(outbound.send("p", unknown).await, Err(hub_runtime::TransportError::Refused(_))));
    bridge.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_needs_no_action() -> Result<()> {
    let mut broker = tokio::task::spawn_blocking(PrivateMosquitto::start).await??;
    let addr = broker.addr;
    let topic = unique("city/up/restart/v");
    // A clean session: after the restart the broker has forgotten the subscription, so data flowing again
    // proves the bridge resubscribed.
    let (bridge, mut rx) = start(&bridge_config(addr, &topic), 64)?;
    wait_for_flow(addr, &mut rx, &topic).await?;

    let mut killed = tokio::task::spawn_blocking(move || broker.kill().map(|_| broker)).await??;
    eventually(WAIT, "the bridge sees the broker gone", || !bridge.is_connected()).await?;
    assert!(bridge.status().last_error.is_some());
    // While the broker is down, sending is refused at once rather than queued without bound.
    let refused = bridge.send("p", OutboundMessage::mqtt(&topic, "x")).await;
    assert!(matches!(refused, Err(hub_runtime::TransportError::Unavailable(_))), "{refused:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;

    killed = tokio::task::spawn_blocking(move || killed.restart().map(|_| killed)).await??;
    eventually(WAIT, "the bridge reconnects", || bridge.is_connected()).await?;
    wait_for_flow(addr, &mut rx, &topic).await?;
    let t = topic.clone();
    tokio::task::spawn_blocking(move || publish(addr, &t, "after-restart", 1)).await??;
    recv_matching(&mut rx, &topic, "after-restart").await?;
    let status = bridge.status();
    assert!(status.connects >= 2 && status.connection_failures >= 1, "{status:?}");
    bridge.shutdown().await;
    drop(killed);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_with_a_persistent_session_loses_nothing_across_a_hub_restart() -> Result<()> {
    require_system_mosquitto()?;
    let topic = unique("city/up/persist/v");
    let mut config = bridge_config(system(), &topic);
    config.clean_session = false;
    config.qos = 1;

    let (bridge, mut rx) = start(&config, 64)?;
    wait_for_flow(system(), &mut rx, &topic).await?;
    bridge.shutdown().await;
    drop(rx);

    // The hub is away: the broker queues these for the session.
    let count = 20;
    let t = topic.clone();
    tokio::task::spawn_blocking(move || -> Result<()> {
        for i in 0..count {
            publish(system(), &t, &format!("m{i}"), 1)?;
        }
        Ok(())
    })
    .await??;

    let (bridge, mut rx) = start(&config, 64)?;
    let mut seen = Vec::new();
    while seen.len() < count {
        let message = recv(&mut rx, WAIT).await?;
        if message.address == topic && message.payload.as_str().is_some_and(|p| p.starts_with('m')) {
            seen.push(message.payload.as_str().unwrap_or_default().to_owned());
        }
    }
    let expected: Vec<String> = (0..count).map(|i| format!("m{i}")).collect();
    assert_eq!(seen, expected);
    bridge.shutdown().await;

    // Leave no persistent session behind on the shared broker.
    config.clean_session = true;
    let (cleanup, _rx) = start(&config, 1)?;
    eventually(WAIT, "the cleanup connection is up", || cleanup.is_connected()).await?;
    cleanup.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bridge_config_names_the_key() -> Result<()> {
    let mut config = BridgeConfig::new("ext", "http://example.invalid", "hub-1");
    let (tx, _rx) = mpsc::channel(1);
    let error = Bridge::start(&config, tx.clone()).expect_err("http is not MQTT");
    assert!(error.to_string().contains("mqtt.bridges.ext.url"), "{error}");
    config.url = "mqtt://127.0.0.1:1".to_owned();
    config.qos = 2;
    let error = Bridge::start(&config, tx).expect_err("qos 2 is not offered");
    assert!(error.to_string().contains("mqtt.bridges.ext.qos"), "{error}");
    Ok(())
}
