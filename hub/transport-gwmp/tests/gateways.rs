//! The GWMP transport against fake gateways on loopback: acknowledgements, delivery, downlinks, TX_ACK
//! accounting, several gateways, hostile datagrams, the allow-list and configuration errors.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use base64::Engine as _;
use common::*;
use hub_plugin_sdk::abi::OutboundMessage;
use hub_runtime::{Outbound, TransportError};
use hub_transport_gwmp::{GwmpConfig, GwmpError, GwmpTransport};
use serde_json::{Value, json};

#[tokio::test]
async fn push_data_is_acknowledged_and_delivered() -> Result<()> {
    let (transport, mut rx) = start()?;
    let mut gw = Gateway::new(0xAA55_5A00_0000_0101, transport.local_addr()).await?;
    let phy = [0x40, 0x04, 0x03, 0x02, 0x01, 0x80, 0x01, 0x00, 0x01, 0xA6, 0x94, 0x64, 0x26, 0x15];
    let token = gw.push(&json!({"rxpk": [rxpk(&phy, -57, 9.5, 3_512_348_611u32)]})).await?;
    assert_eq!(gw.recv().await?, vec![2, token[0], token[1], 1], "PUSH_ACK with the same token");

    let message = next(&mut rx).await?;
    assert_eq!(message.transport, "udp");
    assert_eq!(message.address, transport.local_addr().port().to_string());
    assert_eq!(message.payload.0, phy);
    let meta = &message.metadata;
    assert_eq!(meta["gateway_eui"], "aa555a0000000101");
    assert_eq!(meta["rssi"], "-57");
    assert_eq!(meta["lsnr"], "9.5");
    assert_eq!(meta["freq"], "868.5");
    assert_eq!(meta["datr"], "SF7BW125");
    assert_eq!(meta["codr"], "4/5");
    assert_eq!(meta["tmst"], "3512348611");
    assert_eq!(meta["chan"], "2");
    assert_eq!(meta["rfch"], "0");
    assert_eq!(meta["time"], "2024-05-01T10:00:00.000000Z");
    assert_eq!(meta["peer"], gw.socket.local_addr()?.to_string());

    // A packet with a failed CRC is counted, not delivered; a stat report lands in the gateway's stats.
    let mut bad = rxpk(&phy, -100, -3.0, 1);
    bad["stat"] = json!(-1);
    gw.push(&json!({"rxpk": [bad], "stat": {"time": "2024-05-01 10:00:00 GMT", "rxnb": 7, "rxok": 6, "rxfw": 6,
                                            "ackr": 100.0, "dwnb": 0, "txnb": 0, "lati": 46.2, "long": 6.1}}))
        .await?;
    gw.recv().await?;
    let gateways = transport.gateways();
    assert_eq!(gateways.len(), 1);
    let info = &gateways[0];
    assert_eq!(info.eui, "aa555a0000000101");
    assert_eq!((info.rx_packets, info.rx_ok, info.rx_bad_crc), (2, 1, 1));
    assert_eq!(info.stat.as_ref().and_then(|s| s.rxnb), Some(7));
    assert!(!info.downlink_ready, "no PULL_DATA yet");
    let stats = transport.stats();
    assert_eq!((stats.push_data, stats.delivered, stats.rxpk_bad_crc), (2, 1, 1));
    let snapshot = serde_json::to_value(transport.gateways())?;
    assert_eq!(snapshot[0]["stat"]["lati"], json!(46.2));
    assert!(rx.try_recv().is_err(), "nothing else was delivered");
    transport.shutdown().await;
    Ok(())
}

fn downlink(port: &str, gateway: &str, extra: &[(&str, &str)]) -> OutboundMessage {
    let mut m = OutboundMessage::new("udp", port, vec![0x60, 1, 2, 3, 4, 0, 0, 0, 0xAA, 0xBB, 0xCC, 0xDD])
        .with_metadata("gateway_eui", gateway)
        .with_metadata("tmst", "4012348611")
        .with_metadata("freq", "869.525")
        .with_metadata("rfch", "0")
        .with_metadata("powe", "27")
        .with_metadata("modu", "LORA")
        .with_metadata("datr", "SF9BW125")
        .with_metadata("codr", "4/5")
        .with_metadata("ipol", "true");
    for (k, v) in extra {
        m.metadata.insert((*k).to_owned(), (*v).to_owned());
    }
    m
}

