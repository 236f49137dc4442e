//! The endpoint devices send to, against real peers (`coap-client-notls`) and a raw client for exact codes,
//! options and hostile datagrams.

mod common;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use coap_lite::{MessageType, RequestType};
use common::*;
use hub_runtime::DispatchOutcome;
use hub_transport_coap::wire::{self, Block, format, option};
use hub_transport_coap::{CoapConfig, CoapError, CoapTransport};
use tokio::net::UdpSocket;

fn url(hub: &Hub, target: &str) -> String {
    format!("coap://127.0.0.1:{}{target}", hub.addr.port())
}

fn args(list: &[&str], url: String) -> Vec<String> {
    let mut out: Vec<String> = list.iter().map(|s| (*s).to_owned()).collect();
    out.push(url);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coap_client_post_json_gets_changed_and_reaches_the_runtime() -> Result<()> {
    let mut hub = start(loopback_config(), devices(), up_only()).await?;
    assert!(hub.transport.anonymous_allowed(), "loopback without allow_anonymous accepts anonymous devices");
    let out = coap_client(args(&["-v", "7", "-m", "post", "-t", "json", "-e", "21.5"], url(&hub, "/up/p/s/r"))).await?;
    assert!(out.contains("t:ACK c:2.04"), "coap-client got no piggybacked 2.04:\n{out}");

    let message = next_message(&mut hub.messages).await?;
    assert_eq!(message.transport, "coap");
    assert_eq!(message.address, "/up/p/s/r");
    assert_eq!(message.payload.as_str(), Some("21.5"));
    let meta = |k: &str| message.metadata.get(k).map(String::as_str);
    assert_eq!(meta("method"), Some("POST"));
    assert_eq!(meta("content_format"), Some("50"));
    assert_eq!(meta("confirmable"), Some("true"));
    assert!(meta("peer").is_some_and(|p| p.starts_with("127.0.0.1:")));
    assert_eq!(meta("subject"), None);
    assert!(message.received_us > 0);
    assert_eq!(hub.transport.stats().changed, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_confirmable_requests_are_delivered_and_answered_non_confirmably() -> Result<()> {
    let mut hub = start(loopback_config(), devices(), up_only()).await?;
    let out =
        coap_client(args(&["-v", "7", "-N", "-m", "put", "-t", "cbor", "-e", "%F9%3C%00"], url(&hub, "/up/p/s/r")))
            .await?;
    assert!(out.contains("t:NON c:2.04"), "coap-client got no NON 2.04:\n{out}");
    let message = next_message(&mut hub.messages).await?;
    assert_eq!(message.payload.as_bytes(), [0xf9, 0x3c, 0x00]);
    assert_eq!(message.metadata.get("method").map(String::as_str), Some("PUT"));
    assert_eq!(message.metadata.get("confirmable").map(String::as_str), Some("false"));
    assert_eq!(message.metadata.get("content_format").map(String::as_str), Some("60"));

    // The raw client: a NON request gets a NON response with the same token and a new message id.
    let request = post("/up/p/s/r", Some(format::JSON), b"1");
    let mut request = request;
    request.header.set_type(MessageType::NonConfirmable);
    let response = raw_request(hub.addr, request.clone()).await?;
    assert_eq!(response.header.get_type(), MessageType::NonConfirmable);
    assert_eq!(response.get_token(), request.get_token());
    assert_eq!(code(&response), "2.04");
    next_message(&mut hub.messages).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_codes_seen_by_coap_client() -> Result<()> {
    let config = CoapConfig { max_payload_bytes: 100, ..loopback_config() };
    let mut hub = start(config, devices(), up_only()).await?;
    let long = "1".repeat(200);
    let table: Vec<(Vec<&str>, &str, &str)> = vec![
        (vec!["-m", "post", "-t", "json", "-e", "{bad"], "/up/p/s/r", "4.00"),
        (vec!["-m", "post", "-t", "110", "-e", "{\"n\":\"x\"}"], "/up/p/s/r", "4.00"),
        (vec!["-m", "post", "-t", "41", "-e", "<x/>"], "/up/p/s/r", "4.15"),
        (vec!["-m", "post", "-e", "x"], "/nobody/here", "4.04"),
        (vec!["-m", "get"], "/up/p/s/r", "4.05"),
        (vec!["-m", "delete"], "/up/p/s/r", "4.05"),
        (vec!["-m", "post", "-t", "json", "-e", long.as_str()], "/up/p/s/r", "4.13"),
        (vec!["-m", "post", "-e", "x", "-O", "9,0x00"], "/up/p/s/r", "4.02"),
    ];
    for (list, target, want) in table {
        let out = coap_client(args(&list, url(&hub, target))).await?;
        assert!(out.starts_with(want), "{list:?} {target}: expected {want}, coap-client said {out:?}");
    }
    assert_quiet(&mut hub.messages, Duration::from_millis(200)).await?;
    let stats = hub.transport.stats();
    assert_eq!(
        (stats.bad_request, stats.unsupported_format, stats.not_found, stats.method_not_allowed, stats.too_large),
        (2, 1, 1, 2, 1)
    );
    assert_eq!(stats.bad_option, 1);

    // 4.13 says how much is allowed (Size1); a Size1 above the limit is refused before any block arrives.
    let response = raw_request(hub.addr, post("/up/p/s/r", None, &[b'1'; 101])).await?;
    assert_eq!(code(&response), "4.13");
    assert_eq!(wire::first_uint(&response, option::SIZE1, 4), Some(Some(100)));
    let mut announced = post("/up/p/s/r", None, &[b'1'; 16]);
    wire::add_uint(&mut announced, option::SIZE1, 5000);
    assert_eq!(code(&raw_request(hub.addr, announced).await?), "4.13");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_off_anonymous_and_bound_to_paths() -> Result<()> {
    let config = CoapConfig { allow_anonymous: Some(false), ..loopback_config() };
    let mut hub = start(config, devices(), up_only()).await?;
    assert!(!hub.transport.anonymous_allowed());
    let post_args = ["-m", "post", "-t", "json", "-e", "1"];
    for (target, want) in [
        ("/up/meters-7/power/w", "4.01"),
        ("/up/meters-7/power/w?token=wrong", "4.01"),
        ("/up/meters-8/power/w?token=s3cret", "4.03"),
        ("/.well-known/core", "4.01"),
    ] {
        let list: &[&str] = if target.starts_with("/.well") { &["-m", "get"] } else { &post_args };
        let out = coap_client(args(list, url(&hub, target))).await?;
        assert!(out.starts_with(want), "{target}: expected {want}, got {out:?}");
    }
    assert_quiet(&mut hub.messages, Duration::from_millis(200)).await?;

    // The token in the query: accepted, the subject is told, the token is not passed on.
    let out = coap_client(args(&post_args, url(&hub, "/up/meters-7/power/w?token=s3cret&unit=W"))).await?;
    assert!(out.is_empty(), "{out}");
    let message = next_message(&mut hub.messages).await?;
    assert_eq!(message.metadata.get("subject").map(String::as_str), Some("device-7"));
    assert_eq!(message.metadata.get("query").map(String::as_str), Some("unit=W"));

    // The token in the hub's option (65000).
    let out =
        coap_client(args(&["-m", "post", "-e", "2", "-O", "65000,s3cret"], url(&hub, "/up/meters-7/power/w"))).await?;
    assert!(out.is_empty(), "{out}");
    assert_eq!(next_message(&mut hub.messages).await?.payload.as_str(), Some("2"));

    let stats = hub.transport.stats();
    assert_eq!((stats.unauthorized, stats.forbidden, stats.changed), (3, 1, 2));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retransmitted_confirmable_request_is_delivered_once() -> Result<()> {
    let mut hub = start(loopback_config(), devices(), up_only()).await?;
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let request = post("/up/p/s/r", Some(format::JSON), b"42");
    let bytes = wire::encode(&request);
    socket.send_to(&bytes, hub.addr).await?;
    let first = recv_packet(&socket).await?;
    assert_eq!(code(&first), "2.04");
    assert_eq!(first.header.get_type(), MessageType::Acknowledgement);
    assert_eq!(first.header.message_id, request.header.message_id);
    // The ACK was "lost": the device sends the same message again, twice.
    for _ in 0..2 {
        socket.send_to(&bytes, hub.addr).await?;
        let again = recv_packet(&socket).await?;
        assert_eq!(wire::encode(&again), wire::encode(&first), "answered from the cache");
    }
    next_message(&mut hub.messages).await?;
    assert_quiet(&mut hub.messages, Duration::from_millis(300)).await?;
    assert_eq!(hub.transport.stats().duplicates, 2);

    // The same message id from another peer is another request.
    let other = UdpSocket::bind("127.0.0.1:0").await?;
    other.send_to(&bytes, hub.addr).await?;
    assert_eq!(code(&recv_packet(&other).await?), "2.04");
    next_message(&mut hub.messages).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block1_upload_from_coap_client_is_reassembled() -> Result<()> {
    let mut hub = start(loopback_config(), devices(), up_only()).await?;
    let body = format!("\"{}\"", "abcdefgh".repeat(500)); // 4002 bytes of JSON
    let out =
        coap_client(args(&["-v", "7", "-b", "64", "-m", "post", "-t", "json", "-e", &body], url(&hub, "/up/p/s/big")))
            .await?;
    assert!(out.contains("c:2.31"), "no 2.31 Continue:\n{}", &out[..out.len().min(2000)]);
    let message = next_message(&mut hub.messages).await?;
    assert_eq!(message.address, "/up/p/s/big");
    assert_eq!(message.payload.as_str(), Some(body.as_str()));
    let stats = hub.transport.stats();
    assert_eq!(stats.block1_completed, 1);
    assert_eq!(stats.block1_continue, 62, "4002 bytes in 64-byte blocks: 62 continues and a final block");
    assert_eq!(stats.changed, 1);
    Ok(())
}

/// Sends one Block1 block from `socket` and returns the answer.
async fn block(hub: &Hub, socket: &UdpSocket, num: u32, more: bool, payload: &[u8]) -> Result<coap_lite::Packet> {
    let mut packet = post("/up/p/s/blocks", Some(format::TEXT), payload);
    wire::add(&mut packet, option::BLOCK1, Block { num, more, szx: 0 }.encode());
    socket.send_to(&wire::encode(&packet), hub.addr).await?;
    recv_packet(socket).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block1_gaps_and_oversize_uploads_are_refused() -> Result<()> {
    let config = CoapConfig { max_payload_bytes: 40, ..loopback_config() };
    let mut hub = start(config, devices(), up_only()).await?;
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let sixteen = [b'a'; 16];

    let first = block(&hub, &socket, 0, true, &sixteen).await?;
    assert_eq!(code(&first), "2.31");
    assert_eq!(
        wire::first(&first, option::BLOCK1).and_then(|v| Block::decode(v)),
        Some(Block { num: 0, more: true, szx: 0 })
    );
    // Block 2 before block 1: 4.08, and the upload is gone.
    assert_eq!(code(&block(&hub, &socket, 2, true, &sixteen).await?), "4.08");
    assert_eq!(code(&block(&hub, &socket, 1, false, b"x").await?), "4.08");

    // Past 40 bytes: 4.13.
    assert_eq!(code(&block(&hub, &socket, 0, true, &sixteen).await?), "2.31");
    assert_eq!(code(&block(&hub, &socket, 1, true, &sixteen).await?), "2.31");
    assert_eq!(code(&block(&hub, &socket, 2, true, &sixteen).await?), "4.13");

    // A complete one works, and its final answer echoes Block1.
    assert_eq!(code(&block(&hub, &socket, 0, true, &sixteen).await?), "2.31");
    let last = block(&hub, &socket, 1, false, b"end").await?;
    assert_eq!(code(&last), "2.04");
    assert_eq!(
        wire::first(&last, option::BLOCK1).and_then(|v| Block::decode(v)),
        Some(Block { num: 1, more: false, szx: 0 })
    );
    let message = next_message(&mut hub.messages).await?;
    assert_eq!(message.payload.as_bytes().len(), 19);
    assert_quiet(&mut hub.messages, Duration::from_millis(200)).await?;
    let stats = hub.transport.stats();
    assert_eq!((stats.incomplete, stats.too_large, stats.block1_completed), (2, 1, 1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn well_known_core_is_read_by_coap_client_whole_and_blockwise() -> Result<()> {
    let hub = start(loopback_config(), devices(), up_only()).await?;
    hub.transport.set_links(vec!["/up/*".to_owned(), "//10.0.0.9:5683/*".to_owned()]);
    let out = coap_client(args(&["-m", "get"], url(&hub, "/.well-known/core"))).await?;
    assert_eq!(out.trim(), r#"</up/*>;ct="0 42 50 60 110 112""#);

    // A document larger than one block goes block-wise (Block2); coap-client puts it back together.
    let patterns: Vec<String> = (0..60).map(|i| format!("/sensors/building-{i:03}/*")).collect();
    hub.transport.set_links(patterns.clone());
    let out = coap_client(args(&["-v", "7", "-m", "get"], url(&hub, "/.well-known/core"))).await?;
    assert!(out.contains("Block2:1/"), "not block-wise:\n{}", &out[..out.len().min(1500)]);
    let quiet = coap_client(args(&["-m", "get"], url(&hub, "/.well-known/core"))).await?;
    let links: Vec<&str> = quiet.trim().split(',').collect();
    assert_eq!(links.len(), 60);
    assert_eq!(links[59], r#"</sensors/building-059/*>;ct="0 42 50 60 110 112""#);
    assert!(hub.transport.stats().discovery >= 4);

    // A block past the end is 4.02; a block asked smaller than ours is served at that size.
    let mut beyond = get("/.well-known/core");
    wire::add(&mut beyond, option::BLOCK2, Block { num: 100, more: false, szx: 6 }.encode());
    assert_eq!(code(&raw_request(hub.addr, beyond).await?), "4.02");
    let mut small = get("/.well-known/core");
    wire::add(&mut small, option::BLOCK2, Block { num: 1, more: false, szx: 0 }.encode());
    let response = raw_request(hub.addr, small).await?;
    assert_eq!(response.payload.len(), 16);
    assert_eq!(
        wire::first(&response, option::BLOCK2).and_then(|v| Block::decode(v)).map(|b| (b.num, b.more)),
        Some((1, true))
    );
    let mut post_core = post("/.well-known/core", None, b"x");
    post_core.header.message_id ^= 1;
    assert_eq!(code(&raw_request(hub.addr, post_core).await?), "4.05");
    Ok(())
}

/// Sends a CoAP ping and waits for its reset. The endpoint handles datagrams in order, so once it answers,
/// everything sent before was handled (and none was dropped by a full socket buffer). Returns the other
/// answers that came meanwhile.
async fn sync(socket: &UdpSocket, hub: &Hub, mid: u16) -> Result<Vec<(MessageType, u16)>> {
    socket.send_to(&wire::empty(MessageType::Confirmable, mid), hub.addr).await?;
    let mut others = Vec::new();
    loop {
        let answer = recv_packet(socket).await?;
        let seen = (answer.header.get_type(), answer.header.message_id);
        if seen == (MessageType::Reset, mid) {
            return Ok(others);
        }
        others.push(seen);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_are_counted_and_the_endpoint_carries_on() -> Result<()> {
    let mut hub = start(loopback_config(), devices(), up_only()).await?;
    let socket = UdpSocket::bind("127.0.0.1:0").await?;

    // A malformed confirmable message gets a reset with its message id; other garbage is dropped.
    socket.send_to(&[0x49, 0x02, 0xbe, 0xef], hub.addr).await?; // CON, token length 9
    let reset = recv_packet(&socket).await?;
    assert_eq!(reset.header.get_type(), MessageType::Reset);
    assert_eq!(reset.header.message_id, 0xbeef);

    let mut seed = 0x1234_5678_9abc_def1u64;
    let (mut sent, mut pings) = (1, 0u16);
    for round in 0..300usize {
        let len = round % 40;
        let mut bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        if let Some(first) = bytes.first_mut() {
            // Non-confirmable version-1 garbage, so nothing answers and the socket stays quiet.
            *first = 0x50 | (*first & 0x0f);
        }
        if wire::parse(&bytes).is_err() {
            socket.send_to(&bytes, hub.addr).await?;
            sent += 1;
            if sent % 25 == 0 {
                pings += 1;
                let others = sync(&socket, &hub, 0x7000 + pings).await?;
                assert!(others.is_empty(), "garbage was answered: {others:?}");
            }
        }
    }
    for bad in [&[0x40, 0x02, 0, 1, 0xff][..], &[0x50, 0x02, 0, 2, 0xf1, 0], &[0x80, 0x01, 0, 1], &[0x40]] {
        socket.send_to(bad, hub.addr).await?;
        sent += 1;
    }
    pings += 1;
    let others = sync(&socket, &hub, 0x0707).await?;
    assert_eq!(others, vec![(MessageType::Reset, 1)], "only the CON with a payload marker and no payload is reset");

    // A proxy request gets 5.05; an unknown critical option 4.02; an unknown elective one is ignored.
    let mut proxy = post("/up/p/s/r", None, b"1");
    wire::add(&mut proxy, option::PROXY_URI, b"coap://elsewhere/x".to_vec());
    assert_eq!(code(&raw_request(hub.addr, proxy).await?), "5.05");
    let mut critical = post("/up/p/s/r", None, b"1");
    wire::add(&mut critical, 2049, b"?".to_vec());
    assert_eq!(code(&raw_request(hub.addr, critical).await?), "4.02");
    let mut elective = post("/up/p/s/r", None, b"1");
    wire::add(&mut elective, 2048, b"?".to_vec());
    assert_eq!(code(&raw_request(hub.addr, elective).await?), "2.04");
    next_message(&mut hub.messages).await?;

    let stats = hub.transport.stats();
    assert_eq!(stats.malformed, sent, "every garbage datagram is counted");
    assert_eq!((stats.pings, stats.proxying_refused, stats.bad_option), (u64::from(pings), 1, 1));

    // Still serving real peers.
    let out = coap_client(args(&["-m", "post", "-t", "json", "-e", "7"], url(&hub, "/up/p/s/r"))).await?;
    assert!(out.is_empty(), "{out}");
    assert_eq!(next_message(&mut hub.messages).await?.payload.as_str(), Some("7"));
    assert_quiet(&mut hub.messages, Duration::from_millis(200)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_plugin_queues_and_a_silent_runtime_give_5_03() -> Result<()> {
    let dispatch: Dispatch = Arc::new(|m| {
        if m.address.starts_with("/up/full/") {
            DispatchOutcome { delivered: 0, dropped: 1 }
        } else {
            DispatchOutcome { delivered: 1, dropped: 0 }
        }
    });
    let hub = start(loopback_config(), devices(), dispatch).await?;
    let response = raw_request(hub.addr, post("/up/full/s/r", None, b"1")).await?;
    assert_eq!(code(&response), "5.03");
    assert!(wire::first_uint(&response, option::MAX_AGE, 4).is_some(), "5.03 says when to retry");

    // A pump that never answers: 5.03 after dispatch_timeout_ms; the runtime's channel full: back-pressure.
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let config = CoapConfig { dispatch_timeout_ms: 300, ..loopback_config() };
    let transport = CoapTransport::start(&config, devices(), tx).await?;
    let addr = transport.local_addr().unwrap();
    let response = raw_request(addr, post("/up/p/s/r", None, b"1")).await?;
    assert_eq!(code(&response), "5.03");
    assert!(rx.recv().await.is_some(), "the message was handed over; only the answer was missing");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_response_option_suppresses_answers() -> Result<()> {
    let mut hub = start(loopback_config(), devices(), up_only()).await?;
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let mut request = post("/up/p/s/r", None, b"1");
    wire::add_uint(&mut request, option::NO_RESPONSE, 2); // not interested in 2.xx
    socket.send_to(&wire::encode(&request), hub.addr).await?;
    let ack = recv_packet(&socket).await?;
    assert_eq!((ack.header.get_type(), code(&ack)), (MessageType::Acknowledgement, "0.00".to_owned()));
    next_message(&mut hub.messages).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_names_the_key_and_the_flag() -> Result<()> {
    let holder = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let config = CoapConfig { listen: holder.local_addr()?, ..loopback_config() };
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    let error = CoapTransport::start(&config, devices(), tx).await.unwrap_err();
    assert!(matches!(error, CoapError::AddressInUse { .. }), "{error}");
    let text = error.to_string();
    assert!(text.contains("coap.listen") && text.contains("--coap-listen"), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_method_code_the_endpoint_does_not_know_is_4_05() -> Result<()> {
    let hub = start(loopback_config(), devices(), up_only()).await?;
    let mut request = post("/up/p/s/r", None, b"1");
    request.header.code = coap_lite::MessageClass::from(0x1f); // 0.31: an unassigned method
    assert_eq!(code(&raw_request(hub.addr, request).await?), "4.05");
    let fetch = common::request(RequestType::Fetch, "/up/p/s/r", b"");
    assert_eq!(code(&raw_request(hub.addr, fetch).await?), "4.05");
    Ok(())
}
