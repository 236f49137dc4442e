//! The endpoint devices send to: one task owns the socket, the de-duplication cache, the Block1 uploads and the
//! requests waiting for the runtime's answer, so nothing on the request path takes a lock.
//!
//! For each request, in this order: parse (malformed → reset or drop) → de-duplicate (a retransmission gets
//! the cached response, never a second delivery) → options (unknown critical → 4.02, proxying → 5.05) → path
//! (`/.well-known/core` → discovery) → method (4.05) → token (4.01, 4.03) → Content-Format (4.15) → size
//! (4.13) → Block1 (2.31, 4.08) → well-formedness (4.00) → the runtime (2.04, 4.04, 5.03).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use coap_lite::{MessageClass, MessageType, Packet, RequestType, ResponseType};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use hub_plugin_sdk::abi::InboundMessage;
use hub_runtime::DispatchOutcome;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::stats::{Counters, LogLimiter, bump};
use crate::wire::{self, Block, format, option};
use crate::{
    CoapConfig, CoapError, CoapStats, DatagramSocket, Delivery, Denied, DeviceAuth, EXCHANGE_LIFETIME,
    META_CONFIRMABLE, META_CONTENT_FORMAT, META_METHOD, META_PEER, META_QUERY, META_SUBJECT, TRANSPORT, now_us,
};

/// The path of the CoRE resource directory entry point (RFC 6690).
pub const WELL_KNOWN_CORE: &str = "/.well-known/core";

/// The largest datagram read (the largest UDP payload, plus one byte to notice nothing larger).
const RECV_BUFFER: usize = 65_536;

/// The Max-Age put on 5.03 answers: when the device may try again, in seconds.
const RETRY_AFTER_S: u64 = 2;

/// The CoAP endpoint devices send to.
pub struct CoapServer {
    local_addr: SocketAddr,
    anonymous: bool,
    formats: Vec<u16>,
    links: Arc<ArcSwap<Vec<u8>>>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for CoapServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoapServer").field("local_addr", &self.local_addr).field("anonymous", &self.anonymous).finish()
    }
}

impl CoapServer {
    /// Binds `config.listen` (port 0 picks a free port) and serves devices, handing each accepted request to
    /// `inbound`. Fails with [`CoapError::AddressInUse`] (naming `coap.listen` and `--coap-listen`) when the
    /// address is taken. `config.enabled` is the caller's to check. Must be called inside a tokio runtime.
    pub async fn start(
        config: &CoapConfig,
        auth: Arc<dyn DeviceAuth>,
        inbound: mpsc::Sender<Delivery>,
    ) -> Result<CoapServer, CoapError> {
        config.validate()?;
        tokio::runtime::Handle::try_current().map_err(|_| CoapError::NoRuntime)?;
        let socket = bind_listen(config.listen).await?;
        Self::start_with_socket(Arc::new(socket), config, auth, inbound)
    }

    /// Serves devices on a socket of the caller's (the seam for a DTLS layer, see [`DatagramSocket`]).
    pub fn start_with_socket(
        socket: Arc<dyn DatagramSocket>,
        config: &CoapConfig,
        auth: Arc<dyn DeviceAuth>,
        inbound: mpsc::Sender<Delivery>,
    ) -> Result<CoapServer, CoapError> {
        Self::spawn(socket, config, auth, inbound, Arc::new(Counters::default()), CancellationToken::new())
    }