#[tokio::test]
async fn pull_data_opens_the_downlink_path_and_tx_acks_are_counted() -> Result<()> {
    let (transport, _rx) = start()?;
    let port = transport.address().to_owned();
    let mut gw = Gateway::new(0x0102_0304_0506_0708, transport.local_addr()).await?;

    // Before PULL_DATA the gateway has no downlink path.
    let m = downlink(&port, &gw.eui_hex(), &[("tmst", "1000")]);
    assert!(matches!(transport.send("lorawan", m).await, Err(TransportError::Unavailable(_))));

    gw.connect().await?;
    assert!(transport.gateways()[0].downlink_ready);

    let m = downlink(&port, &gw.eui_hex(), &[("tmst", "1000000")]);
    let payload = m.payload.0.clone();
    transport.send("lorawan", m).await?;
    let resp = gw.recv().await?;
    assert_eq!((resp[0], resp[3]), (2, 3), "PULL_RESP, version 2");
    let body: Value = serde_json::from_slice(&resp[4..])?;
    assert_eq!(
        body,
        json!({"txpk": {"tmst": 1000000, "freq": 869.525, "rfch": 0, "powe": 27, "modu": "LORA",
                        "datr": "SF9BW125", "codr": "4/5", "ipol": true, "size": payload.len(),
                        "data": base64::engine::general_purpose::STANDARD.encode(&payload)}})
    );
    gw.tx_ack([resp[1], resp[2]], "NONE").await?;

    // A second downlink fails at the gateway (too late): counted as an error with its reason.
    transport.send("lorawan", downlink(&port, &gw.eui_hex(), &[("imme", "true")])).await?;
    let resp = gw.recv().await?;
    let body: Value = serde_json::from_slice(&resp[4..])?;
    assert_eq!(body["txpk"]["imme"], json!(true));
    assert!(body["txpk"].get("tmst").is_none());
    gw.tx_ack([resp[1], resp[2]], "TOO_LATE").await?;
    // A TX_ACK nobody asked for.
    gw.tx_ack([0xFF, 0xFE], "NONE").await?;

    wait_for("three TX_ACKs", || {
        let s = transport.stats();
        s.tx_acked + s.tx_errors + s.tx_ack_unmatched == 3
    })
    .await?;
    let stats = transport.stats();
    assert_eq!((stats.tx_sent, stats.tx_acked, stats.tx_errors, stats.tx_ack_unmatched), (2, 1, 1, 1));
    let info = &transport.gateways()[0];
    assert_eq!((info.tx_sent, info.tx_acked, info.tx_errors), (2, 1, 1));
    assert_eq!(info.last_tx_error.as_deref(), Some("TOO_LATE"));

    // Refused: another port, an unknown gateway, missing timing, a bad data rate.
    let refused = |r: Result<(), TransportError>| matches!(r, Err(TransportError::Refused(_)));
    assert!(refused(transport.send("p", downlink("1", &gw.eui_hex(), &[])).await));
    let mut no_time = downlink(&port, &gw.eui_hex(), &[]);
    no_time.metadata.remove("tmst");
    assert!(refused(transport.send("p", no_time).await));
    assert!(refused(transport.send("p", downlink(&port, &gw.eui_hex(), &[("datr", "fast")])).await));
    let mut no_gw = downlink(&port, &gw.eui_hex(), &[]);
    no_gw.metadata.remove("gateway_eui");
    assert!(refused(transport.send("p", no_gw).await));
    assert!(matches!(
        transport.send("p", downlink(&port, "ffffffffffffffff", &[])).await,
        Err(TransportError::Unavailable(_))
    ));
    transport.shutdown().await;
    assert!(matches!(
        transport.send("p", downlink(&port, &gw.eui_hex(), &[])).await,
        Err(TransportError::Unavailable(_))
    ));
    Ok(())
}

