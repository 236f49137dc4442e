//! The socket side: one UDP socket, one receive task, the gateway table, and the `udp` outbound.
//!
//! # Back-pressure
//!
//! The receive task waits for room in the caller's bounded channel before it reads the next datagram. While it
//! waits the kernel's socket buffer fills and then drops datagrams: memory never grows, and under sustained
//! overload the newest packets are lost (gateways do not retransmit; LoRaWAN devices live with loss).
//!
//! # Locks
//!
//! The gateway table and the pending PULL_RESP tokens are concurrent maps: the receive task updates one entry
//! per datagram and an outbound send reads one entry, neither takes a lock over the whole table.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use hub_plugin_sdk::abi::{InboundMessage, OutboundMessage, transport};
use hub_runtime::{Outbound, TransportError};
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::protocol::{self, GatewayStat, ParseError, PushBody, Rxpk, RxpkError, Txpk, Upstream};
use crate::{GatewayEui, GwmpConfig, GwmpError, META_GATEWAY, META_PEER, now_us};

/// How often expired tokens and long-silent gateways are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// The shortest time between two warnings about dropped datagrams (the rest go to debug).
const WARN_INTERVAL: Duration = Duration::from_secs(10);
/// A gateway silent for this many pull timeouts leaves the table.
const FORGET_AFTER_PULL_TIMEOUTS: u32 = 10;

/// The transport's counters, for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GwmpStats {
    /// Datagrams read from the socket.
    pub datagrams: u64,
    /// PUSH_DATA datagrams accepted (and acknowledged).
    pub push_data: u64,
    /// PULL_DATA datagrams accepted (and acknowledged).
    pub pull_data: u64,
    /// Received packets handed to the hub.
    pub delivered: u64,
    /// Datagrams dropped: too short or too long, unknown identifier.
    pub dropped_malformed: u64,
    /// Datagrams dropped: a protocol version other than 1 or 2.
    pub dropped_version: u64,
    /// Datagrams dropped: JSON that does not parse.
    pub dropped_json: u64,
    /// Datagrams dropped: a gateway that is not allowed, or one more than `max_gateways`.
    pub dropped_gateway: u64,
    /// Received packets dropped: CRC failed or absent.
    pub rxpk_bad_crc: u64,
    /// Received packets dropped: `data` is not base64.
    pub rxpk_bad_base64: u64,
    /// Received packets dropped: other invalid fields (size mismatch, missing data, wrong types).
    pub rxpk_invalid: u64,
    /// PULL_RESP datagrams sent.
    pub tx_sent: u64,
    /// TX_ACKs reporting success.
    pub tx_acked: u64,
    /// TX_ACKs reporting an error.
    pub tx_errors: u64,
    /// TX_ACKs whose token matched no PULL_RESP (late, duplicated or forged).
    pub tx_ack_unmatched: u64,
}

#[derive(Default)]
struct Counters {
    datagrams: AtomicU64,
    push_data: AtomicU64,
    pull_data: AtomicU64,
    delivered: AtomicU64,
    dropped_malformed: AtomicU64,
    dropped_version: AtomicU64,
    dropped_json: AtomicU64,
    dropped_gateway: AtomicU64,
    rxpk_bad_crc: AtomicU64,
    rxpk_bad_base64: AtomicU64,
    rxpk_invalid: AtomicU64,
    tx_sent: AtomicU64,
    tx_acked: AtomicU64,
    tx_errors: AtomicU64,
    tx_ack_unmatched: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// One gateway as the API shows it (a future `GET /api/v1/gateways`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GatewayInfo {
    /// The EUI, 16 lowercase hex digits.
    pub eui: String,
    /// The protocol version it speaks.
    pub protocol_version: u8,
    /// Where its last PUSH_DATA came from.
    pub push_addr: Option<SocketAddr>,
    /// Where its last PULL_DATA came from: where downlinks go.
    pub pull_addr: Option<SocketAddr>,
    /// When it last sent anything, µs since the Unix epoch.
    pub last_seen_us: i64,
    /// When it last sent PULL_DATA, µs since the Unix epoch.
    pub last_pull_us: Option<i64>,
    /// Whether its downlink path is open (a PULL_DATA within `pull_timeout_ms`).
    pub downlink_ready: bool,
    /// Packets it forwarded (every `rxpk`).
    pub rx_packets: u64,
    /// Packets with an OK CRC, handed to the hub.
    pub rx_ok: u64,
    /// Packets with a failed or absent CRC.
    pub rx_bad_crc: u64,
    /// PULL_RESP datagrams sent to it.
    pub tx_sent: u64,
    /// Its TX_ACKs reporting success.
    pub tx_acked: u64,
    /// Its TX_ACKs reporting an error.
    pub tx_errors: u64,
    /// The last error a TX_ACK reported (`TOO_LATE`, `COLLISION_PACKET`, ...).
    pub last_tx_error: Option<String>,
    /// Its last `stat` report.
    pub stat: Option<GatewayStat>,
}

