//! Bridges: rumqttc client connections to external brokers.
//!
//! Each bridge runs one task that polls its connection. After a failure it waits (exponential backoff from
//! `reconnect_min_ms` to `reconnect_max_ms`) and connects again; on every CONNACK it subscribes again, so a
//! broker restart needs no action. With `clean_session = false` the broker keeps the session while the hub is
//! away and sends the queued QoS 1 messages when it comes back.
//!
//! # Back-pressure and delivery
//!
//! A received publish is handed to the caller's bounded channel before the connection is polled again, so a
//! slow consumer stops the socket being read and TCP slows the broker down. QoS 1 publishes are acknowledged
//! only after the channel accepted them (manual acks): if the hub stops or the connection drops first, the
//! broker delivers them again (at least once; duplicates are possible). QoS 0 publishes may be lost when the
//! connection drops, as QoS 0 allows. A wait longer than about 1.5 × keep-alive makes the broker drop the
//! connection; the bridge then reconnects and, for QoS 1, nothing is lost.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hub_plugin_sdk::abi::{InboundMessage, OutboundMessage};
use hub_runtime::{Outbound, TransportError};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, MqttOptions, PubAck, QoS, Request, Subscribe,
    SubscribeFilter, TlsConfiguration, Transport,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{BridgeConfig, check_topic};
use crate::{META_BROKER, META_QOS, META_RETAIN, MqttError, now_us, outbound_flags};

/// How long [`Bridge::shutdown`] waits for the DISCONNECT to go out and the task to end.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one connection attempt (TCP, TLS and CONNACK) may take, in seconds.
const CONNECT_TIMEOUT_SECS: u64 = 10;

/// A bridge's connection state and counters, for status reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeStatus {
    /// The bridge's name.
    pub name: String,
    /// Whether the connection is up (CONNACK received, no error since).
    pub connected: bool,
    /// The last connection error, if any.
    pub last_error: Option<String>,
    /// How many times the connection was lost or could not be made.
    pub connection_failures: u64,
    /// How many times it connected (the first time included).
    pub connects: u64,
    /// Publishes handed to the hub.
    pub messages_in: u64,
    /// Publishes queued for the broker.
    pub messages_out: u64,
}

#[derive(Default)]
struct State {
    connected: AtomicBool,
    last_error: Mutex<Option<String>>,
    connection_failures: AtomicU64,
    connects: AtomicU64,
    messages_in: AtomicU64,
    messages_out: AtomicU64,
}

/// One client connection to an external broker.
pub struct Bridge {
    name: String,
    default_qos: u8,
    max_packet_bytes: usize,
    client: AsyncClient,
    state: Arc<State>,
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge").field("name", &self.name).finish()
    }
}

impl Bridge {
    /// Validates `config` and starts connecting in the background; received publishes go to `inbound`.
    ///
    /// Returns at once: connection failures are retried forever and reported by [`Bridge::status`]. Fails only
    /// for bad configuration (with the key named), unreadable TLS files, or outside a tokio runtime.
    pub fn start(config: &BridgeConfig, inbound: mpsc::Sender<InboundMessage>) -> Result<Bridge, MqttError> {
        config.validate(&format!("mqtt.bridges.{}", config.name))?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| MqttError::NoRuntime)?;
        let endpoint = config.endpoint()?;

        let mut options = MqttOptions::new(config.client_id.clone(), endpoint.host.clone(), endpoint.port);
        options
            .set_keep_alive(Duration::from_secs(config.keep_alive_secs))
            .set_clean_session(config.clean_session)
            .set_max_packet_size(config.max_packet_bytes, config.max_packet_bytes)
            .set_manual_acks(true);
        if let Some(username) = &config.username {
            options.set_credentials(username.clone(), config.resolved_password()?.unwrap_or_default());
        }
        if endpoint.tls {
            options.set_transport(Transport::Tls(tls_configuration(config)?));
        }
        let (client, mut eventloop) = AsyncClient::new(options, config.request_queue);
        eventloop.network_options.set_connection_timeout(CONNECT_TIMEOUT_SECS);
        // Commands are small publishes: send each at once rather than wait for the broker's delayed ACK.
        eventloop.network_options.set_tcp_nodelay(true);

