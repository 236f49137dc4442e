//! The `[mqtt]` configuration: the embedded broker and the bridges to external brokers.
//!
//! Every struct rejects unknown keys, and [`MqttConfig::validate`] names the key of every error
//! (`mqtt.broker.listen`, `mqtt.bridges[1].url`, ...).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::MqttError;

/// The whole `[mqtt]` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// `[mqtt.broker]`: the embedded broker devices connect to.
    pub broker: BrokerConfig,
    /// `[[mqtt.bridges]]`: client connections to external brokers.
    pub bridges: Vec<BridgeConfig>,
}

impl MqttConfig {
    /// Checks every value, naming the key of the first one that is wrong.
    pub fn validate(&self) -> Result<(), MqttError> {
        self.broker.validate("mqtt.broker")?;
        for (i, bridge) in self.bridges.iter().enumerate() {
            let key = format!("mqtt.bridges[{i}]");
            bridge.validate(&key)?;
            if self.bridges[..i].iter().any(|b| b.name == bridge.name) {
                return Err(MqttError::invalid(
                    format!("{key}.name"),
                    format!("duplicate bridge name {:?}", bridge.name),
                ));
            }
            if bridge.name == EMBEDDED_BROKER_NAME {
                return Err(MqttError::invalid(
                    format!("{key}.name"),
                    format!("{EMBEDDED_BROKER_NAME:?} is reserved for the embedded broker"),
                ));
            }
        }
        Ok(())
    }
}

/// The name that selects the embedded broker in an outbound message's `broker` metadata.
pub const EMBEDDED_BROKER_NAME: &str = "embedded";

/// The default listen address of the embedded broker.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 1883);

/// `[mqtt.broker]`: the embedded broker (rumqttd).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Whether to run the embedded broker at all.
    pub enabled: bool,
    /// The TCP address devices connect to (`hub serve --mqtt-listen` overrides it).
    pub listen: SocketAddr,
    /// Whether devices may connect without credentials. Unset means: only while `listen` is a loopback address
    /// (like Mosquitto 2's local-only mode); any other address then requires credentials.
    pub allow_anonymous: Option<bool>,
    /// The largest publish a device may send, in bytes.
    pub max_payload_bytes: usize,
    /// The most device connections at once.
    pub max_connections: usize,
    /// The most unacknowledged QoS 1 publishes per connection.
    pub max_inflight: usize,
    /// How long a new connection may take to send CONNECT, in milliseconds.
    pub connect_timeout_ms: u16,
    /// The topic filters the hub receives from the broker (all device traffic by default).
    pub subscribe: Vec<String>,
    /// The size of one in-memory log segment per subscription filter, in bytes.
    pub segment_bytes: usize,
    /// How many segments a filter keeps; with `segment_bytes` this bounds the broker's memory per filter. When
    /// the hub falls further behind than that, the oldest segment is dropped.
    pub segment_count: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            enabled: true,
            listen: DEFAULT_LISTEN,
            allow_anonymous: None,
            max_payload_bytes: 256 * 1024,
            max_connections: 10_000,
            max_inflight: 100,
            connect_timeout_ms: 5_000,
            subscribe: vec!["#".to_owned()],
            segment_bytes: 4 * 1024 * 1024,
            segment_count: 4,
        }
    }
}

impl BrokerConfig {
    /// Whether devices may connect without credentials (see [`BrokerConfig::allow_anonymous`]).
    pub fn anonymous_allowed(&self) -> bool {
        self.allow_anonymous.unwrap_or_else(|| self.listen.ip().is_loopback())
    }

    pub(crate) fn validate(&self, key: &str) -> Result<(), MqttError> {
        let positive = [
            ("max_payload_bytes", self.max_payload_bytes),
            ("max_connections", self.max_connections),
            ("max_inflight", self.max_inflight),
            ("connect_timeout_ms", usize::from(self.connect_timeout_ms)),
            ("segment_bytes", self.segment_bytes),
            ("segment_count", self.segment_count),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(MqttError::invalid(format!("{key}.{name}"), "must be greater than 0"));
            }
        }
        if self.max_payload_bytes > MAX_MQTT_PACKET {
            return Err(MqttError::invalid(
                format!("{key}.max_payload_bytes"),
                format!("must be at most {MAX_MQTT_PACKET} (the MQTT limit)"),
            ));
        }
        if self.subscribe.is_empty() {
            return Err(MqttError::invalid(format!("{key}.subscribe"), "needs at least one topic filter"));
        }
        for (i, filter) in self.subscribe.iter().enumerate() {
            check_filter(filter).map_err(|reason| MqttError::invalid(format!("{key}.subscribe[{i}]"), reason))?;
        }
        Ok(())
    }
}

