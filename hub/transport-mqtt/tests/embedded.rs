//! The embedded broker against real peers: `mosquitto_pub` and `mosquitto_sub` on loopback.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use common::*;
use hub_plugin_sdk::abi::{InboundMessage, OutboundMessage};
use hub_runtime::Outbound;
use hub_transport_mqtt::{BrokerConfig, EmbeddedBroker, MqttError, MqttOutbound, StaticDeviceAuth};
use tokio::sync::mpsc;

fn loopback_config() -> BrokerConfig {
    BrokerConfig { listen: "127.0.0.1:0".parse().unwrap(), ..BrokerConfig::default() }
}

fn devices() -> Arc<StaticDeviceAuth> {
    Arc::new(StaticDeviceAuth::new().with_device("meter-7", "token-7", "meters-*"))
}

async fn start(config: BrokerConfig, capacity: usize) -> Result<(EmbeddedBroker, mpsc::Receiver<InboundMessage>)> {
    let (tx, rx) = mpsc::channel(capacity);
    let broker = EmbeddedBroker::start(&config, devices(), tx).await?;
    Ok((broker, rx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_publish_reaches_the_hub_with_topic_payload_and_flags() -> Result<()> {
    let (broker, mut rx) = start(loopback_config(), 16).await?;
    assert!(broker.anonymous_allowed(), "loopback without allow_anonymous accepts anonymous devices");
    let addr = broker.local_addr();
    let topic = unique("hub/up/meters-1/power");

    let t = topic.clone();
    tokio::task::spawn_blocking(move || publish(addr, &t, "{\"w\":42}", 1)).await??;
    let message = recv_matching(&mut rx, &topic, "{\"w\":42}").await?;
    assert_eq!(message.transport, "mqtt");
    assert_eq!(message.metadata.get("retain").map(String::as_str), Some("false"));
    assert_eq!(message.metadata.get("broker").map(String::as_str), Some("embedded"));
    assert!(message.received_us > 0);
    assert!(broker.stats().messages_in >= 1);
    Ok(())
}

/// Publishes from the hub until a `mosquitto_sub` (which may not have subscribed yet) has what it waits for.
async fn publish_until_received(
    outbound: &dyn Outbound,
    sub: std::process::Child,
    message: OutboundMessage,
) -> Result<String> {
    let mut sub = sub;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !exited(&mut sub) && tokio::time::Instant::now() < deadline {
        outbound.send("test-plugin", message.clone()).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let output = tokio::task::spawn_blocking(move || wait_child(sub, Duration::from_secs(1))).await??;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_publish_reaches_a_mosquitto_sub() -> Result<()> {
    let (broker, _rx) = start(loopback_config(), 1024).await?;
    let addr = broker.local_addr();
    let topic = unique("hub/down/meters-1/set");
    let sub = spawn_sub(addr, &topic, 1, &["-q", "1"])?;
    let outbound = MqttOutbound::new().with_embedded(Arc::new(broker));

    let message = OutboundMessage::mqtt(&topic, "on").with_metadata("qos", "1");
    let stdout = publish_until_received(&outbound, sub, message).await?;
    assert_eq!(stdout.trim(), format!("{topic} on"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_is_an_error_naming_the_key_and_the_flag() -> Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let config = BrokerConfig { listen: taken.local_addr()?, ..BrokerConfig::default() };
    let (tx, _rx) = mpsc::channel(1);
    let error = EmbeddedBroker::start(&config, devices(), tx).await.expect_err("the port is taken");
    assert!(matches!(error, MqttError::AddressInUse { .. }), "{error:?}");
    let text = error.to_string();
    assert!(text.contains("mqtt.broker.listen") && text.contains("--mqtt-listen"), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_anonymous_access_devices_need_valid_credentials() -> Result<()> {
    let config = BrokerConfig { allow_anonymous: Some(false), ..loopback_config() };
    let (broker, mut rx) = start(config, 16).await?;
    assert!(!broker.anonymous_allowed());
    let addr = broker.local_addr();
    let topic = unique("hub/up/meters-7/power");

    let refused = move |args: Vec<String>| -> Result<bool> {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Ok(!mosquitto_pub(addr, &args)?.status.success())
    };
    let base = vec!["-t".to_owned(), topic.clone(), "-m".to_owned(), "x".to_owned(), "-q".to_owned(), "1".to_owned()];
    let t = base.clone();
    assert!(tokio::task::spawn_blocking(move || refused(t)).await??, "anonymous must be refused");
    let mut wrong = base.clone();
    wrong.extend(["-u", "meter-7", "-P", "nope"].map(String::from));
    assert!(tokio::task::spawn_blocking(move || refused(wrong)).await??, "a wrong password must be refused");
    eventually(WAIT, "the wrong password is counted", || broker.stats().auth_refused >= 1).await?;

    let mut good = vec!["-t".to_owned(), topic.clone(), "-m".to_owned(), "ok".to_owned(), "-q".to_owned()];
    good.extend(["1", "-u", "meter-7", "-P", "token-7"].map(String::from));
    assert!(!tokio::task::spawn_blocking(move || refused(good)).await??, "valid credentials must be accepted");
    let message = recv_matching(&mut rx, &topic, "ok").await?;
    assert_eq!(message.address, topic);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_slows_intake_and_loses_nothing_within_the_log_bound() -> Result<()> {
    // A channel of 2 that nobody reads for a while: the broker must hold the rest, then deliver in order.
    let (broker, mut rx) = start(loopback_config(), 2).await?;
    let addr = broker.local_addr();
    let topic = unique("hub/up/slow/v");
    let count = 500usize;
    let lines: String = (0..count).map(|i| format!("{i}\n")).collect();
    let t = topic.clone();
    tokio::task::spawn_blocking(move || -> Result<()> {
        use std::io::Write;
        let bin = require_binary("mosquitto_pub")?;
        let mut child = std::process::Command::new(bin)
            .args(["-h", "127.0.0.1", "-p", &addr.port().to_string(), "-t", &t, "-q", "1", "-l"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        child.stdin.take().map(|mut s| s.write_all(lines.as_bytes())).transpose()?;
        let output = wait_child(child, WAIT)?;
        anyhow::ensure!(output.status.success(), "mosquitto_pub -l failed: {:?}", output);
        Ok(())
    })
    .await??;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(broker.stats().messages_in <= 3, "the inbound task must wait for the channel, not buffer");

    for expected in 0..count {
        let message = recv(&mut rx, WAIT).await?;
        assert_eq!(message.address, topic);
        assert_eq!(message.payload.as_str(), Some(expected.to_string().as_str()));
    }
    Ok(())
}

#[test]
fn anonymous_defaults_follow_the_listen_address() {
    let any: SocketAddr = "0.0.0.0:1883".parse().unwrap();
    let public = BrokerConfig { listen: any, ..BrokerConfig::default() };
    assert!(!public.anonymous_allowed(), "a non-loopback address requires credentials");
    let public_open = BrokerConfig { allow_anonymous: Some(true), ..public.clone() };
    assert!(public_open.anonymous_allowed(), "unless the config says otherwise");
    assert!(BrokerConfig::default().anonymous_allowed(), "the default loopback address accepts anonymous devices");
    let v6: SocketAddr = "[::1]:1883".parse().unwrap();
    assert!(BrokerConfig { listen: v6, ..BrokerConfig::default() }.anonymous_allowed());
}