        let state = Arc::new(State::default());
        let cancel = CancellationToken::new();
        let session = Session {
            name: config.name.clone(),
            filters: config.subscribe.clone(),
            qos: qos(config.qos),
            backoff: config.backoff(),
            inbound,
            state: state.clone(),
            cancel: cancel.clone(),
        };
        let task = runtime.spawn(session.run(eventloop));
        tracing::info!(
            bridge = config.name,
            host = endpoint.host,
            port = endpoint.port,
            tls = endpoint.tls,
            "mqtt bridge started"
        );
        Ok(Bridge {
            name: config.name.clone(),
            default_qos: config.qos,
            max_packet_bytes: config.max_packet_bytes,
            client,
            state,
            cancel,
            task: Mutex::new(Some(task)),
        })
    }

    /// The bridge's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The connection state and counters now.
    pub fn status(&self) -> BridgeStatus {
        BridgeStatus {
            name: self.name.clone(),
            connected: self.state.connected.load(Ordering::Relaxed),
            last_error: self.state.last_error.lock().map(|e| e.clone()).unwrap_or_default(),
            connection_failures: self.state.connection_failures.load(Ordering::Relaxed),
            connects: self.state.connects.load(Ordering::Relaxed),
            messages_in: self.state.messages_in.load(Ordering::Relaxed),
            messages_out: self.state.messages_out.load(Ordering::Relaxed),
        }
    }

    /// Whether the connection is up.
    pub fn is_connected(&self) -> bool {
        self.state.connected.load(Ordering::Relaxed)
    }

    /// Disconnects cleanly and stops the task (waiting at most a few seconds). QoS 1 publishes received but not
    /// yet acknowledged are delivered again by the broker on the next connection with the same client id.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let abort = task.abort_handle();
            if tokio::time::timeout(SHUTDOWN_TIMEOUT, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[async_trait]
impl Outbound for Bridge {
    async fn send(&self, plugin_id: &str, message: OutboundMessage) -> Result<(), TransportError> {
        if !self.is_connected() {
            return Err(TransportError::Unavailable(format!("mqtt bridge {} is not connected", self.name)));
        }
        check_topic(&message.address).map_err(TransportError::Refused)?;
        if message.payload.0.len() > self.max_packet_bytes {
            return Err(TransportError::Refused(format!(
                "the payload ({} bytes) is larger than mqtt bridge {}'s max_packet_bytes ({})",
                message.payload.0.len(),
                self.name,
                self.max_packet_bytes
            )));
        }
        let (qos_level, retain) =
            outbound_flags(&message.metadata, self.default_qos).map_err(TransportError::Refused)?;
        self.client
            .publish(message.address, qos(qos_level), retain, message.payload.0)
            .await
            .map_err(|e| TransportError::Unavailable(format!("mqtt bridge {}: {e}", self.name)))?;
        self.state.messages_out.fetch_add(1, Ordering::Relaxed);
        tracing::trace!(plugin_id, bridge = self.name, "mqtt publish queued");
        Ok(())
    }
}

fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// The state of the polling task.
struct Session {
    name: String,
    filters: Vec<String>,
    qos: QoS,
    backoff: (Duration, Duration),
    inbound: mpsc::Sender<InboundMessage>,
    state: Arc<State>,
    cancel: CancellationToken,
}

impl Session {
    async fn run(self, mut eventloop: EventLoop) {
        let (min_delay, max_delay) = self.backoff;
        let mut delay = min_delay;
        loop {
            let event = tokio::select! {
                _ = self.cancel.cancelled() => break,
                event = eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                    delay = min_delay;
                    self.state.connected.store(true, Ordering::Relaxed);
                    self.state.connects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(bridge = self.name, session_present = ack.session_present, "mqtt bridge connected");
                    if !self.filters.is_empty() {
                        // Straight into the event loop's queue: the request channel may be full of publishes,
                        // and only this task drains it.
                        let filters = self.filters.iter().map(|f| SubscribeFilter::new(f.clone(), self.qos));
                        eventloop.pending.push_back(Request::Subscribe(Subscribe::new_many(filters)));
                    }
                }
                Ok(Event::Incoming(Incoming::Publish(publish))) => {
                    let mut message = InboundMessage::mqtt(&publish.topic, publish.payload.to_vec(), now_us());
                    message.metadata.insert(META_QOS.to_owned(), (publish.qos as u8).to_string());
                    message.metadata.insert(META_RETAIN.to_owned(), publish.retain.to_string());
                    message.metadata.insert(META_BROKER.to_owned(), self.name.clone());
                    tokio::select! {
                        _ = self.cancel.cancelled() => break,
                        sent = self.inbound.send(message) => if sent.is_err() {
                            tracing::info!(bridge = self.name, "the MQTT inbound channel closed; the bridge stops");
                            break;
                        },
                    }
                    self.state.messages_in.fetch_add(1, Ordering::Relaxed);
                    self.ack(&mut eventloop, publish.qos, publish.pkid);
                }
                Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                    let refused =
                        ack.return_codes.iter().filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)).count();
                    if refused > 0 {
                        tracing::warn!(bridge = self.name, refused, "the broker refused some subscriptions");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    self.state.connected.store(false, Ordering::Relaxed);
                    self.state.connection_failures.fetch_add(1, Ordering::Relaxed);
                    let text = describe(&e);
                    tracing::warn!(bridge = self.name, error = text, retry_in = ?delay, "mqtt bridge connection failed");
                    if let Ok(mut last) = self.state.last_error.lock() {
                        *last = Some(text);
                    }
                    tokio::select! {
                        _ = self.cancel.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(max_delay);
                }
            }
        }
        self.state.connected.store(false, Ordering::Relaxed);
        self.disconnect(&mut eventloop).await;
        tracing::info!(bridge = self.name, "mqtt bridge stopped");
    }

    /// Queues the PUBACK of a QoS 1 publish, straight into the event loop's queue so it never waits behind a
    /// full request channel.
    fn ack(&self, eventloop: &mut EventLoop, qos: QoS, pkid: u16) {
        if qos == QoS::AtLeastOnce {
            eventloop.pending.push_back(Request::PubAck(PubAck::new(pkid)));
        }
    }

    /// Sends what is queued (acks included) and a DISCONNECT, within [`SHUTDOWN_TIMEOUT`].
    async fn disconnect(&self, eventloop: &mut EventLoop) {
        if eventloop.network.is_none() {
            return;
        }
        // Pending acks go first; then the DISCONNECT, after which poll returns an error and we stop.
        let mut requests = std::mem::take(&mut eventloop.pending);
        requests.retain(|r| matches!(r, Request::PubAck(_)));
        eventloop.pending = requests;
        eventloop.pending.push_back(Request::Disconnect(rumqttc::Disconnect));
        let flush = async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, flush).await;
    }
}

