//! The embedded broker: rumqttd, listening for devices, with two local links into the hub.
//!
//! One local link subscribes to the configured filters (`#` by default) and turns every publish into an
//! [`InboundMessage`]; the other publishes what plugins send. Both links stay in process (no socket).
//!
//! # Back-pressure
//!
//! The inbound task waits for room in the caller's bounded channel. While it waits it stops draining its link,
//! so rumqttd stops forwarding to it and keeps the publishes in its in-memory log, which is bounded by
//! `segment_bytes × segment_count` per filter. Past that the oldest segment is dropped: the broker never grows
//! without bound, and under sustained overload the oldest data is lost, QoS 0 and QoS 1 alike (rumqttd
//! acknowledges a QoS 1 publish once it is in its log, not once the hub has it).
//!
//! # Echo
//!
//! MQTT 3.1.1 has no "no local" flag and rumqttd ignores MQTT 5's, so what the hub publishes on the embedded
//! broker comes back as inbound when it matches `subscribe`. A plugin should not subscribe to the topics it
//! publishes on (or `subscribe` should leave them out).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hub_plugin_sdk::abi::{InboundMessage, OutboundMessage};
use hub_runtime::{Outbound, TransportError};
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Publish};
use rumqttd::{Broker, Config, ConnectionSettings, Notification, RouterConfig, ServerSettings};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{BrokerConfig, EMBEDDED_BROKER_NAME, check_topic};
use crate::{DeviceAuth, META_BROKER, META_RETAIN, MqttError, now_us, outbound_flags};

/// How long [`EmbeddedBroker::start`] waits for the listener to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How many outbound publishes wait for the broker's router before `send` waits.
const OUTBOUND_QUEUE: usize = 1024;

/// Counters of the embedded broker, for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BrokerStats {
    /// Publishes handed to the hub.
    pub messages_in: u64,
    /// Publishes sent for plugins.
    pub messages_out: u64,
    /// Device connections refused for bad credentials (a CONNECT without any is refused before the check).
    pub auth_refused: u64,
}

#[derive(Default)]
struct Counters {
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    auth_refused: AtomicU64,
}

/// The embedded MQTT broker, listening for devices.
///
/// rumqttd runs its router and listener on threads of its own (each with a small current-thread runtime) and
/// offers no way to stop them: the listener lives until the process exits. [`EmbeddedBroker::shutdown`] stops
/// the hub's side (forwarding in and out).
pub struct EmbeddedBroker {
    local_addr: SocketAddr,
    anonymous: bool,
    outbound: mpsc::Sender<Publish>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("local_addr", &self.local_addr)
            .field("anonymous", &self.anonymous)
            .finish()
    }
}

impl EmbeddedBroker {
    /// Starts the broker on `config.listen` and forwards every publish matching `config.subscribe` into
    /// `inbound`. A listen port of 0 picks a free port (see [`EmbeddedBroker::local_addr`]).
    ///
    /// When anonymous access is allowed (see [`BrokerConfig::anonymous_allowed`]) every device is accepted and
    /// credentials are not checked; otherwise a CONNECT without credentials, or with credentials `auth` refuses,
    /// gets "not authorised". The namespace `auth` returns is logged, not enforced on topics: rumqttd 0.20 has
    /// no publish authorisation hook and does not tell a local link who published. `config.enabled` is the
    /// caller's to check.
    ///
    /// Fails with [`MqttError::AddressInUse`] (naming `mqtt.broker.listen` and `--mqtt-listen`) when the address
    /// is taken. Must be called inside a tokio runtime.
    pub async fn start(
        config: &BrokerConfig,
        auth: Arc<dyn DeviceAuth>,
        inbound: mpsc::Sender<InboundMessage>,
    ) -> Result<EmbeddedBroker, MqttError> {
        config.validate("mqtt.broker")?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| MqttError::NoRuntime)?;
        let listen = probe_listen(config.listen)?;
        let anonymous = config.anonymous_allowed();
        let counters = Arc::new(Counters::default());

