//! Routing of plugin messages to the embedded broker or a bridge.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use hub_plugin_sdk::abi::OutboundMessage;
use hub_runtime::{Outbound, TransportError};

use crate::{Bridge, EMBEDDED_BROKER_NAME, EmbeddedBroker, META_BROKER};

/// The `mqtt` transport as the plugin runtime sees it: routes each message by its `broker` metadata to the
/// bridge of that name, or to the embedded broker when it is absent or `embedded`.
#[derive(Debug, Default, Clone)]
pub struct MqttOutbound {
    embedded: Option<Arc<EmbeddedBroker>>,
    bridges: HashMap<String, Arc<Bridge>>,
}

impl MqttOutbound {
    /// A router with no connection: every message is refused as unavailable.
    pub fn new() -> Self {
        MqttOutbound::default()
    }

    /// Routes messages without a `broker` key (or with `embedded`) to `broker`.
    pub fn with_embedded(mut self, broker: Arc<EmbeddedBroker>) -> Self {
        self.embedded = Some(broker);
        self
    }

    /// Routes messages whose `broker` key is the bridge's name to `bridge`.
    pub fn with_bridge(mut self, bridge: Arc<Bridge>) -> Self {
        self.bridges.insert(bridge.name().to_owned(), bridge);
        self
    }
}

#[async_trait]
impl Outbound for MqttOutbound {
    async fn send(&self, plugin_id: &str, message: OutboundMessage) -> Result<(), TransportError> {
        match message.metadata.get(META_BROKER).map(String::as_str) {
            None | Some(EMBEDDED_BROKER_NAME) => match &self.embedded {
                Some(broker) => broker.send(plugin_id, message).await,
                None => Err(TransportError::Unavailable("the embedded MQTT broker is not running".to_owned())),
            },
            Some(name) => match self.bridges.get(name) {
                Some(bridge) => bridge.send(plugin_id, message).await,
                None => Err(TransportError::Refused(format!("no MQTT bridge is called {name:?}"))),
            },
        }
    }
}