#[tokio::test]
async fn several_gateways_at_once() -> Result<()> {
    let (transport, mut rx) = start()?;
    let port = transport.address().to_owned();
    let mut a = Gateway::new(0xA, transport.local_addr()).await?;
    let mut b = Gateway::new(0xB, transport.local_addr()).await?;
    a.connect().await?;
    b.connect().await?;
    a.push(&json!({"rxpk": [rxpk(&[0x40, 1], -60, 5.0, 10), rxpk(&[0x40, 2], -61, 5.0, 11)]})).await?;
    b.push(&json!({"rxpk": [rxpk(&[0x40, 1], -90, -2.0, 99)]})).await?;
    a.recv().await?;
    b.recv().await?;
    let mut seen = BTreeMap::new();
    for _ in 0..3 {
        let m = next(&mut rx).await?;
        *seen.entry(m.metadata["gateway_eui"].clone()).or_insert(0) += 1;
    }
    assert_eq!(seen, BTreeMap::from([(a.eui_hex(), 2), (b.eui_hex(), 1)]));

    // Each downlink goes to the gateway it names.
    transport.send("p", downlink(&port, &b.eui_hex(), &[])).await?;
    transport.send("p", downlink(&port, &a.eui_hex(), &[])).await?;
    assert_eq!(b.recv().await?[3], 3);
    assert_eq!(a.recv().await?[3], 3);
    let gateways = transport.gateways();
    assert_eq!(gateways.iter().map(|g| g.eui.as_str()).collect::<Vec<_>>(), [a.eui_hex(), b.eui_hex()]);
    assert!(gateways.iter().all(|g| g.tx_sent == 1 && g.downlink_ready));
    transport.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn malformed_datagrams_are_counted_and_nothing_is_delivered() -> Result<()> {
    let (transport, mut rx) = start()?;
    let gw = Gateway::new(0xC, transport.local_addr()).await?;
    let header = |version: u8, id: u8| {
        let mut d = vec![version, 0, 1, id];
        d.extend_from_slice(&gw.eui);
        d
    };
    let with = |mut d: Vec<u8>, tail: &[u8]| {
        d.extend_from_slice(tail);
        d
    };
    let good_rxpk = rxpk(&[0x40, 1, 2], -50, 1.0, 1);
    let mut bad_b64 = good_rxpk.clone();
    bad_b64["data"] = json!("%%%");
    let mut bad_size = good_rxpk.clone();
    bad_size["size"] = json!(200);
    let datagrams: Vec<Vec<u8>> = vec![
        vec![],                               // empty
        vec![2],                              // truncated token
        vec![2, 0, 1],                        // no identifier
        vec![2, 0, 1, 0, 1, 2, 3],            // truncated EUI
        header(2, 0),                         // PUSH_DATA without JSON
        with(header(2, 0), b"{\"rxpk\": [}"), // bad JSON
        with(header(2, 0), b"\xff\xfe"),      // not UTF-8
        with(header(3, 0), b"{}"),            // wrong version
        with(header(0, 2), b""),              // wrong version
        with(header(2, 9), b""),              // unknown identifier
        header(2, 4),                         // a server-side identifier
        with(header(2, 2), b"extra"),         // PULL_DATA with a tail
        with(header(2, 0), json!({"rxpk": [bad_b64]}).to_string().as_bytes()),
        with(header(2, 0), json!({"rxpk": [bad_size, {"stat": 1}, "nope"]}).to_string().as_bytes()),
        vec![2; 35_000], // a long run of garbage
    ];
    for d in &datagrams {
        gw.send_raw(d).await?;
    }
    // Push a good packet last; once it arrives every datagram before it was handled.
    let mut gw = gw;
    gw.push(&json!({"rxpk": [good_rxpk]})).await?;
    let m = next(&mut rx).await?;
    assert_eq!(m.payload.0, vec![0x40, 1, 2]);
    assert!(rx.try_recv().is_err(), "only the good packet was delivered");
    let s = transport.stats();
    assert_eq!(s.datagrams, datagrams.len() as u64 + 1);
    assert_eq!(s.dropped_malformed, 9);
    assert_eq!(s.dropped_json, 2);
    assert_eq!(s.dropped_version, 2);
    assert_eq!(s.rxpk_bad_base64, 1);
    assert_eq!(s.rxpk_invalid, 3);
    assert_eq!(s.delivered, 1);
    // The datagrams whose header and JSON were fine were acknowledged; the others were not.
    assert_eq!(s.push_data, 3);
    transport.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn random_datagrams_never_break_the_transport() -> Result<()> {
    let (transport, mut rx) = start()?;
    let mut gw = Gateway::new(0xD, transport.local_addr()).await?;
    // A small deterministic PRNG (xorshift) so a failure reproduces.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next_u64 = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let valid = {
        let mut d = vec![2, 0, 1, 0];
        d.extend_from_slice(&gw.eui);
        d.extend_from_slice(json!({"rxpk": [rxpk(&[0x40, 9], -50, 1.0, 1)]}).to_string().as_bytes());
        d
    };
    for i in 0..2_000 {
        let d: Vec<u8> = if i % 2 == 0 {
            let len = (next_u64() % 64) as usize;
            (0..len).map(|_| next_u64() as u8).collect()
        } else {
            let mut d = valid.clone();
            let at = (next_u64() as usize) % d.len();
            d[at] ^= 1 << (next_u64() % 8);
            d
        };
        gw.send_raw(&d).await?;
        if i % 100 == 0 {
            // Let the receive task keep up so the socket buffer never overflows.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    while tokio::time::timeout(Duration::from_millis(300), rx.recv()).await.is_ok() {}
    gw.push(&json!({"rxpk": [rxpk(&[0x40, 7], -50, 1.0, 1)]})).await?;
    let mut found = false;
    while let Ok(Some(m)) = tokio::time::timeout(WAIT, rx.recv()).await {
        if m.payload.0 == [0x40, 7] {
            found = true;
            break;
        }
    }
    assert!(found, "the transport still works after the noise");
    transport.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn the_allow_list_keeps_other_gateways_out() -> Result<()> {
    let config = GwmpConfig {
        listen: "127.0.0.1:0".parse()?,
        allow_any_gateway: Some(false),
        allowed_gateways: vec!["00000000000000A1".to_owned()],
        ..GwmpConfig::default()
    };
    let (transport, mut rx) = start_with(&config)?;
    let mut stranger = Gateway::new(0xB2, transport.local_addr()).await?;
    let mut friend = Gateway::new(0xA1, transport.local_addr()).await?;
    stranger.push(&json!({"rxpk": [rxpk(&[0x40, 1], -50, 1.0, 1)]})).await?;
    stranger.pull().await?;
    friend.push(&json!({"rxpk": [rxpk(&[0x40, 2], -50, 1.0, 1)]})).await?;
    friend.recv().await?;
    assert_eq!(next(&mut rx).await?.payload.0, vec![0x40, 2]);
    assert!(tokio::time::timeout(Duration::from_millis(200), stranger.recv()).await.is_err(), "no answer");
    assert_eq!(transport.stats().dropped_gateway, 2);
    assert_eq!(transport.gateways().len(), 1);
    transport.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_taken_port_names_the_key_and_the_flag() -> Result<()> {
    let holder = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let config = GwmpConfig { listen: holder.local_addr()?, ..GwmpConfig::default() };
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    let err = GwmpTransport::start(&config, tx).unwrap_err();
    assert!(matches!(err, GwmpError::AddressInUse { .. }));
    let text = err.to_string();
    assert!(text.starts_with("gwmp.listen: "), "{text}");
    assert!(text.contains("--gwmp-listen"), "{text}");
    Ok(())
}

#[test]
fn config_errors_name_their_key() {
    let parse = |text: &str| -> Result<GwmpConfig, String> {
        let config: GwmpConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    };
    let config = parse("").unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:1700");
    assert!(config.any_gateway_allowed());

    let public = parse("listen = \"0.0.0.0:1700\"").unwrap_err();
    assert!(public.starts_with("gwmp.allowed_gateways: "), "{public}");
    let ok = parse("listen = \"0.0.0.0:1700\"\nallowed_gateways = [\"aa555a0000000101\"]").unwrap();
    assert!(!ok.any_gateway_allowed());
    assert!(parse("listen = \"0.0.0.0:1700\"\nallow_any_gateway = true").is_ok());

    let cases = [
        ("allowed_gateways = [\"aa555a0000000101\", \"xyz\"]", "gwmp.allowed_gateways[1]: "),
        ("max_gateways = 0", "gwmp.max_gateways: "),
        ("pull_timeout_ms = 0", "gwmp.pull_timeout_ms: "),
        ("tx_ack_timeout_ms = 0", "gwmp.tx_ack_timeout_ms: "),
        ("max_datagram_bytes = 100000", "gwmp.max_datagram_bytes: "),
    ];
    for (text, key) in cases {
        let err = parse(text).unwrap_err();
        assert!(err.starts_with(key), "{text}: {err}");
    }
    let unknown = parse("listne = \"127.0.0.1:1\"").unwrap_err();
    assert!(unknown.contains("unknown field `listne`"), "{unknown}");
}