/// The largest MQTT packet the protocol can express (268,435,455 bytes).
const MAX_MQTT_PACKET: usize = 268_435_455;

/// `[[mqtt.bridges]]`: one client connection to an external broker (rumqttc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// The bridge's name; an outbound message's `broker` metadata selects it.
    pub name: String,
    /// `mqtt://host[:1883]` or `mqtts://host[:8883]`.
    pub url: String,
    /// The MQTT client id; keep it stable for persistent sessions.
    pub client_id: String,
    /// The user name, if the broker asks for one.
    #[serde(default)]
    pub username: Option<String>,
    /// The password, written in the config (prefer `password_env`).
    #[serde(default)]
    pub password: Option<String>,
    /// The environment variable that holds the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// The QoS of the subscriptions and the default QoS of outbound publishes (0 or 1; 2 is not offered).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// `false` asks the broker to keep the session (subscriptions and queued QoS 1 messages) while the hub is
    /// away.
    #[serde(default = "default_true")]
    pub clean_session: bool,
    /// The topic filters to receive from this broker.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// The keep-alive interval, in seconds.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
    /// A PEM file of CA certificates to trust (`mqtts://` only; the system roots otherwise).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A PEM client certificate chain for mutual TLS (with `client_key_file`).
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// The PEM private key of `client_cert_file`.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// The largest packet accepted or sent, in bytes.
    #[serde(default = "default_max_packet")]
    pub max_packet_bytes: usize,
    /// The first reconnect delay, in milliseconds; it doubles on each failure up to `reconnect_max_ms`.
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min_ms: u64,
    /// The longest reconnect delay, in milliseconds.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
    /// How many outbound publishes may wait for the connection before `send` waits (the client's request
    /// queue).
    #[serde(default = "default_request_queue")]
    pub request_queue: usize,
}

fn default_qos() -> u8 {
    1
}
fn default_true() -> bool {
    true
}
fn default_keep_alive() -> u64 {
    30
}
fn default_max_packet() -> usize {
    256 * 1024
}
fn default_reconnect_min() -> u64 {
    200
}
fn default_reconnect_max() -> u64 {
    30_000
}
fn default_request_queue() -> usize {
    256
}

impl BridgeConfig {
    /// A bridge with default settings for `url`, named `name`, connecting as `client_id`.
    pub fn new(name: &str, url: &str, client_id: &str) -> Self {
        BridgeConfig {
            name: name.to_owned(),
            url: url.to_owned(),
            client_id: client_id.to_owned(),
            username: None,
            password: None,
            password_env: None,
            qos: default_qos(),
            clean_session: true,
            subscribe: Vec::new(),
            keep_alive_secs: default_keep_alive(),
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            max_packet_bytes: default_max_packet(),
            reconnect_min_ms: default_reconnect_min(),
            reconnect_max_ms: default_reconnect_max(),
            request_queue: default_request_queue(),
        }
    }

    /// The first and the longest reconnect delay.
    pub fn backoff(&self) -> (Duration, Duration) {
        (Duration::from_millis(self.reconnect_min_ms), Duration::from_millis(self.reconnect_max_ms))
    }

    /// The broker's endpoint parsed from `url`.
    pub fn endpoint(&self) -> Result<Endpoint, MqttError> {
        Endpoint::parse(&self.url)
            .map_err(|reason| MqttError::invalid(format!("mqtt.bridges.{}.url", self.name), reason))
    }

    /// The password from `password` or from the variable `password_env` names.
    pub fn resolved_password(&self) -> Result<Option<String>, MqttError> {
        match (&self.password, &self.password_env) {
            (Some(p), None) => Ok(Some(p.clone())),
            (None, Some(var)) => std::env::var(var).map(Some).map_err(|_| {
                MqttError::invalid(
                    format!("mqtt.bridges.{}.password_env", self.name),
                    format!("environment variable {var:?} is not set (or not UTF-8)"),
                )
            }),
            (None, None) => Ok(None),
            (Some(_), Some(_)) => Err(MqttError::invalid(
                format!("mqtt.bridges.{}.password", self.name),
                "set either password or password_env, not both",
            )),
        }
    }

