//! The hub as a CoAP client: one socket, one receive task, and exchanges matched by token (responses) and by
//! message id (empty ACKs and resets). Confirmable requests are retransmitted per RFC 7252 §4.2 (ACK_TIMEOUT
//! times a random factor up to 1.5, doubling, MAX_RETRANSMIT times).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use coap_lite::{MessageClass, MessageType, Packet, RequestType, ResponseType};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::DatagramSocket;
use crate::config::ClientConfig;
use crate::stats::{Counters, LogLimiter, bump};
use crate::wire::{self, Block, DeviceUri, option};

/// How many events one exchange or observation may have queued before more are dropped.
const ROUTE_QUEUE: usize = 16;
/// How many confirmable messages already acknowledged are remembered, to acknowledge their retransmissions
/// again instead of resetting them.
const ACKED_MEMORY: usize = 1024;

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ClientError {
    /// No ACK or response after every retransmission, or no separate response in time.
    #[error("no response from {0}")]
    Timeout(SocketAddr),
    /// The device reset the exchange.
    #[error("{0} reset the exchange")]
    Reset(SocketAddr),
    /// The client is shutting down.
    #[error("the CoAP client is shut down")]
    Closed,
    /// A block-wise transfer went wrong (too large, out of order, refused).
    #[error("block-wise transfer failed: {0}")]
    Blockwise(String),
}

/// What the receive task hands an exchange.
#[derive(Debug)]
pub(crate) enum Event {
    /// An empty ACK for message id.
    Ack(u16),
    /// A reset of message id.
    Reset(u16),
    /// A response (piggybacked, separate, or a notification) carrying the route's token.
    Message(Box<Packet>, SocketAddr),
}

#[derive(Default)]
struct Routes {
    by_mid: HashMap<(SocketAddr, u16), mpsc::Sender<Event>>,
    by_token: HashMap<Vec<u8>, mpsc::Sender<Event>>,
}

pub(crate) struct ClientSettings {
    pub(crate) ack_timeout: Duration,
    pub(crate) max_retransmit: u32,
    pub(crate) response_timeout: Duration,
    pub(crate) max_body: usize,
    pub(crate) szx: u8,
}

impl ClientSettings {
    pub(crate) fn new(config: &ClientConfig, block_szx: u8) -> Self {
        ClientSettings {
            ack_timeout: Duration::from_millis(config.ack_timeout_ms),
            max_retransmit: config.max_retransmit,
            response_timeout: Duration::from_millis(config.response_timeout_ms),
            max_body: config.max_body_bytes,
            szx: block_szx,
        }
    }
}

/// The client endpoint, shared by observations and outbound requests.
pub(crate) struct Client {
    socket: Arc<dyn DatagramSocket>,
    routes: Mutex<Routes>,
    next_mid: AtomicU16,
    token_salt: u64,
    next_token: AtomicU64,
    pub(crate) settings: ClientSettings,
    pub(crate) counters: Arc<Counters>,
    pub(crate) log: LogLimiter,
}

impl Client {
    /// Starts the receive task on `socket`.
    pub(crate) fn start(
        socket: Arc<dyn DatagramSocket>,
        settings: ClientSettings,
        counters: Arc<Counters>,
        cancel: CancellationToken,
    ) -> Arc<Client> {
        let client = Arc::new(Client {
            socket,
            routes: Mutex::new(Routes::default()),
            next_mid: AtomicU16::new(rand::random()),
            token_salt: rand::random(),
            next_token: AtomicU64::new(0),
            settings,
            counters,
            log: LogLimiter::new(1_000),
        });
        tokio::spawn(receive(client.clone(), cancel));
        client
    }