fn describe(error: &ConnectionError) -> String {
    match error {
        ConnectionError::ConnectionRefused(code) => format!("the broker refused the connection: {code:?}"),
        other => other.to_string(),
    }
}

/// Builds the rustls configuration of an `mqtts://` bridge (ring provider, no process-wide default needed).
fn tls_configuration(config: &BridgeConfig) -> Result<TlsConfiguration, MqttError> {
    let key = |name: &str| format!("mqtt.bridges.{}.{name}", config.name);
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| MqttError::Tls { key: key("ca_file"), reason: format!("{}: {e}", path.display()) })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(MqttError::Tls {
                    key: key("ca_file"),
                    reason: format!("{} holds no usable certificate", path.display()),
                });
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                return Err(MqttError::Tls {
                    key: key("ca_file"),
                    reason: "no system CA certificates found; set ca_file".to_owned(),
                });
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MqttError::Tls { key: key("url"), reason: e.to_string() })?
        .with_root_certificates(roots);
    let client_config = match (&config.client_cert_file, &config.client_key_file) {
        (Some(cert_path), Some(key_path)) => {
            let chain = CertificateDer::pem_file_iter(cert_path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| MqttError::Tls {
                    key: key("client_cert_file"),
                    reason: format!("{}: {e}", cert_path.display()),
                })?;
            let private_key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| MqttError::Tls {
                key: key("client_key_file"),
                reason: format!("{}: {e}", key_path.display()),
            })?;
            builder
                .with_client_auth_cert(chain, private_key)
                .map_err(|e| MqttError::Tls { key: key("client_key_file"), reason: e.to_string() })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(TlsConfiguration::Rustls(Arc::new(client_config)))
}