    pub(crate) fn validate(&self, key: &str) -> Result<(), MqttError> {
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(MqttError::invalid(format!("{key}.name"), "must be non-empty: letters, digits, - _ ."));
        }
        let endpoint = Endpoint::parse(&self.url).map_err(|reason| MqttError::invalid(format!("{key}.url"), reason))?;
        if self.client_id.is_empty() || self.client_id.len() > 65_535 {
            return Err(MqttError::invalid(format!("{key}.client_id"), "must be 1 to 65535 bytes"));
        }
        if self.password.is_some() && self.password_env.is_some() {
            return Err(MqttError::invalid(format!("{key}.password"), "set either password or password_env, not both"));
        }
        if (self.password.is_some() || self.password_env.is_some()) && self.username.is_none() {
            return Err(MqttError::invalid(format!("{key}.username"), "a password needs a username"));
        }
        if self.qos > 1 {
            return Err(MqttError::invalid(format!("{key}.qos"), "must be 0 or 1"));
        }
        for (i, filter) in self.subscribe.iter().enumerate() {
            check_filter(filter).map_err(|reason| MqttError::invalid(format!("{key}.subscribe[{i}]"), reason))?;
        }
        if self.keep_alive_secs < 5 || self.keep_alive_secs > 65_535 {
            return Err(MqttError::invalid(format!("{key}.keep_alive_secs"), "must be 5 to 65535 seconds"));
        }
        if !endpoint.tls {
            for (name, set) in [
                ("ca_file", self.ca_file.is_some()),
                ("client_cert_file", self.client_cert_file.is_some()),
                ("client_key_file", self.client_key_file.is_some()),
            ] {
                if set {
                    return Err(MqttError::invalid(format!("{key}.{name}"), "only applies to mqtts:// URLs"));
                }
            }
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Err(MqttError::invalid(
                format!("{key}.client_key_file"),
                "client_cert_file and client_key_file go together",
            ));
        }
        if self.max_packet_bytes == 0 || self.max_packet_bytes > MAX_MQTT_PACKET {
            return Err(MqttError::invalid(
                format!("{key}.max_packet_bytes"),
                format!("must be 1 to {MAX_MQTT_PACKET}"),
            ));
        }
        if self.reconnect_min_ms == 0 {
            return Err(MqttError::invalid(format!("{key}.reconnect_min_ms"), "must be greater than 0"));
        }
        if self.reconnect_max_ms < self.reconnect_min_ms {
            return Err(MqttError::invalid(format!("{key}.reconnect_max_ms"), "must be at least reconnect_min_ms"));
        }
        if self.request_queue == 0 {
            return Err(MqttError::invalid(format!("{key}.request_queue"), "must be greater than 0"));
        }
        Ok(())
    }
}

/// Where a bridge connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The host name or address.
    pub host: String,
    /// The port.
    pub port: u16,
    /// Whether the connection uses TLS (`mqtts://`).
    pub tls: bool,
}

impl Endpoint {
    /// Parses `mqtt://host[:port]` or `mqtts://host[:port]` (default ports 1883 and 8883).
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        let url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
        let (tls, default_port) = match url.scheme() {
            "mqtt" | "tcp" => (false, 1883),
            "mqtts" | "ssl" => (true, 8883),
            other => return Err(format!("scheme {other:?} is not supported (use mqtt:// or mqtts://)")),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err("put credentials in username and password_env, not in the URL".to_owned());
        }
        if !(url.path().is_empty() || url.path() == "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(format!("{text:?} must have no path, query or fragment"));
        }
        let host = match url.host() {
            Some(url::Host::Ipv6(addr)) => addr.to_string(),
            Some(host) => host.to_string(),
            None => return Err(format!("{text:?} has no host")),
        };
        Ok(Endpoint { host, port: url.port().unwrap_or(default_port), tls })
    }
}

/// Checks an MQTT topic filter: non-empty, `#` only last and alone in its level, `+` alone in its level.
pub fn check_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("a topic filter must not be empty".to_owned());
    }
    if filter.contains('\0') {
        return Err(format!("{filter:?} contains a NUL character"));
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len() - 1;
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != last) {
            return Err(format!("{filter:?}: '#' must be a whole level and the last one"));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("{filter:?}: '+' must be a whole level"));
        }
    }
    Ok(())
}

/// Checks an MQTT topic name to publish on: non-empty, no wildcards, no NUL.
pub fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("the topic must not be empty".to_owned());
    }
    if topic.contains(['#', '+', '\0']) {
        return Err(format!("{topic:?}: a topic to publish on must not contain '#', '+' or NUL"));
    }
    if topic.len() > 65_535 {
        return Err("the topic is longer than 65535 bytes".to_owned());
    }
    Ok(())
}