    /// The local address of the client socket.
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr().ok()
    }

    fn routes(&self) -> MutexGuard<'_, Routes> {
        // A panic while holding this lock cannot leave the maps inconsistent (single inserts and removes).
        self.routes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn message_id(&self) -> u16 {
        self.next_mid.fetch_add(1, Ordering::Relaxed)
    }

    /// A fresh route: a new token whose messages come to the returned receiver.
    pub(crate) fn route(self: &Arc<Self>) -> Route {
        // Eight bytes, unpredictable from outside (salted), never repeated within a run (counter).
        let n = self.next_token.fetch_add(1, Ordering::Relaxed);
        let token = (n ^ self.token_salt).to_be_bytes().to_vec();
        let (tx, rx) = mpsc::channel(ROUTE_QUEUE);
        self.routes().by_token.insert(token.clone(), tx.clone());
        Route { client: self.clone(), token, tx, rx, mids: Vec::new() }
    }

    async fn send(&self, bytes: &[u8], peer: SocketAddr) -> bool {
        match self.socket.send_to(bytes, peer).await {
            Ok(_) => true,
            Err(e) => {
                if let Some(suppressed) = self.log.allow() {
                    tracing::warn!(%peer, error = %e, suppressed, "CoAP client: send failed");
                }
                false
            }
        }
    }

    /// Sends a non-confirmable request and forgets it (its response, if any, is reset as unmatched).
    pub(crate) async fn send_non(&self, peer: SocketAddr, mut packet: Packet) -> bool {
        packet.header.set_type(MessageType::NonConfirmable);
        packet.header.message_id = self.message_id();
        let n = self.next_token.fetch_add(1, Ordering::Relaxed);
        packet.set_token((n ^ self.token_salt).to_be_bytes().to_vec());
        self.send(&wire::encode(&packet), peer).await
    }

    /// GETs the blocks after `first` (a 2.05 carrying Block2 with more set) and returns the whole body, at most
    /// `max_body` bytes (RFC 7959 §2.4; for a notification, §3.4: the rest comes by plain GETs).
    pub(crate) async fn rest_of_body(
        self: &Arc<Self>,
        peer: SocketAddr,
        uri: &DeviceUri,
        first: &Packet,
    ) -> Result<Vec<u8>, ClientError> {
        let mut body = first.payload.clone();
        let Some(mut block) = wire::first(first, option::BLOCK2).and_then(|v| Block::decode(v)) else {
            return Ok(body);
        };
        while block.more {
            if body.len() > self.settings.max_body {
                return Err(ClientError::Blockwise(format!("body larger than {} bytes", self.settings.max_body)));
            }
            let next = Block { num: (body.len() / block.size()) as u32, more: false, szx: block.szx };
            let mut request = request_packet(RequestType::Get, uri);
            wire::add(&mut request, option::BLOCK2, next.encode());
            let response = self.route().request(peer, request, true).await?;
            if response.header.code != MessageClass::Response(ResponseType::Content) {
                return Err(ClientError::Blockwise(format!("block {} answered {}", next.num, response.header.code)));
            }
            block = wire::first(&response, option::BLOCK2)
                .and_then(|v| Block::decode(v))
                .ok_or_else(|| ClientError::Blockwise("a block came back without Block2".to_owned()))?;
            if block.offset() != body.len() {
                return Err(ClientError::Blockwise(format!("block {} is out of order", block.num)));
            }
            body.extend_from_slice(&response.payload);
        }
        if body.len() > self.settings.max_body {
            return Err(ClientError::Blockwise(format!("body larger than {} bytes", self.settings.max_body)));
        }
        Ok(body)
    }
}

/// A request packet for `uri` (path and query options; the caller adds the rest).
pub(crate) fn request_packet(method: RequestType, uri: &DeviceUri) -> Packet {
    let mut packet = Packet::new();
    packet.header.set_version(1);
    packet.header.code = MessageClass::Request(method);
    uri.add_to(&mut packet);
    packet
}

/// One token's way back from the receive task. Dropping it forgets the token and its message ids.
pub(crate) struct Route {
    client: Arc<Client>,
    token: Vec<u8>,
    tx: mpsc::Sender<Event>,
    rx: mpsc::Receiver<Event>,
    mids: Vec<(SocketAddr, u16)>,
}

impl Drop for Route {
    fn drop(&mut self) {
        let mut routes = self.client.routes();
        routes.by_token.remove(&self.token);
        for key in &self.mids {
            routes.by_mid.remove(key);
        }
    }
}

impl Route {
    /// The next event for this route (`None` once the client stops).
    pub(crate) async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The route's token.
    pub(crate) fn token(&self) -> &[u8] {
        &self.token
    }

