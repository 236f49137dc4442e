//! The hub as a CoAP client, against real peers: observing libcoap's `coap-server-notls` (including after it
//! restarts) and an aiocoap device (block-wise notifications), and ACT requests received by both.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use coap_lite::MessageType;
use common::*;
use hub_plugin_sdk::abi::{InboundMessage, OutboundMessage};
use hub_runtime::{Outbound, TransportError};
use hub_transport_coap::wire::{self, format};
use hub_transport_coap::{CoapConfig, ObserveConfig};
use tokio::net::UdpSocket;

fn observing(uri: String, provider: Option<&str>) -> CoapConfig {
    let mut config = loopback_config();
    config.observe = vec![ObserveConfig { uri, provider: provider.map(str::to_owned), interval_s: 60 }];
    config.client.observe_margin_ms = 500;
    config.client.ack_timeout_ms = 300;
    config.client.max_retransmit = 2;
    config.client.reregister_min_ms = 200;
    config.client.reregister_max_ms = 1_000;
    config
}

fn observe_seq(message: &InboundMessage) -> u32 {
    message.metadata.get("observe").and_then(|s| s.parse().ok()).expect("a notification carries its sequence number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observes_coap_server_time_and_registers_again_after_it_restarts() -> Result<()> {
    let (server, port) = coap_server().await?;
    let uri = format!("coap://127.0.0.1:{port}/time");
    let mut hub = start(observing(uri.clone(), Some("clock-1")), devices(), up_only()).await?;

    let first = next_message(&mut hub.messages).await?;
    assert_eq!(first.transport, "coap");
    assert_eq!(first.address, format!("//127.0.0.1:{port}/time"));
    let meta = |m: &InboundMessage, k: &str| m.metadata.get(k).cloned();
    assert_eq!(meta(&first, "provider").as_deref(), Some("clock-1"));
    assert_eq!(meta(&first, "uri"), Some(uri.clone()));
    assert_eq!(meta(&first, "code").as_deref(), Some("2.05"));
    assert_eq!(meta(&first, "peer"), Some(format!("127.0.0.1:{port}")));
    assert!(!first.payload.as_bytes().is_empty(), "the time of day");
    let second = next_message(&mut hub.messages).await?;
    assert!(observe_seq(&second) > observe_seq(&first), "notifications come with growing sequence numbers");

    // The server goes away: the observation lapses (Max-Age 1 s + 0.5 s) and registration fails with backoff.
    drop(server);
    tokio::time::sleep(Duration::from_secs(3)).await;
    while hub.messages.try_recv().is_ok() {}
    let lapsed = hub.transport.stats();
    assert!(lapsed.observe_lapsed >= 1, "{lapsed:?}");

    // It comes back (a new process that knows nothing of the hub): notifications resume.
    let _server = coap_server_on(port).await?;
    let resumed = next_message(&mut hub.messages).await.context("no notification after the restart")?;
    assert_eq!(resumed.address, format!("//127.0.0.1:{port}/time"));
    next_message(&mut hub.messages).await.context("the new observation keeps notifying")?;
    let stats = hub.transport.stats();
    assert!(stats.observe_registrations >= 2, "{stats:?}");
    assert!(stats.notifications >= 4, "{stats:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_wise_notifications_from_aiocoap_are_reassembled() -> Result<()> {
    let (_device, port) = aiocoap_device(3000).await?;
    let mut hub = start(observing(format!("coap://127.0.0.1:{port}/big"), None), devices(), up_only()).await?;
    let mut last = None;
    for _ in 0..3 {
        let message = next_message(&mut hub.messages).await?;
        assert_eq!(message.address, format!("//127.0.0.1:{port}/big"));
        assert_eq!(message.metadata.get("content_format").map(String::as_str), Some("50"));
        assert!(!message.metadata.contains_key("provider"));
        let document: serde_json::Value = message.payload.json().context("the whole document, not one block")?;
        assert_eq!(document["pad"].as_str().map(str::len), Some(3000));
        let value = document["value"].as_u64().context("value")?;
        if let Some(previous) = last {
            assert!(value > previous, "{value} after {previous}");
        }
        last = Some(value);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn act_requests_reach_an_aiocoap_device() -> Result<()> {
    let (device, port) = aiocoap_device(10).await?;
    let hub = start(loopback_config(), devices(), up_only()).await?;
    let outbound = hub.transport.outbound();

    let mut small = OutboundMessage::new("coap", &format!("coap://127.0.0.1:{port}/cmd"), r#"{"on":true}"#);
    small.metadata.insert("content_format".into(), format::JSON.to_string());
    outbound.send("coap", small).await?;
    assert_eq!(next_line(&device, "CMD").await?, r#"CMD POST JSON 11 {"on":true}"#);

    // Larger than a block: Block1, reassembled by the device; PUT, scheme-less address.
    let big = format!("\"{}\"", "0123456789".repeat(500));
    let mut large = OutboundMessage::new("coap", &format!("//127.0.0.1:{port}/cmd"), big.as_str());
    large.metadata.insert("method".into(), "PUT".into());
    outbound.send("coap", large).await?;
    let line = next_line(&device, "CMD").await?;
    assert!(line.starts_with("CMD PUT None 5002 \"0123456789"), "{line}");

    // Non-confirmable.
    let mut non = OutboundMessage::new("coap", &format!("coap://127.0.0.1:{port}/cmd"), "n");
    non.metadata.insert("confirmable".into(), "false".into());
    outbound.send("coap", non).await?;
    assert_eq!(next_line(&device, "CMD").await?, "CMD POST None 1 n");

    let deadline = std::time::Instant::now() + WAIT;
    while hub.transport.stats().outbound_sent < 3 {
        anyhow::ensure!(std::time::Instant::now() < deadline, "{:?}", hub.transport.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(hub.transport.stats().outbound_failed, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn act_request_is_stored_by_coap_server() -> Result<()> {
    let (_server, port) = coap_server().await?;
    let hub = start(loopback_config(), devices(), up_only()).await?;
    let mut message = OutboundMessage::new("coap", &format!("coap://127.0.0.1:{port}/example_data"), "set-point 21");
    message.metadata.insert("method".into(), "PUT".into());
    message.metadata.insert("content_format".into(), "0".into());
    hub.transport.outbound().send("coap", message).await?;
    let deadline = std::time::Instant::now() + WAIT;
    while hub.transport.stats().outbound_sent < 1 {
        anyhow::ensure!(std::time::Instant::now() < deadline, "{:?}", hub.transport.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = coap_client(vec!["-m".into(), "get".into(), format!("coap://127.0.0.1:{port}/example_data")]).await?;
    assert_eq!(out.trim(), "set-point 21");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_refused_act_requests_are_counted_or_refused() -> Result<()> {
    let mut config = loopback_config();
    config.client.ack_timeout_ms = 50;
    config.client.max_retransmit = 1;
    let hub = start(config, devices(), up_only()).await?;
    let outbound = hub.transport.outbound();
    let silent = free_udp_port();
    outbound.send("coap", OutboundMessage::new("coap", &format!("coap://127.0.0.1:{silent}/cmd"), "x")).await?;
    let deadline = std::time::Instant::now() + WAIT;
    while hub.transport.stats().outbound_failed < 1 {
        anyhow::ensure!(std::time::Instant::now() < deadline, "{:?}", hub.transport.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(hub.transport.stats().retransmissions >= 1);
    for address in ["coaps://127.0.0.1/x", "/cmd", "mqtt://h/x"] {
        let refused = outbound.send("coap", OutboundMessage::new("coap", address, "x")).await;
        assert!(matches!(refused, Err(TransportError::Refused(_))), "{address}: {refused:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_nobody_asked_for_are_reset() -> Result<()> {
    let hub = start(loopback_config(), devices(), up_only()).await?;
    let client_addr = hub.transport.client_addr().context("client address")?;
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let mut stray = wire::response(coap_lite::ResponseType::Content, MessageType::Confirmable, 0x4242, &[9, 9, 9]);
    wire::add_uint(&mut stray, wire::option::OBSERVE, 7);
    stray.payload = b"21".to_vec();
    socket.send_to(&wire::encode(&stray), client_addr).await?;
    let reset = recv_packet(&socket).await?;
    assert_eq!((reset.header.get_type(), reset.header.message_id), (MessageType::Reset, 0x4242));
    socket.send_to(&[0x40, 0x45, 0x43], client_addr).await?; // truncated
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stats = hub.transport.stats();
    assert_eq!((stats.unmatched, stats.malformed), (1, 1));
    Ok(())
}