struct Gateway {
    version: u8,
    push_addr: Option<SocketAddr>,
    pull_addr: Option<SocketAddr>,
    last_seen: Instant,
    last_seen_us: i64,
    last_pull: Option<(Instant, i64)>,
    rx_packets: u64,
    rx_ok: u64,
    rx_bad_crc: u64,
    tx_sent: u64,
    tx_acked: u64,
    tx_errors: u64,
    last_tx_error: Option<String>,
    stat: Option<GatewayStat>,
}

impl Gateway {
    fn new(version: u8) -> Self {
        Gateway {
            version,
            push_addr: None,
            pull_addr: None,
            last_seen: Instant::now(),
            last_seen_us: now_us(),
            last_pull: None,
            rx_packets: 0,
            rx_ok: 0,
            rx_bad_crc: 0,
            tx_sent: 0,
            tx_acked: 0,
            tx_errors: 0,
            last_tx_error: None,
            stat: None,
        }
    }

    fn seen(&mut self, version: u8) {
        self.version = version;
        self.last_seen = Instant::now();
        self.last_seen_us = now_us();
    }
}

struct Shared {
    port: String,
    any_gateway: bool,
    allowed: HashSet<GatewayEui>,
    max_gateways: usize,
    pull_timeout: Duration,
    tx_ack_timeout: Duration,
    gateways: DashMap<GatewayEui, Gateway>,
    /// PULL_RESPs waiting for their TX_ACK: (gateway, token) → when sent.
    pending: DashMap<(GatewayEui, [u8; 2]), Instant>,
    next_token: AtomicU16,
    counters: Counters,
}

impl Shared {
    fn admits(&self, gateway: GatewayEui) -> bool {
        self.any_gateway || self.allowed.contains(&gateway)
    }

    /// Runs `f` on the gateway's entry, creating it when there is room. `None` when the table is full.
    fn with_gateway<T>(&self, gateway: GatewayEui, version: u8, f: impl FnOnce(&mut Gateway) -> T) -> Option<T> {
        if !self.gateways.contains_key(&gateway) && self.gateways.len() >= self.max_gateways {
            return None;
        }
        let mut entry = self.gateways.entry(gateway).or_insert_with(|| Gateway::new(version));
        entry.seen(version);
        Some(f(&mut entry))
    }

    fn sweep(&self) {
        let now = Instant::now();
        self.pending.retain(|_, sent| now.duration_since(*sent) < self.tx_ack_timeout);
        let forget = self.pull_timeout.saturating_mul(FORGET_AFTER_PULL_TIMEOUTS);
        self.gateways.retain(|_, gw| now.duration_since(gw.last_seen) < forget);
    }
}

/// Warns about dropped datagrams at most once per [`WARN_INTERVAL`], counting the ones in between.
struct DropLog {
    last_warn: Option<Instant>,
    suppressed: u64,
}

impl DropLog {
    fn drop(&mut self, peer: SocketAddr, reason: &dyn std::fmt::Display) {
        tracing::debug!(%peer, %reason, "gwmp datagram dropped");
        let now = Instant::now();
        if self.last_warn.is_some_and(|at| now.duration_since(at) < WARN_INTERVAL) {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(%peer, %reason, suppressed = self.suppressed, "gwmp datagram dropped (more are logged at debug)");
        self.last_warn = Some(now);
        self.suppressed = 0;
    }
}

/// The GWMP listener: answers gateways, delivers their packets, and sends plugins' downlinks.
pub struct GwmpTransport {
    socket: Arc<UdpSocket>,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for GwmpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GwmpTransport").field("local_addr", &self.local_addr).finish()
    }
}