    /// Sends `packet` with this route's token and a fresh message id and waits for the response: confirmable
    /// ones are retransmitted until acknowledged, then a separate response is awaited.
    pub(crate) async fn request(
        &mut self,
        peer: SocketAddr,
        mut packet: Packet,
        confirmable: bool,
    ) -> Result<Packet, ClientError> {
        let client = self.client.clone();
        let mid = client.message_id();
        packet.header.message_id = mid;
        packet.header.set_type(if confirmable { MessageType::Confirmable } else { MessageType::NonConfirmable });
        packet.set_token(self.token.clone());
        let bytes = wire::encode(&packet);
        if confirmable {
            client.routes().by_mid.insert((peer, mid), self.tx.clone());
            self.mids.push((peer, mid));
        }
        client.send(&bytes, peer).await;
        if confirmable {
            let factor = 1.0 + rand::random::<f64>() * 0.5;
            let mut wait = client.settings.ack_timeout.mul_f64(factor);
            let mut retransmissions = 0;
            loop {
                match tokio::time::timeout(wait, self.rx.recv()).await {
                    Ok(Some(Event::Message(response, from))) if from == peer => return Ok(*response),
                    Ok(Some(Event::Ack(m))) if m == mid => break,
                    Ok(Some(Event::Reset(m))) if m == mid => return Err(ClientError::Reset(peer)),
                    Ok(Some(_)) => continue,
                    Ok(None) => return Err(ClientError::Closed),
                    Err(_) => {
                        if retransmissions >= client.settings.max_retransmit {
                            return Err(ClientError::Timeout(peer));
                        }
                        retransmissions += 1;
                        bump(&client.counters.retransmissions);
                        client.send(&bytes, peer).await;
                        wait *= 2;
                    }
                }
            }
        }
        let deadline = tokio::time::Instant::now() + client.settings.response_timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Event::Message(response, from))) if from == peer => return Ok(*response),
                Ok(Some(Event::Reset(m))) if m == mid => return Err(ClientError::Reset(peer)),
                Ok(Some(_)) => continue,
                Ok(None) => return Err(ClientError::Closed),
                Err(_) => return Err(ClientError::Timeout(peer)),
            }
        }
    }
}

/// The receive task: routes responses by token and empty messages by message id; acknowledges confirmable
/// responses that have a route and resets those that have none (RFC 7641 §3.6: that ends an observation the
/// hub no longer wants).
async fn receive(client: Arc<Client>, cancel: CancellationToken) {
    let mut buf = vec![0u8; 65_536];
    let mut acked: VecDeque<(SocketAddr, u16)> = VecDeque::with_capacity(ACKED_MEMORY);
    let mut acked_set: HashSet<(SocketAddr, u16)> = HashSet::with_capacity(ACKED_MEMORY);
    let socket = client.socket.clone();
    loop {
        let (len, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            received = socket.recv_from(&mut buf) => match received {
                Ok(received) => received,
                Err(e) => {
                    if let Some(suppressed) = client.log.allow() {
                        tracing::debug!(error = %e, suppressed, "CoAP client: receive failed");
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            },
        };
        let packet = match wire::parse(&buf[..len]) {
            Ok(packet) => packet,
            Err(e) => {
                bump(&client.counters.malformed);
                if let Some(suppressed) = client.log.allow() {
                    tracing::warn!(%peer, reason = e.reason, suppressed, "CoAP client: malformed datagram");
                }
                if let Some(mid) = e.reject {
                    client.send(&wire::empty(MessageType::Reset, mid), peer).await;
                }
                continue;
            }
        };
        let mid = packet.header.message_id;
        let kind = packet.header.get_type();
        let code = wire::code_number(packet.header.code);
        if code == 0 {
            let event = match kind {
                MessageType::Acknowledgement => Event::Ack(mid),
                MessageType::Reset => Event::Reset(mid),
                MessageType::Confirmable => {
                    bump(&client.counters.pings);
                    client.send(&wire::empty(MessageType::Reset, mid), peer).await;
                    continue;
                }
                MessageType::NonConfirmable => continue,
            };
            let route = client.routes().by_mid.get(&(peer, mid)).cloned();
            if let Some(route) = route {
                let _ = route.try_send(event);
            }
            continue;
        }
        if code >> 5 == 0 {
            // A request to the client socket: nobody serves here.
            bump(&client.counters.unexpected);
            if kind == MessageType::Confirmable {
                client.send(&wire::empty(MessageType::Reset, mid), peer).await;
            }
            continue;
        }
        if kind == MessageType::Confirmable && acked_set.contains(&(peer, mid)) {
            // A retransmission of something already acknowledged: acknowledge again, deliver nothing.
            client.send(&wire::empty(MessageType::Acknowledgement, mid), peer).await;
            continue;
        }
        let route = client.routes().by_token.get(packet.get_token()).cloned();
        let routed = match route {
            Some(route) => {
                // A full queue means the owner is not keeping up: this message is lost, which for
                // notifications only skips a state the next one supersedes.
                let _ = route.try_send(Event::Message(Box::new(packet), peer));
                true
            }
            None => false,
        };
        match (kind, routed) {
            (MessageType::Confirmable, true) => {
                client.send(&wire::empty(MessageType::Acknowledgement, mid), peer).await;
                if acked.len() == ACKED_MEMORY
                    && let Some(old) = acked.pop_front()
                {
                    acked_set.remove(&old);
                }
                acked.push_back((peer, mid));
                acked_set.insert((peer, mid));
            }
            (MessageType::Confirmable | MessageType::NonConfirmable, false) => {
                bump(&client.counters.unmatched);
                client.send(&wire::empty(MessageType::Reset, mid), peer).await;
            }
            (_, false) => bump(&client.counters.unmatched),
            _ => {}
        }
    }
}