        let mut connections = ConnectionSettings {
            connection_timeout_ms: config.connect_timeout_ms,
            max_payload_size: config.max_payload_bytes,
            max_inflight_count: config.max_inflight,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        };
        if !anonymous {
            let counters = counters.clone();
            connections.set_auth_handler(move |client_id: String, username: String, password: String| {
                let namespace = auth.check(&username, &password);
                match &namespace {
                    Some(ns) => tracing::debug!(client_id, username, namespace = ns, "mqtt device authenticated"),
                    None => {
                        counters.auth_refused.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(client_id, username, "mqtt device refused: bad credentials");
                    }
                }
                std::future::ready(namespace.is_some())
            });
        }
        let server = ServerSettings {
            name: "hub-devices".to_owned(),
            listen,
            tls: None,
            next_connection_delay_ms: 0,
            connections,
        };
        let rumqttd_config = Config {
            id: 0,
            router: RouterConfig {
                // Two local links (in and out) count as connections too.
                max_connections: config.max_connections.saturating_add(2),
                max_outgoing_packet_count: 200,
                max_segment_size: config.segment_bytes,
                max_segment_count: config.segment_count,
                ..RouterConfig::default()
            },
            v4: Some([("hub-devices".to_owned(), server)].into_iter().collect()),
            ..Config::default()
        };

        let mut broker = Broker::new(rumqttd_config);
        let (mut in_tx, in_rx) = broker.link("hub-inbound").map_err(|e| MqttError::BrokerStart(e.to_string()))?;
        for filter in &config.subscribe {
            in_tx.subscribe(filter.clone()).map_err(|e| MqttError::BrokerStart(e.to_string()))?;
        }
        let (out_tx, out_rx) = broker.link("hub-outbound").map_err(|e| MqttError::BrokerStart(e.to_string()))?;

        let broker_thread = thread::Builder::new()
            .name("mqtt-broker".to_owned())
            .spawn(move || {
                if let Err(e) = broker.start() {
                    tracing::error!(error = %e, "the embedded MQTT broker stopped");
                }
            })
            .map_err(|e| MqttError::BrokerStart(format!("cannot spawn the broker thread: {e}")))?;
        wait_until_listening(listen, &broker_thread).await?;

        let cancel = CancellationToken::new();
        runtime.spawn(forward_inbound(in_tx, in_rx, inbound, counters.clone(), cancel.clone()));
        runtime.spawn(drain_link(out_rx, cancel.clone()));
        let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_QUEUE);
        let out_counters = counters.clone();
        thread::Builder::new()
            .name("mqtt-broker-out".to_owned())
            .spawn(move || publish_outbound(out_tx, outbound_rx, out_counters))
            .map_err(|e| MqttError::BrokerStart(format!("cannot spawn the outbound thread: {e}")))?;

        tracing::info!(%listen, anonymous, "embedded MQTT broker listening");
        Ok(EmbeddedBroker { local_addr: listen, anonymous, outbound, counters, cancel })
    }

    /// The address the broker listens on (with the port it picked when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Whether devices may connect without credentials.
    pub fn anonymous_allowed(&self) -> bool {
        self.anonymous
    }

    /// The counters so far.
    pub fn stats(&self) -> BrokerStats {
        BrokerStats {
            messages_in: self.counters.messages_in.load(Ordering::Relaxed),
            messages_out: self.counters.messages_out.load(Ordering::Relaxed),
            auth_refused: self.counters.auth_refused.load(Ordering::Relaxed),
        }
    }

    /// Stops forwarding publishes to and from the hub. The listener itself stays until the process exits.
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }
}

#[async_trait]
impl Outbound for EmbeddedBroker {
    async fn send(&self, plugin_id: &str, message: OutboundMessage) -> Result<(), TransportError> {
        if self.cancel.is_cancelled() {
            return Err(TransportError::Unavailable("the embedded MQTT broker is shut down".to_owned()));
        }
        check_topic(&message.address).map_err(TransportError::Refused)?;
        // rumqttd's local links publish at QoS 0 only, so a requested QoS 1 is delivered at QoS 0.
        let (_qos, retain) = outbound_flags(&message.metadata, 0).map_err(TransportError::Refused)?;
        let publish = Publish::new(message.address.into_bytes(), message.payload.0, retain);
        self.outbound.send(publish).await.map_err(|_| {
            TransportError::Unavailable("the embedded MQTT broker's outbound link is closed".to_owned())
        })?;
        tracing::trace!(plugin_id, "mqtt publish queued on the embedded broker");
        Ok(())
    }
}