impl GwmpTransport {
    /// Binds `config.listen` and starts receiving; every received packet with an OK CRC goes to `inbound`
    /// (waiting for room: back-pressure). A listen port of 0 picks a free port (see
    /// [`GwmpTransport::local_addr`]; the messages' address is the actual port). `config.enabled` is the
    /// caller's to check.
    ///
    /// Fails with [`GwmpError::AddressInUse`] (naming `gwmp.listen` and `--gwmp-listen`) when the address is
    /// taken. Must be called inside a tokio runtime.
    pub fn start(config: &GwmpConfig, inbound: mpsc::Sender<InboundMessage>) -> Result<GwmpTransport, GwmpError> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| GwmpError::NoRuntime)?;
        let addr = config.listen;
        let std_socket = std::net::UdpSocket::bind(addr).map_err(|source| match source.kind() {
            std::io::ErrorKind::AddrInUse => GwmpError::AddressInUse { addr },
            _ => GwmpError::Bind { addr, source },
        })?;
        std_socket.set_nonblocking(true).map_err(|source| GwmpError::Bind { addr, source })?;
        let socket = {
            let _guard = runtime.enter();
            UdpSocket::from_std(std_socket).map_err(|source| GwmpError::Bind { addr, source })?
        };
        let local_addr = socket.local_addr().map_err(|source| GwmpError::Bind { addr, source })?;
        let socket = Arc::new(socket);
        let shared = Arc::new(Shared {
            port: local_addr.port().to_string(),
            any_gateway: config.any_gateway_allowed(),
            allowed: config.allowed().into_iter().collect(),
            max_gateways: config.max_gateways,
            pull_timeout: Duration::from_millis(config.pull_timeout_ms),
            tx_ack_timeout: Duration::from_millis(config.tx_ack_timeout_ms),
            gateways: DashMap::new(),
            pending: DashMap::new(),
            next_token: AtomicU16::new(initial_token()),
            counters: Counters::default(),
        });
        let cancel = CancellationToken::new();
        let task =
            runtime.spawn(receive(socket.clone(), shared.clone(), inbound, config.max_datagram_bytes, cancel.clone()));
        tracing::info!(%local_addr, any_gateway = shared.any_gateway, allowed = shared.allowed.len(), "GWMP listening for LoRa gateways");
        Ok(GwmpTransport { socket, local_addr, shared, cancel, task: std::sync::Mutex::new(Some(task)) })
    }

    /// The address the transport listens on (with the port it picked when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of inbound and outbound messages: the local port in decimal.
    pub fn address(&self) -> &str {
        &self.shared.port
    }

    /// Whether gateways outside the allow-list are accepted.
    pub fn any_gateway_allowed(&self) -> bool {
        self.shared.any_gateway
    }

    /// The counters so far.
    pub fn stats(&self) -> GwmpStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        GwmpStats {
            datagrams: get(&c.datagrams),
            push_data: get(&c.push_data),
            pull_data: get(&c.pull_data),
            delivered: get(&c.delivered),
            dropped_malformed: get(&c.dropped_malformed),
            dropped_version: get(&c.dropped_version),
            dropped_json: get(&c.dropped_json),
            dropped_gateway: get(&c.dropped_gateway),
            rxpk_bad_crc: get(&c.rxpk_bad_crc),
            rxpk_bad_base64: get(&c.rxpk_bad_base64),
            rxpk_invalid: get(&c.rxpk_invalid),
            tx_sent: get(&c.tx_sent),
            tx_acked: get(&c.tx_acked),
            tx_errors: get(&c.tx_errors),
            tx_ack_unmatched: get(&c.tx_ack_unmatched),
        }
    }

    /// A snapshot of every gateway heard recently, ordered by EUI.
    pub fn gateways(&self) -> Vec<GatewayInfo> {
        let now = Instant::now();
        let mut list: Vec<GatewayInfo> = self
            .shared
            .gateways
            .iter()
            .map(|entry| {
                let gw = entry.value();
                GatewayInfo {
                    eui: entry.key().to_string(),
                    protocol_version: gw.version,
                    push_addr: gw.push_addr,
                    pull_addr: gw.pull_addr,
                    last_seen_us: gw.last_seen_us,
                    last_pull_us: gw.last_pull.map(|(_, us)| us),
                    downlink_ready: gw
                        .last_pull
                        .is_some_and(|(at, _)| now.duration_since(at) < self.shared.pull_timeout),
                    rx_packets: gw.rx_packets,
                    rx_ok: gw.rx_ok,
                    rx_bad_crc: gw.rx_bad_crc,
                    tx_sent: gw.tx_sent,
                    tx_acked: gw.tx_acked,
                    tx_errors: gw.tx_errors,
                    last_tx_error: gw.last_tx_error.clone(),
                    stat: gw.stat.clone(),
                }
            })
            .collect();
        list.sort_by(|a, b| a.eui.cmp(&b.eui));
        list
    }

    /// Stops receiving and sending, and waits for the receive task to end. The socket closes when the last
    /// handle to the transport is dropped.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// A token start that differs between runs, so a restarted hub does not match an old TX_ACK by chance.