    pub(crate) fn spawn(
        socket: Arc<dyn DatagramSocket>,
        config: &CoapConfig,
        auth: Arc<dyn DeviceAuth>,
        inbound: mpsc::Sender<Delivery>,
        counters: Arc<Counters>,
        cancel: CancellationToken,
    ) -> Result<CoapServer, CoapError> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| CoapError::NoRuntime)?;
        let local_addr = socket.local_addr().map_err(|source| CoapError::Bind {
            key: "coap.listen",
            addr: config.listen,
            source,
        })?;
        let anonymous = config.anonymous_allowed();
        let links = Arc::new(ArcSwap::from_pointee(Vec::new()));
        let endpoint = Endpoint {
            socket,
            auth,
            inbound,
            counters: counters.clone(),
            links: links.clone(),
            settings: Settings {
                anonymous,
                max_payload: config.max_payload_bytes,
                szx: config.block_szx(),
                formats: config.content_formats.clone(),
                max_inflight: config.max_inflight,
                dispatch_timeout: Duration::from_millis(config.dispatch_timeout_ms),
            },
            dedup: Dedup::new(config.dedup_capacity, EXCHANGE_LIFETIME),
            uploads: Uploads {
                map: HashMap::new(),
                max: config.max_block_transfers,
                timeout: Duration::from_millis(config.block_timeout_ms),
            },
            next_mid: rand::random(),
            log: LogLimiter::new(1_000),
        };
        runtime.spawn(endpoint.run(cancel.clone()));
        tracing::info!(%local_addr, anonymous, "CoAP endpoint listening");
        Ok(CoapServer { local_addr, anonymous, formats: config.content_formats.clone(), links, counters, cancel })
    }

    /// The address the endpoint listens on (with the port it picked when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Whether requests without a token are accepted.
    pub fn anonymous_allowed(&self) -> bool {
        self.anonymous
    }

    /// Sets what `GET /.well-known/core` lists: the path patterns plugins subscribe to (e.g. `/up/*`, from the
    /// runtime's coap subscriptions). Patterns that are not server paths (not starting with a single `/`, such
    /// as the `//host:port/...` addresses of observed devices) or that cannot appear in a link are left out.
    pub fn set_links(&self, patterns: Vec<String>) {
        self.links.store(Arc::new(render_links(&patterns, &self.formats)));
    }

    /// The counters so far (shared with the client when started through [`crate::CoapTransport`]).
    pub fn stats(&self) -> CoapStats {
        self.counters.snapshot()
    }

    /// Stops serving; requests waiting for the runtime are dropped unanswered (devices retransmit or give up).
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }
}

impl Drop for CoapServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Binds the listen address, telling a taken address apart.
pub(crate) async fn bind_listen(listen: SocketAddr) -> Result<UdpSocket, CoapError> {
    UdpSocket::bind(listen).await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            CoapError::AddressInUse { addr: listen }
        } else {
            CoapError::Bind { key: "coap.listen", addr: listen, source }
        }
    })
}

/// The link-format document for `patterns` (RFC 6690), each with the content formats the endpoint takes.
fn render_links(patterns: &[String], formats: &[u16]) -> Vec<u8> {
    let ct = formats.iter().map(u16::to_string).collect::<Vec<_>>().join(" ");
    let mut seen = std::collections::BTreeSet::new();
    let mut links = Vec::new();
    for pattern in patterns {
        let linkable = pattern.starts_with('/')
            && !pattern.starts_with("//")
            && !pattern.chars().any(|c| c.is_whitespace() || c.is_control() || "<>,;\"".contains(c));
        if linkable && seen.insert(pattern.clone()) {
            links.push(format!("<{pattern}>;ct=\"{ct}\""));
        }
    }
    links.join(",").into_bytes()
}

struct Settings {
    anonymous: bool,
    max_payload: usize,
    szx: u8,
    formats: Vec<u16>,
    max_inflight: usize,
    dispatch_timeout: Duration,
}

/// One request being answered: what the response needs.
#[derive(Debug, Clone)]
struct Exchange {
    peer: SocketAddr,
    message_id: u16,
    token: Vec<u8>,
    confirmable: bool,
    /// The No-Response option (RFC 7967): bit 1 suppresses 2.xx, bit 3 4.xx, bit 4 5.xx.
    no_response: u64,
    /// The Block1 option to echo in the final response of an upload.
    block1: Option<Block>,
}

/// A response before it is encoded for an exchange.
struct Response {
    code: ResponseType,
    options: Vec<(u16, Vec<u8>)>,
    payload: Vec<u8>,
}

impl Response {
    fn new(code: ResponseType) -> Self {
        Response { code, options: Vec::new(), payload: Vec::new() }
    }

    /// An error response with a diagnostic payload (RFC 7252 §5.5.2).
    fn error(code: ResponseType, diagnostic: impl Into<String>) -> Self {
        let mut text: String = diagnostic.into();
        text.truncate(200);
        Response { code, options: Vec::new(), payload: text.into_bytes() }
    }

    fn with(mut self, number: u16, value: Vec<u8>) -> Self {
        self.options.push((number, value));
        self
    }

    fn too_large(max_payload: usize) -> Self {
        Response::error(ResponseType::RequestEntityTooLarge, format!("the payload limit is {max_payload} bytes"))
            .with(option::SIZE1, wire::encode_uint(max_payload as u64))
    }

    fn unavailable(diagnostic: &str) -> Self {
        Response::error(ResponseType::ServiceUnavailable, diagnostic)
            .with(option::MAX_AGE, wire::encode_uint(RETRY_AFTER_S))
    }
}

