//! A fake LoRa gateway for the GWMP tests: a UDP socket on loopback that speaks the packet-forwarder side.
#![allow(dead_code)]

pub mod lorawan;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hub_plugin_sdk::abi::InboundMessage;
use hub_transport_gwmp::{GwmpConfig, GwmpTransport};
use serde_json::Value;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Every wait in these tests ends after this long.
pub const WAIT: Duration = Duration::from_secs(10);

/// A transport on a free loopback port, with its inbound channel.
pub fn start() -> Result<(GwmpTransport, mpsc::Receiver<InboundMessage>)> {
    let config = GwmpConfig { listen: "127.0.0.1:0".parse()?, ..GwmpConfig::default() };
    start_with(&config)
}

pub fn start_with(config: &GwmpConfig) -> Result<(GwmpTransport, mpsc::Receiver<InboundMessage>)> {
    let (tx, rx) = mpsc::channel(64);
    Ok((GwmpTransport::start(config, tx)?, rx))
}

/// A gateway with an EUI and a socket of its own.
pub struct Gateway {
    pub eui: [u8; 8],
    pub socket: UdpSocket,
    pub hub: SocketAddr,
    next_token: u16,
}

impl Gateway {
    pub async fn new(eui: u64, hub: SocketAddr) -> Result<Gateway> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        Ok(Gateway { eui: eui.to_be_bytes(), socket, hub, next_token: 0x1234 })
    }

    pub fn eui_hex(&self) -> String {
        hex::encode(self.eui)
    }

    fn token(&mut self) -> [u8; 2] {
        self.next_token = self.next_token.wrapping_add(1);
        self.next_token.to_be_bytes()
    }

    pub async fn send_raw(&self, datagram: &[u8]) -> Result<()> {
        self.socket.send_to(datagram, self.hub).await?;
        Ok(())
    }

    /// Sends PUSH_DATA with `json`; returns the token used.
    pub async fn push(&mut self, json: &Value) -> Result<[u8; 2]> {
        let token = self.token();
        let mut d = vec![2, token[0], token[1], 0];
        d.extend_from_slice(&self.eui);
        d.extend_from_slice(json.to_string().as_bytes());
        self.send_raw(&d).await?;
        Ok(token)
    }

    /// Sends PULL_DATA; returns the token used.
    pub async fn pull(&mut self) -> Result<[u8; 2]> {
        let token = self.token();
        let mut d = vec![2, token[0], token[1], 2];
        d.extend_from_slice(&self.eui);
        self.send_raw(&d).await?;
        Ok(token)
    }

    /// Sends TX_ACK for `token`, with an error unless `error` is `NONE`.
    pub async fn tx_ack(&self, token: [u8; 2], error: &str) -> Result<()> {
        let mut d = vec![2, token[0], token[1], 5];
        d.extend_from_slice(&self.eui);
        d.extend_from_slice(serde_json::json!({"txpk_ack": {"error": error}}).to_string().as_bytes());
        self.send_raw(&d).await
    }

    /// The next datagram from the hub.
    pub async fn recv(&self) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; 65_536];
        let (n, from) =
            tokio::time::timeout(WAIT, self.socket.recv_from(&mut buf)).await.context("no datagram from the hub")??;
        if from != self.hub {
            bail!("datagram from {from}, not the hub");
        }
        buf.truncate(n);
        Ok(buf)
    }

    /// Pulls and waits for the PULL_ACK, so downlinks can reach this gateway.
    pub async fn connect(&mut self) -> Result<()> {
        let token = self.pull().await?;
        let ack = self.recv().await?;
        if ack != [2, token[0], token[1], 4] {
            bail!("expected PULL_ACK, got {ack:?}");
        }
        Ok(())
    }
}

/// An `rxpk` entry with a good CRC for `phy`.
pub fn rxpk(phy: &[u8], rssi: i32, lsnr: f64, tmst: u32) -> Value {
    use base64::Engine as _;
    serde_json::json!({
        "time": "2024-05-01T10:00:00.000000Z", "tmst": tmst, "chan": 2, "rfch": 0, "freq": 868.5, "stat": 1,
        "modu": "LORA", "datr": "SF7BW125", "codr": "4/5", "rssi": rssi, "lsnr": lsnr, "size": phy.len(),
        "data": base64::engine::general_purpose::STANDARD.encode(phy)
    })
}

/// The next inbound message, or an error after [`WAIT`].
pub async fn next(rx: &mut mpsc::Receiver<InboundMessage>) -> Result<InboundMessage> {
    tokio::time::timeout(WAIT, rx.recv()).await.context("no inbound message")?.context("inbound channel closed")
}

/// Polls `cond` until it holds, failing after [`WAIT`].
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    let start = std::time::Instant::now();
    while !cond() {
        if start.elapsed() > WAIT {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}