fn initial_token() -> u16 {
    (now_us() as u64 ^ u64::from(std::process::id())) as u16
}

#[async_trait]
impl Outbound for GwmpTransport {
    async fn send(&self, plugin_id: &str, message: OutboundMessage) -> Result<(), TransportError> {
        if self.cancel.is_cancelled() {
            return Err(TransportError::Unavailable("the GWMP transport is shut down".to_owned()));
        }
        if message.transport != transport::UDP || message.address != self.shared.port {
            return Err(TransportError::Refused(format!(
                "the GWMP transport sends on udp port {}, not {} {}",
                self.shared.port, message.transport, message.address
            )));
        }
        let gateway: GatewayEui = message
            .metadata
            .get(META_GATEWAY)
            .ok_or_else(|| TransportError::Refused(format!("metadata {META_GATEWAY} is required")))?
            .parse()
            .map_err(|e: &str| TransportError::Refused(format!("metadata {META_GATEWAY}: {e}")))?;
        let txpk = Txpk::from_metadata(&message.metadata, &message.payload.0).map_err(TransportError::Refused)?;
        let (version, pull_addr) = {
            let gw = self.shared.gateways.get(&gateway).ok_or_else(|| {
                TransportError::Unavailable(format!("gateway {gateway} is not connected (no PULL_DATA)"))
            })?;
            match (gw.pull_addr, gw.last_pull) {
                (Some(addr), Some((at, _))) if at.elapsed() < self.shared.pull_timeout => (gw.version, addr),
                _ => {
                    return Err(TransportError::Unavailable(format!(
                        "gateway {gateway} has no open downlink path (no recent PULL_DATA)"
                    )));
                }
            }
        };
        let token = self.shared.next_token.fetch_add(1, Ordering::Relaxed).to_be_bytes();
        let datagram = protocol::pull_resp(version, token, &txpk);
        if version >= 2 {
            self.shared.pending.insert((gateway, token), Instant::now());
        }
        self.socket.send_to(&datagram, pull_addr).await.map_err(|e| {
            self.shared.pending.remove(&(gateway, token));
            TransportError::Unavailable(format!("sending to gateway {gateway} at {pull_addr}: {e}"))
        })?;
        bump(&self.shared.counters.tx_sent);
        if let Some(mut gw) = self.shared.gateways.get_mut(&gateway) {
            gw.tx_sent += 1;
        }
        tracing::trace!(plugin_id, %gateway, %pull_addr, "gwmp PULL_RESP sent");
        Ok(())
    }
}

async fn receive(
    socket: Arc<UdpSocket>,
    shared: Arc<Shared>,
    inbound: mpsc::Sender<InboundMessage>,
    max_datagram: usize,
    cancel: CancellationToken,
) {
    // One byte more than the limit tells an oversized datagram from one that fits exactly.
    let mut buf = vec![0u8; max_datagram + 1];
    let mut drops = DropLog { last_warn: None, suppressed: 0 };
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (len, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = sweep.tick() => {
                shared.sweep();
                continue;
            }
            received = socket.recv_from(&mut buf) => match received {
                Ok(received) => received,
                Err(e) => {
                    // ICMP errors surface here on some systems (a gateway went away); keep serving the rest.
                    tracing::debug!(error = %e, "gwmp receive error");
                    continue;
                }
            },
        };
        bump(&shared.counters.datagrams);
        let Some(datagram) = buf.get(..len).filter(|_| len <= max_datagram) else {
            bump(&shared.counters.dropped_malformed);
            drops.drop(peer, &"longer than gwmp.max_datagram_bytes");
            continue;
        };
        let messages = match handle(&shared, datagram, peer, &socket, &mut drops).await {
            Some(messages) => messages,
            None => continue,
        };
        for message in messages {
            tokio::select! {
                _ = cancel.cancelled() => return,
                sent = inbound.send(message) => if sent.is_err() {
                    tracing::info!("the GWMP inbound channel closed; the transport stops receiving");
                    return;
                },
            }
            bump(&shared.counters.delivered);
        }
    }
}