/// What handling a request comes to.
enum Step {
    Respond(Response),
    Dispatch(InboundMessage),
}

/// A request whose dispatch finished (or timed out).
struct Dispatched {
    exchange: Exchange,
    outcome: Option<DispatchOutcome>,
}

type Pending = FuturesUnordered<BoxFuture<'static, Dispatched>>;

struct Endpoint {
    socket: Arc<dyn DatagramSocket>,
    auth: Arc<dyn DeviceAuth>,
    inbound: mpsc::Sender<Delivery>,
    counters: Arc<Counters>,
    links: Arc<ArcSwap<Vec<u8>>>,
    settings: Settings,
    dedup: Dedup,
    uploads: Uploads,
    next_mid: u16,
    log: LogLimiter,
}

impl Endpoint {
    async fn run(mut self, cancel: CancellationToken) {
        let mut pending: Pending = FuturesUnordered::new();
        let mut buf = vec![0u8; RECV_BUFFER];
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let socket = self.socket.clone();
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Some(done) = pending.next(), if !pending.is_empty() => self.answer(done).await,
                _ = sweep.tick() => {
                    let now = Instant::now();
                    self.dedup.expire(now);
                    self.uploads.expire(now);
                }
                received = socket.recv_from(&mut buf), if pending.len() < self.settings.max_inflight => {
                    match received {
                        Ok((len, peer)) => self.datagram(&buf[..len], peer, &mut pending).await,
                        Err(e) => {
                            // ICMP errors from earlier sends surface here on some systems; keep serving.
                            if let Some(suppressed) = self.log.allow() {
                                tracing::warn!(error = %e, suppressed, "CoAP endpoint: receive failed");
                            }
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
            }
        }
        tracing::info!("CoAP endpoint stopped");
    }

    async fn datagram(&mut self, bytes: &[u8], peer: SocketAddr, pending: &mut Pending) {
        bump(&self.counters.datagrams_in);
        let packet = match wire::parse(bytes) {
            Ok(packet) => packet,
            Err(e) => {
                bump(&self.counters.malformed);
                if let Some(suppressed) = self.log.allow() {
                    tracing::warn!(%peer, reason = e.reason, len = bytes.len(), suppressed, "CoAP: malformed datagram");
                }
                if let Some(mid) = e.reject {
                    self.send(&wire::empty(MessageType::Reset, mid), peer).await;
                }
                return;
            }
        };
        let kind = packet.header.get_type();
        let mid = packet.header.message_id;
        let code = wire::code_number(packet.header.code);
        match (code, kind) {
            // Nothing the server sends waits for an ACK, so empty ACKs and resets end nothing here.
            (0, MessageType::Confirmable) => {
                bump(&self.counters.pings);
                self.send(&wire::empty(MessageType::Reset, mid), peer).await;
            }
            (0, _) => {}
            (1..=31, MessageType::Confirmable | MessageType::NonConfirmable) => {
                self.request(packet, peer, pending).await;
            }
            (1..=31, _) => {
                // A request cannot be an ACK or a reset.
                bump(&self.counters.malformed);
            }
            (_, MessageType::Confirmable) => {
                bump(&self.counters.unexpected);
                self.send(&wire::empty(MessageType::Reset, mid), peer).await;
            }
            _ => bump(&self.counters.unexpected),
        }
    }

    async fn request(&mut self, packet: Packet, peer: SocketAddr, pending: &mut Pending) {
        let confirmable = packet.header.get_type() == MessageType::Confirmable;
        let key = (peer, packet.header.message_id);
        match self.dedup.begin(key, Instant::now()) {
            Seen::New => {}
            Seen::InProgress => {
                bump(&self.counters.duplicates);
                return;
            }
            Seen::Answered(bytes) => {
                bump(&self.counters.duplicates);
                if let Some(bytes) = bytes.filter(|_| confirmable) {
                    self.send(&bytes, peer).await;
                }
                return;
            }
        }
        let mut exchange = Exchange {
            peer,
            message_id: packet.header.message_id,
            token: packet.get_token().to_vec(),
            confirmable,
            no_response: wire::first_uint(&packet, option::NO_RESPONSE, 1).flatten().unwrap_or(0),
            block1: None,
        };
        match self.handle(packet, &mut exchange) {
            Step::Respond(response) => self.finish(exchange, response).await,
            Step::Dispatch(message) => self.dispatch(exchange, message, pending).await,
        }
    }

    fn handle(&mut self, packet: Packet, exchange: &mut Exchange) -> Step {
        use Step::Respond;
        if let Err(response) = check_options(&packet) {
            return Respond(response);
        }
        let path = match wire::request_path(&packet) {
            Ok(path) => path,
            Err(reason) => return Respond(Response::error(ResponseType::BadRequest, reason)),
        };
        let method = match packet.header.code {
            MessageClass::Request(method) => method,
            _ => RequestType::UnKnown,
        };
        let (token, query) = match credentials(&packet) {
            Ok(found) => found,
            Err(reason) => return Respond(Response::error(ResponseType::BadRequest, reason)),
        };
        if path == WELL_KNOWN_CORE {
            if method != RequestType::Get {
                return Respond(Response::error(ResponseType::MethodNotAllowed, "only GET"));
            }
            if let Err(response) = self.authorize(token.as_deref(), &path) {
                return Respond(response);
            }
            return Respond(self.discovery(&packet));
        }
        let method_name = match method {
            RequestType::Post => "POST",
            RequestType::Put => "PUT",
            _ => return Respond(Response::error(ResponseType::MethodNotAllowed, "use POST or PUT")),
        };
        let subject = match self.authorize(token.as_deref(), &path) {
            Ok(subject) => subject,
            Err(response) => return Respond(response),
        };
        let content_format = match wire::first_uint(&packet, option::CONTENT_FORMAT, 2) {
            None => None,
            Some(None) => return Respond(Response::error(ResponseType::BadOption, "Content-Format is too long")),
            Some(Some(cf)) => {
                let cf = cf as u16;
                if !self.settings.formats.contains(&cf) {
                    return Respond(Response::error(
                        ResponseType::UnsupportedContentFormat,
                        format!("Content-Format {cf} is not accepted"),
                    ));
                }
                Some(cf)
            }
        };
        let max_payload = self.settings.max_payload;
        if let Some(Some(size1)) = wire::first_uint(&packet, option::SIZE1, 4)
            && size1 > max_payload as u64
        {
            return Respond(Response::too_large(max_payload));
        }
        let block1 = wire::first(&packet, option::BLOCK1).map(|value| Block::decode(value));
        let request_tag = wire::first(&packet, option::REQUEST_TAG).cloned();
        let mut payload = packet.payload;
        if let Some(block) = block1 {
            let Some(block) = block else {
                return Respond(Response::error(ResponseType::BadRequest, "malformed Block1 option"));
            };
            let key = (exchange.peer, path.clone(), request_tag);
            match self.uploads.block(key, block, payload, max_payload, self.settings.szx, Instant::now()) {
                Ok(body) => {
                    bump(&self.counters.block1_completed);
                    exchange.block1 = Some(Block { more: false, ..block });
                    payload = body;
                }
                Err(response) => return Respond(response),
            }
        } else if payload.len() > max_payload {
            return Respond(Response::too_large(max_payload));
        }
        if let Some(cf) = content_format
            && let Err(malformed) = crate::check::well_formed(cf, &payload)
        {
            return Respond(Response::error(ResponseType::BadRequest, malformed.0));
        }
        let mut metadata = BTreeMap::new();
        metadata.insert(META_METHOD.to_owned(), method_name.to_owned());
        metadata.insert(META_CONFIRMABLE.to_owned(), exchange.confirmable.to_string());
        metadata.insert(META_PEER.to_owned(), exchange.peer.to_string());
        if let Some(cf) = content_format {
            metadata.insert(META_CONTENT_FORMAT.to_owned(), cf.to_string());
        }
        if !query.is_empty() {
            metadata.insert(META_QUERY.to_owned(), query.join("&"));
        }
        if let Some(subject) = subject {
            metadata.insert(META_SUBJECT.to_owned(), subject);
        }
        Step::Dispatch(InboundMessage {
            transport: TRANSPORT.to_owned(),
            address: path,
            payload: payload.into(),
            metadata,
            received_us: now_us(),
        })
    }

    /// Applies the anonymous rule and [`DeviceAuth`]; the subject on success, the response otherwise.
    fn authorize(&self, token: Option<&str>, path: &str) -> Result<Option<String>, Response> {
        if token.is_none() && !self.settings.anonymous {
            return Err(Response::error(ResponseType::Unauthorized, "a token is required (?token=...)"));
        }
        self.auth.authorize(token, path).map_err(|denied| match denied {
            Denied::Unauthenticated => Response::error(ResponseType::Unauthorized, "invalid token"),
            Denied::Forbidden => Response::error(ResponseType::Forbidden, "the token may not write here"),
        })
    }

    /// `GET /.well-known/core`, block-wise when the document is larger than one block (or a block was asked for).
    fn discovery(&self, packet: &Packet) -> Response {
        if let Some(Some(accept)) = wire::first_uint(packet, option::ACCEPT, 2)
            && accept != u64::from(format::LINK_FORMAT)
        {
            return Response::error(ResponseType::NotAcceptable, "only application/link-format (40)");
        }
        let document = self.links.load_full();
        let requested = match wire::first(packet, option::BLOCK2) {
            None => None,
            Some(value) => match Block::decode(value) {
                Some(block) => Some(block),
                None => return Response::error(ResponseType::BadRequest, "malformed Block2 option"),
            },
        };
        bump(&self.counters.discovery);
        let ours = Block { num: 0, more: false, szx: self.settings.szx };
        if requested.is_none() && document.len() <= ours.size() {
            return Response { payload: document.to_vec(), ..Response::new(ResponseType::Content) }
                .with(option::CONTENT_FORMAT, wire::encode_uint(u64::from(format::LINK_FORMAT)));
        }
        let (offset, szx) = match requested {
            Some(block) => (block.offset(), block.szx.min(self.settings.szx)),
            None => (0, self.settings.szx),
        };
        let size = 16usize << szx;
        if offset > 0 && offset >= document.len() {
            return Response::error(ResponseType::BadOption, "Block2 beyond the end of the resource");
        }
        let end = (offset + size).min(document.len());
        let block = Block { num: (offset / size) as u32, more: end < document.len(), szx };
        let mut response = Response { payload: document[offset..end].to_vec(), ..Response::new(ResponseType::Content) }
            .with(option::CONTENT_FORMAT, wire::encode_uint(u64::from(format::LINK_FORMAT)))
            .with(option::BLOCK2, block.encode());
        if offset == 0 {
            response = response.with(option::SIZE2, wire::encode_uint(document.len() as u64));
        }
        response
    }

    async fn dispatch(&mut self, exchange: Exchange, message: InboundMessage, pending: &mut Pending) {
        let inbound = self.inbound.clone();
        let permit = match inbound.try_reserve() {
            Ok(permit) => permit,
            Err(mpsc::error::TrySendError::Closed(())) => {
                return self.finish(exchange, Response::unavailable("the hub is shutting down")).await;
            }
            Err(mpsc::error::TrySendError::Full(())) => loop {
                // Back-pressure: wait for room, answering finished requests meanwhile (they need no room).
                tokio::select! {
                    permit = inbound.reserve() => match permit {
                        Ok(permit) => break permit,
                        Err(_) => return self.finish(exchange, Response::unavailable("the hub is shutting down")).await,
                    },
                    Some(done) = pending.next(), if !pending.is_empty() => self.answer(done).await,
                }
            },
        };
        let (tx, rx) = oneshot::channel();
        permit.send(Delivery::new(message, Some(tx)));
        bump(&self.counters.requests_in);
        let timeout = self.settings.dispatch_timeout;
        pending.push(Box::pin(async move {
            let outcome = tokio::time::timeout(timeout, rx).await.ok().and_then(Result::ok);
            Dispatched { exchange, outcome }
        }));
    }

    async fn answer(&mut self, done: Dispatched) {
        let response = match done.outcome {
            Some(outcome) if outcome.delivered > 0 => Response::new(ResponseType::Changed),
            Some(outcome) if outcome.dropped > 0 => Response::unavailable("the plugins' queues are full"),
            Some(_) => Response::error(ResponseType::NotFound, "no plugin takes this path"),
            None => Response::unavailable("the hub did not take the message in time"),
        };
        self.finish(done.exchange, response).await;
    }

    /// Sends the response (piggybacked on the ACK of a confirmable request, non-confirmable otherwise) and
    /// remembers it for retransmissions.
    async fn finish(&mut self, exchange: Exchange, mut response: Response) {
        self.count(&response);
        if let Some(block) = exchange.block1
            && response.code != ResponseType::Continue
        {
            response.options.push((option::BLOCK1, block.encode()));
        }
        let class = wire::code_number(MessageClass::Response(response.code)) >> 5;
        let suppressed = match class {
            2 => exchange.no_response & 0x02 != 0,
            4 => exchange.no_response & 0x08 != 0,
            5 => exchange.no_response & 0x10 != 0,
            _ => false,
        };
        let bytes = if suppressed {
            exchange.confirmable.then(|| wire::empty(MessageType::Acknowledgement, exchange.message_id))
        } else {
            let (kind, mid) = if exchange.confirmable {
                (MessageType::Acknowledgement, exchange.message_id)
            } else {
                self.next_mid = self.next_mid.wrapping_add(1);
                (MessageType::NonConfirmable, self.next_mid)
            };
            let mut packet = wire::response(response.code, kind, mid, &exchange.token);
            for (number, value) in response.options {
                wire::add(&mut packet, number, value);
            }
            packet.payload = response.payload;
            Some(wire::encode(&packet))
        };
        if let Some(bytes) = &bytes {
            self.send(bytes, exchange.peer).await;
        }
        self.dedup.answer((exchange.peer, exchange.message_id), bytes);
    }

    fn count(&self, response: &Response) {
        let c = &self.counters;
        let counter = match response.code {
            ResponseType::Changed => &c.changed,
            ResponseType::Continue => &c.block1_continue,
            ResponseType::BadRequest => &c.bad_request,
            ResponseType::Unauthorized => &c.unauthorized,
            ResponseType::BadOption => &c.bad_option,
            ResponseType::Forbidden => &c.forbidden,
            ResponseType::NotFound => &c.not_found,
            ResponseType::MethodNotAllowed => &c.method_not_allowed,
            ResponseType::RequestEntityIncomplete => &c.incomplete,
            ResponseType::RequestEntityTooLarge => &c.too_large,
            ResponseType::UnsupportedContentFormat => &c.unsupported_format,
            ResponseType::ServiceUnavailable => &c.unavailable,
            ResponseType::ProxyingNotSupported => &c.proxying_refused,
            _ => return,
        };
        bump(counter);
        if matches!(response.code, ResponseType::BadRequest | ResponseType::BadOption)
            && let Some(suppressed) = self.log.allow()
        {
            tracing::info!(
                code = %MessageClass::Response(response.code),
                reason = %String::from_utf8_lossy(&response.payload),
                suppressed,
                "CoAP: bad request"
            );
        }
    }

    async fn send(&self, bytes: &[u8], peer: SocketAddr) {
        if let Err(e) = self.socket.send_to(bytes, peer).await
            && let Some(suppressed) = self.log.allow()
        {
            tracing::warn!(%peer, error = %e, suppressed, "CoAP endpoint: send failed");
        }
    }
}

/// Refuses unknown critical options (4.02), repeated options that must appear once (4.02), and proxy requests
/// (5.05).
fn check_options(packet: &Packet) -> Result<(), Response> {
    for (&number, values) in packet.options() {
        match number {
            option::PROXY_URI | option::PROXY_SCHEME => {
                return Err(Response::error(ResponseType::ProxyingNotSupported, "this endpoint is not a proxy"));
            }
            option::URI_HOST
            | option::URI_PORT
            | option::IF_NONE_MATCH
            | option::CONTENT_FORMAT
            | option::ACCEPT
            | option::BLOCK1
            | option::BLOCK2
            | option::SIZE1
            | option::NO_RESPONSE
            | option::HUB_TOKEN
                if values.len() > 1 =>
            {
                return Err(Response::error(ResponseType::BadOption, format!("option {number} is repeated")));
            }
            option::IF_MATCH
            | option::URI_HOST
            | option::ETAG
            | option::IF_NONE_MATCH
            | option::OBSERVE
            | option::URI_PORT
            | option::URI_PATH
            | option::CONTENT_FORMAT
            | option::MAX_AGE
            | option::URI_QUERY
            | option::ACCEPT
            | option::BLOCK2
            | option::BLOCK1
            | option::SIZE2
            | option::SIZE1
            | option::ECHO
            | option::NO_RESPONSE
            | option::REQUEST_TAG
            | option::HUB_TOKEN => {}
            // Odd numbers are critical (RFC 7252 §5.4.1); OSCORE (9) lands here too, as it is not implemented.
            n if n & 1 == 1 => {
                return Err(Response::error(ResponseType::BadOption, format!("unknown critical option {n}")));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The token (from `?token=` or the hub's token option) and the other query parameters.
fn credentials(packet: &Packet) -> Result<(Option<String>, Vec<String>), &'static str> {
    let mut token = None;
    let mut rest = Vec::new();
    for q in wire::queries(packet)? {
        match q.strip_prefix("token=") {
            Some(t) if token.is_none() => token = Some(t.to_owned()),
            Some(_) => return Err("more than one token"),
            None => rest.push(q),
        }
    }
    if let Some(value) = wire::first(packet, option::HUB_TOKEN) {
        if token.is_some() {
            return Err("a token in both the query and the token option");
        }
        token = Some(String::from_utf8(value.clone()).map_err(|_| "the token option is not UTF-8")?);
    }
    Ok((token, rest))
}

/// What the de-duplication cache knows of a message id.
enum Seen {
    New,
    InProgress,
    Answered(Option<Arc<[u8]>>),
}

/// Message ids seen recently, per peer, with the response sent (RFC 7252 §4.5). Bounded: past `capacity` the
/// oldest entries go first.
struct Dedup {
    map: HashMap<(SocketAddr, u16), DedupEntry>,
    order: VecDeque<(Instant, (SocketAddr, u16))>,
    capacity: usize,
    lifetime: Duration,
}

struct DedupEntry {
    since: Instant,
    answered: bool,
    response: Option<Arc<[u8]>>,
}

impl Dedup {
    fn new(capacity: usize, lifetime: Duration) -> Self {
        Dedup { map: HashMap::new(), order: VecDeque::new(), capacity, lifetime }
    }

    fn begin(&mut self, key: (SocketAddr, u16), now: Instant) -> Seen {
        self.expire(now);
        if let Some(entry) = self.map.get(&key) {
            return if entry.answered { Seen::Answered(entry.response.clone()) } else { Seen::InProgress };
        }
        while self.map.len() >= self.capacity {
            let Some((since, old)) = self.order.pop_front() else { break };
            if self.map.get(&old).is_some_and(|e| e.since == since) {
                self.map.remove(&old);
            }
        }
        self.map.insert(key, DedupEntry { since: now, answered: false, response: None });
        self.order.push_back((now, key));
        Seen::New
    }

    fn answer(&mut self, key: (SocketAddr, u16), response: Option<Vec<u8>>) {
        if let Some(entry) = self.map.get_mut(&key) {
            entry.answered = true;
            entry.response = response.map(Arc::from);
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(since, key)) = self.order.front() {
            if now.duration_since(since) < self.lifetime {
                break;
            }
            self.order.pop_front();
            if self.map.get(&key).is_some_and(|e| e.since == since) {
                self.map.remove(&key);
            }
        }
    }
}

/// A Block1 upload is found again by its peer, path and Request-Tag (RFC 7959 §2.5, RFC 9175): the token may
/// change from block to block.
type UploadKey = (SocketAddr, String, Option<Vec<u8>>);

struct Upload {
    body: Vec<u8>,
    expires: Instant,
}

/// The Block1 uploads being reassembled, at most `max`, each at most the payload limit.
struct Uploads {
    map: HashMap<UploadKey, Upload>,
    max: usize,
    timeout: Duration,
}

impl Uploads {
    /// Takes one block: `Ok(body)` when it completes the upload, otherwise the response (2.31 Continue or an
    /// error that ends the upload).
    fn block(
        &mut self,
        key: UploadKey,
        block: Block,
        payload: Vec<u8>,
        max_payload: usize,
        our_szx: u8,
        now: Instant,
    ) -> Result<Vec<u8>, Response> {
        if (block.more && payload.len() != block.size()) || payload.len() > block.size() {
            self.map.remove(&key);
            return Err(Response::error(ResponseType::BadRequest, "a Block1 block does not match its size"));
        }
        if block.num == 0 {
            if !self.map.contains_key(&key) && self.map.len() >= self.max {
                self.expire(now);
                if self.map.len() >= self.max {
                    return Err(Response::unavailable("too many block-wise uploads in progress"));
                }
            }
            self.map.insert(key.clone(), Upload { body: Vec::new(), expires: now + self.timeout });
        }
        let Some(upload) = self.map.get_mut(&key) else {
            return Err(Response::error(ResponseType::RequestEntityIncomplete, "no upload in progress: send block 0"));
        };
        if block.offset() != upload.body.len() {
            let expected = upload.body.len();
            self.map.remove(&key);
            return Err(Response::error(
                ResponseType::RequestEntityIncomplete,
                format!("expected the block at byte {expected}, got one at {}", block.offset()),
            ));
        }
        if upload.body.len() + payload.len() > max_payload {
            self.map.remove(&key);
            return Err(Response::too_large(max_payload));
        }
        upload.body.extend_from_slice(&payload);
        upload.expires = now + self.timeout;
        if block.more {
            let echo = Block { num: block.num, more: true, szx: block.szx.min(our_szx) };
            return Err(Response::new(ResponseType::Continue).with(option::BLOCK1, echo.encode()));
        }
        Ok(self.map.remove(&key).map(|u| u.body).unwrap_or_default())
    }

    fn expire(&mut self, now: Instant) {
        self.map.retain(|_, upload| upload.expires > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> UploadKey {
        ("127.0.0.1:1".parse().unwrap(), "/up/a".to_owned(), None)
    }

    #[test]
    fn uploads_reassemble_in_order_and_refuse_gaps() {
        let now = Instant::now();
        let mut uploads = Uploads { map: HashMap::new(), max: 2, timeout: Duration::from_secs(5) };
        let b = |num, more| Block { num, more, szx: 0 };
        let r = uploads.block(key(), b(0, true), vec![1; 16], 100, 6, now);
        assert!(matches!(r, Err(ref resp) if resp.code == ResponseType::Continue));
        let r = uploads.block(key(), b(1, true), vec![2; 16], 100, 6, now);
        assert!(matches!(r, Err(ref resp) if resp.code == ResponseType::Continue));
        let body = uploads.block(key(), b(2, false), vec![3; 3], 100, 6, now).ok().unwrap();
        assert_eq!(body.len(), 35);
        assert!(uploads.map.is_empty());

        // A gap ends the upload with 4.08; a later block without block 0 is 4.08 too.
        uploads.block(key(), b(0, true), vec![1; 16], 100, 6, now).err().unwrap();
        let r = uploads.block(key(), b(2, true), vec![1; 16], 100, 6, now).err().unwrap();
        assert_eq!(r.code, ResponseType::RequestEntityIncomplete);
        let r = uploads.block(key(), b(1, false), vec![1; 4], 100, 6, now).err().unwrap();
        assert_eq!(r.code, ResponseType::RequestEntityIncomplete);

        // Beyond the limit: 4.13 with Size1.
        uploads.block(key(), b(0, true), vec![1; 16], 20, 6, now).err().unwrap();
        let r = uploads.block(key(), b(1, true), vec![1; 16], 20, 6, now).err().unwrap();
        assert_eq!(r.code, ResponseType::RequestEntityTooLarge);
        assert!(r.options.iter().any(|(n, v)| *n == option::SIZE1 && wire::uint(v) == Some(20)));

        // A full table refuses new uploads until one expires.
        let other = |port: u16| (SocketAddr::from(([127, 0, 0, 1], port)), "/x".to_owned(), None);
        uploads.block(other(2), b(0, true), vec![0; 16], 100, 6, now).err().unwrap();
        uploads.block(other(3), b(0, true), vec![0; 16], 100, 6, now).err().unwrap();
        let r = uploads.block(other(4), b(0, true), vec![0; 16], 100, 6, now).err().unwrap();
        assert_eq!(r.code, ResponseType::ServiceUnavailable);
        let later = now + Duration::from_secs(6);
        let r = uploads.block(other(4), b(0, true), vec![0; 16], 100, 6, later).err().unwrap();
        assert_eq!(r.code, ResponseType::Continue);
    }

    #[test]
    fn dedup_is_bounded_and_expires() {
        let now = Instant::now();
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut dedup = Dedup::new(2, Duration::from_secs(10));
        assert!(matches!(dedup.begin((peer, 1), now), Seen::New));
        assert!(matches!(dedup.begin((peer, 1), now), Seen::InProgress));
        dedup.answer((peer, 1), Some(vec![1, 2]));
        assert!(matches!(dedup.begin((peer, 1), now), Seen::Answered(Some(ref b)) if b[..] == [1, 2]));
        assert!(matches!(dedup.begin((peer, 2), now), Seen::New));
        assert!(matches!(dedup.begin((peer, 3), now), Seen::New), "the oldest is pushed out");
        assert!(matches!(dedup.begin((peer, 1), now), Seen::New));
        assert!(matches!(dedup.begin((peer, 3), now + Duration::from_secs(11)), Seen::New), "expired");
    }

    #[test]
    fn links_leave_out_what_is_not_a_server_path() {
        let doc = render_links(
            &["/up/*".into(), "//10.0.0.1:5683/*".into(), "/a,b".into(), "/up/*".into(), "/s/x".into()],
            &[50, 60],
        );
        assert_eq!(String::from_utf8(doc).unwrap(), r#"</up/*>;ct="50 60",</s/x>;ct="50 60""#);
    }
}
