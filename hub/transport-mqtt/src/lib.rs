//! The MQTT host transport: it moves bytes between MQTT peers and the plugin runtime, and nothing else.
//!
//! It owns two kinds of connection:
//!
//! - the **embedded broker** ([`EmbeddedBroker`], rumqttd), which devices connect to with nothing else
//!   installed. Anonymous devices are accepted only while it listens on loopback (unless `allow_anonymous` says
//!   otherwise); elsewhere each device authenticates with a username and password that [`DeviceAuth`] binds to
//!   a provider namespace;
//! - **bridges** ([`Bridge`], rumqttc) to external brokers, with TLS, QoS 0/1, persistent sessions, reconnects
//!   with exponential backoff and resubscription.
//!
//! Every publish received becomes an [`InboundMessage`](hub_plugin_sdk::abi::InboundMessage) on a bounded
//! channel the caller owns; a slow consumer slows intake instead of growing memory. Outbound messages arrive
//! through [`hub_runtime::Outbound`], implemented by [`MqttOutbound`] (which routes on the `broker` metadata
//! key), [`EmbeddedBroker`] and [`Bridge`]. Payloads are never decoded here: decoding is plugin work.
//!
//! # Metadata
//!
//! | key | inbound | outbound |
//! |---|---|---|
//! | `qos` | `0`, `1` or `2`, as received from a bridge (absent from the embedded broker, which does not say) | `0` or `1` (default: the bridge's `qos`); the embedded broker publishes at QoS 0 only |
//! | `retain` | `true` or `false` | `true` or `false` (default `false`) |
//! | `broker` | `embedded` or the bridge name it came from | which connection sends it (default `embedded`) |

mod auth;
mod bridge;
mod broker;
mod config;
mod outbound;

pub use auth::{DeviceAuth, StaticDeviceAuth};
pub use bridge::{Bridge, BridgeStatus};
pub use broker::{BrokerStats, EmbeddedBroker};
pub use config::{
    BridgeConfig, BrokerConfig, DEFAULT_LISTEN, EMBEDDED_BROKER_NAME, Endpoint, MqttConfig, check_filter, check_topic,
};
pub use outbound::MqttOutbound;

/// The metadata key that carries the MQTT QoS.
pub const META_QOS: &str = "qos";
/// The metadata key that carries the MQTT retain flag.
pub const META_RETAIN: &str = "retain";
/// The metadata key that names the connection (`embedded` or a bridge name).
pub const META_BROKER: &str = "broker";

/// What can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// A configuration value is wrong; `key` names it (`mqtt.bridges[0].url`).
    #[error("{key}: {reason}")]
    InvalidConfig {
        /// The configuration key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The embedded broker's listen address is already taken.
    #[error(
        "mqtt.broker.listen: {addr} is already in use; choose another address with `mqtt.broker.listen` in the \
         config or `hub serve --mqtt-listen ADDR`"
    )]
    AddressInUse {
        /// The address that was taken.
        addr: std::net::SocketAddr,
    },
    /// The embedded broker could not listen on its address for another reason.
    #[error("mqtt.broker.listen: cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The embedded broker failed to start.
    #[error("the embedded MQTT broker failed to start: {0}")]
    BrokerStart(String),
    /// A TLS file could not be read or used.
    #[error("{key}: {reason}")]
    Tls {
        /// The configuration key of the file.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// Bridges and the broker need a tokio runtime to run their tasks.
    #[error("the MQTT transport must be started inside a tokio runtime")]
    NoRuntime,
}

impl MqttError {
    pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        MqttError::InvalidConfig { key: key.into(), reason: reason.into() }
    }
}

/// Reads the `qos` and `retain` metadata of an outbound message; `default_qos` applies when `qos` is absent.
pub(crate) fn outbound_flags(
    metadata: &std::collections::BTreeMap<String, String>,
    default_qos: u8,
) -> Result<(u8, bool), String> {
    let qos = match metadata.get(META_QOS).map(String::as_str) {
        None => default_qos,
        Some("0") => 0,
        Some("1") => 1,
        Some(other) => return Err(format!("metadata qos must be 0 or 1, not {other:?}")),
    };
    let retain = match metadata.get(META_RETAIN).map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(format!("metadata retain must be true or false, not {other:?}")),
    };
    Ok((qos, retain))
}

/// The current time in microseconds since the Unix epoch.
pub(crate) fn now_us() -> i64 {
    hub_model::Timestamp::now().as_micros()
}
