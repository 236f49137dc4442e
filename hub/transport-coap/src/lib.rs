//! The CoAP host transport: it moves CoAP messages between devices and the plugin runtime, and nothing else.
//!
//! It owns two UDP endpoints, both on coap-lite messages over tokio sockets:
//!
//! - the **server** ([`CoapServer`]) devices send readings to: `POST`/`PUT` to any path a plugin subscribes to
//!   (by convention `/up/{provider}/{service}/{resource}`), confirmable or not, with de-duplication of
//!   retransmissions, Block1 reassembly, device tokens checked by [`DeviceAuth`], a cheap well-formedness check
//!   of JSON, CBOR and SenML payloads, and `GET /.well-known/core`;
//! - the **client**, which observes configured device resources (RFC 7641, re-registering when an observation
//!   lapses) and sends the requests plugins ask for ([`CoapOutbound`], the runtime's `coap` transport), with
//!   confirmable retransmission and Block1/Block2 transfers.
//!
//! [`CoapTransport`] starts both from a [`CoapConfig`]. Payloads are not decoded here beyond the syntax check:
//! decoding is the adapter plugin's work.
//!
//! # Handing messages to the runtime
//!
//! Everything received becomes a [`Delivery`] on a bounded `mpsc` channel the caller owns: the
//! [`InboundMessage`] and a [`Reply`] through which the caller says how the runtime dispatched it. The server
//! needs that answer to choose its response code (2.04 when a plugin got it, 4.04 when none subscribes, 5.03
//! when their queues were full), so the caller's pump does:
//!
//! ```no_run
//! # async fn pump(plugins: hub_runtime::PluginHost, mut rx: tokio::sync::mpsc::Receiver<hub_transport_coap::Delivery>) {
//! while let Some(delivery) = rx.recv().await {
//!     let (message, reply) = delivery.into_parts();
//!     reply.send(plugins.dispatch(message).await);
//! }
//! # }
//! ```
//!
//! A channel (rather than a dispatch callback the transport would call) keeps this crate free of the runtime's
//! host type, bounds the memory of waiting messages by the channel's capacity, gives back-pressure for free
//! (the server stops reading its socket while the channel is full) and matches the MQTT transport's wiring, so
//! one pump shape serves every transport. The server keeps at most `max_inflight` requests waiting for their
//! reply, so awaiting the dispatch never stalls the socket for longer than one runtime call.
//!
//! # Metadata
//!
//! | key | on | value |
//! |---|---|---|
//! | `method` | requests | `POST` or `PUT` |
//! | `confirmable` | requests | `true` or `false` |
//! | `content_format` | all, when present | the Content-Format number, in decimal (`50` JSON, `60` CBOR, `110` SenML JSON, `112` SenML CBOR) |
//! | `peer` | all | the device's `ip:port` |
//! | `query` | requests, when any | the Uri-Query parameters other than `token`, joined with `&` |
//! | `subject` | requests with a token | the subject [`DeviceAuth`] authenticated |
//! | `observe` | notifications | the Observe sequence number (absent for answers to a poll of a resource that is not observable) |
//! | `code` | notifications | the response code, `2.05` |
//! | `uri` | notifications | the observed URI as configured |
//! | `provider` | notifications, when configured | the provider hint of the `[[coap.observe]]` entry |
//!
//! Notification addresses are the observed URI without its scheme, `//host:port/path`, because plugin grants
//! name CoAP addresses as paths starting with `/`. Outbound addresses may be written `coap://host:port/path`
//! or `//host:port/path`; see [`CoapOutbound`] for their metadata.
//!
//! # Security
//!
//! Plain CoAP (no DTLS, no OSCORE): the token travels in clear, so off loopback it only keeps honest devices
//! apart. A DTLS layer belongs behind [`DatagramSocket`]; OSCORE (RFC 8613) would be a layer between the socket
//! and request handling that unwraps the OSCORE option and payload (today a request carrying the OSCORE option
//! gets 4.02 Bad Option, as the RFC asks of a server that does not implement it). See `docs/adapters/coap.md`.

mod auth;
mod check;
mod client;
mod config;
mod observe;
mod outbound;
mod server;
mod socket;
mod stats;
mod transport;
pub mod wire;

use hub_plugin_sdk::abi::InboundMessage;
use hub_runtime::DispatchOutcome;
use tokio::sync::oneshot;