/// Answers one datagram and returns the messages it carries (`None` when it was dropped).
async fn handle(
    shared: &Shared,
    datagram: &[u8],
    peer: SocketAddr,
    socket: &UdpSocket,
    drops: &mut DropLog,
) -> Option<Vec<InboundMessage>> {
    let c = &shared.counters;
    let upstream = match protocol::parse(datagram) {
        Ok(upstream) => upstream,
        Err(e) => {
            bump(match e {
                ParseError::Malformed(_) => &c.dropped_malformed,
                ParseError::Version(_) => &c.dropped_version,
                ParseError::Json(_) => &c.dropped_json,
            });
            drops.drop(peer, &e);
            return None;
        }
    };
    let gateway = match &upstream {
        Upstream::PushData { gateway, .. } | Upstream::PullData { gateway, .. } | Upstream::TxAck { gateway, .. } => {
            *gateway
        }
    };
    if !shared.admits(gateway) {
        bump(&c.dropped_gateway);
        drops.drop(peer, &format_args!("gateway {gateway} is not in gwmp.allowed_gateways"));
        return None;
    }
    match upstream {
        Upstream::PushData { version, token, gateway, body } => {
            let Some(messages) = shared.with_gateway(gateway, version, |gw| {
                gw.push_addr = Some(peer);
                push_data(gw, gateway, peer, body, c, &shared.port)
            }) else {
                bump(&c.dropped_gateway);
                drops.drop(peer, &format_args!("more than gwmp.max_gateways gateways; {gateway} ignored"));
                return None;
            };
            bump(&c.push_data);
            reply(socket, &protocol::ack(version, token, protocol::PUSH_ACK), peer).await;
            Some(messages)
        }
        Upstream::PullData { version, token, gateway } => {
            let known = shared.with_gateway(gateway, version, |gw| {
                gw.pull_addr = Some(peer);
                gw.last_pull = Some((Instant::now(), now_us()));
            });
            if known.is_none() {
                bump(&c.dropped_gateway);
                drops.drop(peer, &format_args!("more than gwmp.max_gateways gateways; {gateway} ignored"));
                return None;
            }
            bump(&c.pull_data);
            reply(socket, &protocol::ack(version, token, protocol::PULL_ACK), peer).await;
            Some(Vec::new())
        }
        Upstream::TxAck { version, token, gateway, error } => {
            if shared.pending.remove(&(gateway, token)).is_none() {
                bump(&c.tx_ack_unmatched);
                tracing::debug!(%gateway, "gwmp TX_ACK with an unknown token");
                return Some(Vec::new());
            }
            match &error {
                None => bump(&c.tx_acked),
                Some(e) => {
                    bump(&c.tx_errors);
                    tracing::info!(%gateway, error = %e, "gateway refused a downlink");
                }
            }
            shared.with_gateway(gateway, version, |gw| match error {
                None => gw.tx_acked += 1,
                Some(e) => {
                    gw.tx_errors += 1;
                    gw.last_tx_error = Some(e);
                }
            });
            Some(Vec::new())
        }
    }
}

fn push_data(
    gw: &mut Gateway,
    gateway: GatewayEui,
    peer: SocketAddr,
    body: PushBody,
    c: &Counters,
    port: &str,
) -> Vec<InboundMessage> {
    if let Some(stat) = body.stat {
        gw.stat = Some(stat);
    }
    let received_us = now_us();
    let mut messages = Vec::with_capacity(body.rxpk.len());
    for value in body.rxpk {
        gw.rx_packets += 1;
        match Rxpk::decode(value) {
            Ok((rxpk, bytes)) => {
                gw.rx_ok += 1;
                let mut message = InboundMessage::new(transport::UDP, port, bytes, received_us);
                message.metadata = rxpk.metadata();
                message.metadata.insert(META_GATEWAY.to_owned(), gateway.to_string());
                message.metadata.insert(META_PEER.to_owned(), peer.to_string());
                messages.push(message);
            }
            Err(RxpkError::Crc) => {
                gw.rx_bad_crc += 1;
                bump(&c.rxpk_bad_crc);
            }
            Err(RxpkError::Base64) => {
                bump(&c.rxpk_bad_base64);
                tracing::debug!(%gateway, "gwmp rxpk dropped: data is not base64");
            }
            Err(RxpkError::Invalid(reason)) => {
                bump(&c.rxpk_invalid);
                tracing::debug!(%gateway, %reason, "gwmp rxpk dropped");
            }
        }
    }
    messages
}

async fn reply(socket: &UdpSocket, datagram: &[u8], peer: SocketAddr) {
    if let Err(e) = socket.send_to(datagram, peer).await {
        tracing::debug!(%peer, error = %e, "gwmp acknowledgement not sent");
    }
}
