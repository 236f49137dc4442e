//! The XMPP host transport: the hub as a client of XMPP servers, following XEP-0060 publish-subscribe nodes.
//!
//! Each `[[xmpp.servers]]` entry is one client session (STARTTLS with the system roots or a `ca_file`, SASL,
//! resource binding, reconnect with backoff) and one publish-subscribe service on that server. The transport
//! subscribes to the service's nodes that the plugins' grants name (`capabilities.xmpp.subscribe`, globs with
//! `*`), finds nodes created later by listing the service again, catches up on items published while a session
//! was lost, and turns every item published on a followed
//! node into one [`InboundMessage`](hub_plugin_sdk::abi::InboundMessage) on a bounded channel the caller owns:
//! transport `xmpp`, address the node, payload the item's payload element as XML text. Outbound messages from
//! plugins (transport `xmpp`, address a node) are published as items on that node. What the XML means (SOX
//! devices, JSON containers) is plugin work: see `plugins/xmpp`.
//!
//! # Metadata
//!
//! | key | inbound | outbound |
//! |---|---|---|
//! | `server` | the server entry that received the item | the server entry to publish on (else the one the node was last heard on, else the first) |
//! | `service` | the publish-subscribe service's JID | — |
//! | `item_id` | the item's id, when it has one | the id to publish under (else the service picks one) |
//! | `publisher` | the publisher's JID, when the service names it | — |
//!
//! # Security
//!
//! The session is encrypted with STARTTLS unless the server is on a loopback address and `tls = "none"` says
//! so. Items are accepted only from the configured service's JID. What a plugin may publish where is checked by
//! the runtime against its grant before the transport sees the message.

mod config;
mod connector;
mod link;
mod transport;

pub use config::{DEFAULT_PORT, ServerConfig, TlsMode, XmppConfig};
pub use link::LinkStatus;
pub use transport::{XmppStats, XmppTransport};

/// The metadata key naming the server entry, inbound and outbound.
pub const META_SERVER: &str = "server";
/// The metadata key of the publish-subscribe service's JID, inbound.
pub const META_SERVICE: &str = "service";
/// The metadata key of an item's id, inbound and outbound.
pub const META_ITEM_ID: &str = "item_id";
/// The metadata key of an item's publisher, inbound.
pub const META_PUBLISHER: &str = "publisher";

/// What can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum XmppError {
    /// A configuration value is wrong; `key` names it (`xmpp.servers[0].jid`).
    #[error("{key}: {reason}")]
    InvalidConfig {
        /// The configuration key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The transport runs its tasks on the caller's tokio runtime.
    #[error("the XMPP transport must be started inside a tokio runtime")]
    NoRuntime,
}

impl XmppError {
    pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        XmppError::InvalidConfig { key: key.into(), reason: reason.into() }
    }
}

/// The current time in microseconds since the Unix epoch.
pub(crate) fn now_us() -> i64 {
    hub_model::Timestamp::now().as_micros()
}