pub use auth::{Denied, DeviceAuth, StaticDeviceAuth};
pub use check::{Malformed, well_formed};
pub use config::{ClientConfig, CoapConfig, DEFAULT_LISTEN, MAX_PAYLOAD_LIMIT, ObserveConfig};
pub use outbound::CoapOutbound;
pub use server::CoapServer;
pub use socket::DatagramSocket;
pub use stats::CoapStats;
pub use transport::CoapTransport;

/// The transport's name in messages and in the runtime's registry.
pub const TRANSPORT: &str = hub_plugin_sdk::abi::transport::COAP;

/// The metadata key of the request method.
pub const META_METHOD: &str = "method";
/// The metadata key of the message type (`true` for confirmable).
pub const META_CONFIRMABLE: &str = "confirmable";
/// The metadata key of the Content-Format number.
pub const META_CONTENT_FORMAT: &str = "content_format";
/// The metadata key of the peer's address.
pub const META_PEER: &str = "peer";
/// The metadata key of the query parameters (without the token).
pub const META_QUERY: &str = "query";
/// The metadata key of the authenticated subject.
pub const META_SUBJECT: &str = "subject";
/// The metadata key of a notification's Observe sequence number.
pub const META_OBSERVE: &str = "observe";
/// The metadata key of a notification's response code.
pub const META_CODE: &str = "code";
/// The metadata key of the configured URI of an observation.
pub const META_URI: &str = "uri";
/// The metadata key of an observation's provider hint.
pub const META_PROVIDER: &str = "provider";

/// The exchange lifetime of RFC 7252 §4.8.2 with the default transmission parameters: how long a message id
/// is remembered for de-duplication.
pub const EXCHANGE_LIFETIME: std::time::Duration = std::time::Duration::from_secs(247);

/// What can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum CoapError {
    /// A configuration value is wrong; `key` names it (`coap.observe[0].uri`).
    #[error("{key}: {reason}")]
    InvalidConfig {
        /// The configuration key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The endpoint's listen address is already taken.
    #[error(
        "coap.listen: {addr} is already in use; choose another address with `coap.listen` in the config or \
         `hub serve --coap-listen ADDR`"
    )]
    AddressInUse {
        /// The address that was taken.
        addr: std::net::SocketAddr,
    },
    /// A socket could not be bound for another reason; `key` names the address setting.
    #[error("{key}: cannot bind {addr}: {source}")]
    Bind {
        /// The configuration key of the address.
        key: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The transport needs a tokio runtime to run its tasks.
    #[error("the CoAP transport must be started inside a tokio runtime")]
    NoRuntime,
}

impl CoapError {
    pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        CoapError::InvalidConfig { key: key.into(), reason: reason.into() }
    }
}

/// One message for the runtime, with the way back for the dispatch outcome.
#[derive(Debug)]
pub struct Delivery {
    message: InboundMessage,
    reply: Reply,
}

impl Delivery {
    pub(crate) fn new(message: InboundMessage, reply: Option<oneshot::Sender<DispatchOutcome>>) -> Self {
        Delivery { message, reply: Reply(reply) }
    }

    /// The message.
    pub fn message(&self) -> &InboundMessage {
        &self.message
    }

    /// Splits into the message (for `PluginHost::dispatch`) and the reply.
    pub fn into_parts(self) -> (InboundMessage, Reply) {
        (self.message, self.reply)
    }
}

/// Where the dispatch outcome of a [`Delivery`] goes. Dropping it unanswered makes the device's request fail
/// with 5.03 Service Unavailable; notifications need no answer (sending one is harmless).
#[derive(Debug)]
pub struct Reply(Option<oneshot::Sender<DispatchOutcome>>);

impl Reply {
    /// Reports how the runtime dispatched the message: 2.04 when at least one plugin got it, 5.03 when it was
    /// dropped for every subscribed plugin (full queues), 4.04 when no plugin subscribes.
    pub fn send(self, outcome: DispatchOutcome) {
        if let Some(tx) = self.0 {
            // The request may have timed out meanwhile; then nobody listens and that is fine.
            let _ = tx.send(outcome);
        }
    }

    /// Whether a device waits for this answer (false for notifications).
    pub fn is_awaited(&self) -> bool {
        self.0.is_some()
    }
}

/// The current time in microseconds since the Unix epoch.
pub(crate) fn now_us() -> i64 {
    hub_model::Timestamp::now().as_micros()
}