/// Resolves port 0 to a free port and fails early, with the key and flag named, when the address is taken.
///
/// rumqttd binds on its own thread and only logs a failure, so the check happens here first. Another process
/// could still take the address between this check and rumqttd's bind; [`wait_until_listening`] catches that
/// when the listener thread ends.
fn probe_listen(listen: SocketAddr) -> Result<SocketAddr, MqttError> {
    match TcpListener::bind(listen) {
        Ok(probe) => probe.local_addr().map_err(|source| MqttError::Bind { addr: listen, source }),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(MqttError::AddressInUse { addr: listen }),
        Err(source) => Err(MqttError::Bind { addr: listen, source }),
    }
}

async fn wait_until_listening(listen: SocketAddr, broker_thread: &thread::JoinHandle<()>) -> Result<(), MqttError> {
    let target = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), listen.port()),
        _ => listen,
    };
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if broker_thread.is_finished() {
            return Err(MqttError::AddressInUse { addr: listen });
        }
        let connected = tokio::task::spawn_blocking(move || {
            TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok()
        })
        .await
        .unwrap_or(false);
        if connected {
            // A listener of another process could have answered; give a failed bind a moment to show.
            tokio::time::sleep(Duration::from_millis(20)).await;
            if broker_thread.is_finished() {
                return Err(MqttError::AddressInUse { addr: listen });
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(MqttError::BrokerStart(format!(
                "the broker did not listen on {listen} within {READY_TIMEOUT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Turns each publish on the inbound link into an [`InboundMessage`], waiting for room in `inbound`.
async fn forward_inbound(
    _link_tx: LinkTx,
    mut link_rx: LinkRx,
    inbound: mpsc::Sender<InboundMessage>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
) {
    loop {
        let notification = tokio::select! {
            _ = cancel.cancelled() => return,
            next = link_rx.next() => match next {
                Ok(Some(notification)) => notification,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "the embedded broker's inbound link closed");
                    return;
                }
            },
        };
        match notification {
            Notification::Forward(forward) => {
                let publish = forward.publish;
                let Ok(topic) = std::str::from_utf8(&publish.topic) else {
                    // The broker checks topics are UTF-8 when it decodes them; this is only defensive.
                    tracing::warn!("dropped a publish whose topic is not UTF-8");
                    continue;
                };
                let mut message = InboundMessage::mqtt(topic, publish.payload.to_vec(), now_us());
                // rumqttd does not tell a local link the QoS the device published with, so `qos` is absent.
                message.metadata.insert(META_RETAIN.to_owned(), publish.retain.to_string());
                message.metadata.insert(META_BROKER.to_owned(), EMBEDDED_BROKER_NAME.to_owned());
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    sent = inbound.send(message) => if sent.is_err() {
                        tracing::info!("the MQTT inbound channel closed; the embedded broker stops forwarding");
                        return;
                    },
                }
                counters.messages_in.fetch_add(1, Ordering::Relaxed);
            }
            // The router paused this link because its buffer was full; ask it to carry on now there is room.
            Notification::Unschedule => {
                if let Err(e) = link_rx.wake().await {
                    tracing::error!(error = %e, "the embedded broker's inbound link closed");
                    return;
                }
            }
            _ => {}
        }
    }
}

/// Reads and discards what the router sends the outbound link, so its buffer never fills.
async fn drain_link(mut link_rx: LinkRx, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            next = link_rx.next() => match next {
                Ok(Some(Notification::Unschedule)) => {
                    if link_rx.wake().await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            },
        }
    }
}

/// Owns the outbound link on a thread of its own: handing a packet to rumqttd's router may block.
fn publish_outbound(mut link_tx: LinkTx, mut queue: mpsc::Receiver<Publish>, counters: Arc<Counters>) {
    // `LinkTx::send` is async in name only (it never yields), so a bare current-thread runtime drives it.
    let runtime = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot run the embedded broker's outbound link");
            return;
        }
    };
    while let Some(publish) = queue.blocking_recv() {
        if let Err(e) = runtime.block_on(link_tx.send(Packet::Publish(publish, None))) {
            tracing::error!(error = %e, "the embedded broker's outbound link closed");
            return;
        }
        counters.messages_out.fetch_add(1, Ordering::Relaxed);
    }
}
