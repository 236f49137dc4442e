//! The host side of outbound messages: the transports that carry what plugins send.
//!
//! Each host transport (MQTT, CoAP, XMPP, UDP) implements [`Outbound`] and registers under its name. The runtime
//! checks a plugin's grant before it hands a message to the transport, so a transport never sees a message the
//! plugin was not allowed to send.

use std::{collections::HashMap, sync::Arc};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use hub_plugin_sdk::abi::OutboundMessage;

/// Why a transport could not send.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The transport is not connected (or not configured); the message was not sent.
    #[error("transport unavailable: {0}")]
    Unavailable(String),
    /// The transport refused the message (too large, malformed address, ...).
    #[error("transport refused the message: {0}")]
    Refused(String),
}

/// Sends plugin messages on one transport.
#[async_trait]
pub trait Outbound: Send + Sync + 'static {
    /// Sends `message` on behalf of plugin `plugin_id`. Should return quickly (queue, do not wait for acks);
    /// the runtime bounds the wait with the plugin's call deadline.
    async fn send(&self, plugin_id: &str, message: OutboundMessage) -> Result<(), TransportError>;
}

/// The registered transports, by name. Lookups are lock-free; registration swaps the whole table.
#[derive(Default)]
pub struct Transports {
    by_name: ArcSwap<HashMap<String, Arc<dyn Outbound>>>,
}

impl Transports {
    /// An empty registry.
    pub fn new() -> Self {
        Transports::default()
    }

    /// Registers (or replaces) the transport called `name` (`mqtt`, `coap`, `xmpp`, `udp`).
    pub fn register(&self, name: &str, transport: Arc<dyn Outbound>) {
        self.by_name.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.insert(name.to_owned(), transport.clone());
            next
        });
    }

    /// Removes the transport called `name`.
    pub fn unregister(&self, name: &str) {
        self.by_name.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.remove(name);
            next
        });
    }

    /// The transport called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Outbound>> {
        self.by_name.load().get(name).cloned()
    }
}
