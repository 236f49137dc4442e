//! The plugin ABI: the messages the host and a plugin exchange, and the names they meet by.
//!
//! This module compiles for the host and for plugins alike, so both sides share one definition. Every message
//! crosses the sandbox boundary as JSON (UTF-8, one document per call); byte payloads are base64 strings.
//!
//! # Versions
//!
//! [`ABI_VERSION`] is the version this SDK speaks. A released version is never edited, only added to: new
//! optional fields (with `#[serde(default)]`), new exports the host probes for, or a new version number whose
//! types live next to the old ones. The host keeps loading plugins built for every version it lists as
//! supported.
//!
//! # Calls (ABI version 1)
//!
//! | export | input | output |
//! |---|---|---|
//! | [`exports::INIT`] | [`InitRequest`] | [`InitReply`] |
//! | [`exports::ON_MESSAGES`] | [`MessageBatch`] | [`Output`] |
//! | [`exports::ON_ACT`] | [`ActRequest`] | [`ActResponse`] |
//! | [`exports::ON_TICK`] | [`TickRequest`] | [`Output`] |
//!
//! A call that traps, exceeds its deadline or memory, or returns something that does not decode as the output
//! type is a *failure*: the host counts it, discards the instance and restarts it with backoff. A refused action
//! ([`ActResponse::Refused`]) is an answer, not a failure.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// The ABI version this SDK implements.
pub const ABI_VERSION: u32 = 1;

/// The names of the functions a plugin exports.
pub mod exports {
    /// Called once after the instance is created, with the plugin's configuration.
    pub const INIT: &str = "hub_init";
    /// Called with each batch of inbound messages.
    pub const ON_MESSAGES: &str = "hub_on_messages";
    /// Called for each ACT on a resource the plugin owns.
    pub const ON_ACT: &str = "hub_on_act";
    /// Called periodically when the manifest asks for ticks.
    pub const ON_TICK: &str = "hub_on_tick";
    /// Called when a rule's `call` action invokes the plugin (a rule app, kind `app`). Optional: a module
    /// without it refuses calls.
    pub const ON_CALL: &str = "hub_on_call";
}

/// The names of the host functions a plugin may import (module [`imports::MODULE`]).
///
/// Each takes and returns extism memory offsets: `hub_state_get(key) -> value` (offset 0 when the key is
/// absent), `hub_state_set(key, value)`, `hub_state_delete(key)`. Keys are UTF-8 strings, values bytes; an empty
/// value reads as absent.
pub mod imports {
    /// The wasm import module of the host functions (extism's user namespace).
    pub const MODULE: &str = "extism:host/user";
    /// Reads a state value.
    pub const STATE_GET: &str = "hub_state_get";
    /// Writes a state value.
    pub const STATE_SET: &str = "hub_state_set";
    /// Deletes a state value.
    pub const STATE_DELETE: &str = "hub_state_delete";
}

/// Limits on plugin key-value state, enforced by the host (a call that breaks one fails).
pub mod state_limits {
    /// The longest key, in bytes.
    pub const MAX_KEY_BYTES: usize = 256;
    /// The largest value, in bytes.
    pub const MAX_VALUE_BYTES: usize = 64 * 1024;
    /// The most keys one plugin may hold.
    pub const MAX_KEYS: usize = 4096;
}

/// The transport names the host knows.
pub mod transport {
    /// MQTT: the address is a topic.
    pub const MQTT: &str = "mqtt";
    /// CoAP: the address is a URI path (`/sensors/7/temp`).
    pub const COAP: &str = "coap";
    /// UDP datagrams (e.g. LoRa gateways speaking GWMP): the address is the local port, in decimal.
    pub const UDP: &str = "udp";
    /// XMPP publish-subscribe: the address is a node name.
    pub const XMPP: &str = "xmpp";
}

/// Opaque bytes, carried as a base64 string on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Payload(pub Vec<u8>);

impl Payload {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The bytes as UTF-8 text, if they are.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// The bytes decoded as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.0)
    }
}

impl From<Vec<u8>> for Payload {
    fn from(bytes: Vec<u8>) -> Self {
        Payload(bytes)
    }
}

impl From<&[u8]> for Payload {
    fn from(bytes: &[u8]) -> Self {
        Payload(bytes.to_vec())
    }
}

impl From<&str> for Payload {
    fn from(text: &str) -> Self {
        Payload(text.as_bytes().to_vec())
    }
}

impl From<String> for Payload {
    fn from(text: String) -> Self {
        Payload(text.into_bytes())
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(text.as_bytes()).map(Payload).map_err(serde::de::Error::custom)
    }
}

/// The input of [`exports::INIT`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitRequest {
    /// The plugin's id, as installed.
    pub plugin_id: String,
    /// The ABI version the host speaks to this instance.
    pub abi_version: u32,
    /// The effective configuration: the manifest's defaults, or what an admin set.
    #[serde(default)]
    pub config: Value,
    /// The current time, in microseconds since the Unix epoch.
    pub now_us: i64,
}

/// The output of [`exports::INIT`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitReply {
    /// The ABI version the plugin was built for.
    pub abi_version: u32,
}

/// One message a host transport received, addressed to a plugin that subscribed to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboundMessage {
    /// Which transport received it (see [`transport`]).
    pub transport: String,
    /// Where it arrived: an MQTT topic, a CoAP path, an XMPP node, a UDP port.
    pub address: String,
    /// The bytes as received.
    pub payload: Payload,
    /// Transport details (MQTT QoS and retain flag, CoAP method, UDP peer address, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// When the host received it, in microseconds since the Unix epoch.
    pub received_us: i64,
}

impl InboundMessage {
    /// A message on `transport` at `address`, received now (in the host's clock; 0 in a plugin).
    pub fn new(transport: &str, address: &str, payload: impl Into<Payload>, received_us: i64) -> Self {
        InboundMessage {
            transport: transport.to_owned(),
            address: address.to_owned(),
            payload: payload.into(),
            metadata: BTreeMap::new(),
            received_us,
        }
    }

    /// An MQTT message on `topic`.
    pub fn mqtt(topic: &str, payload: impl Into<Payload>, received_us: i64) -> Self {
        InboundMessage::new(transport::MQTT, topic, payload, received_us)
    }
}

/// The input of [`exports::ON_MESSAGES`]: every message the host collected for one call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageBatch {
    /// The current time, in microseconds since the Unix epoch.
    pub now_us: i64,
    /// The messages, oldest first.
    pub messages: Vec<InboundMessage>,
}

/// The input of [`exports::ON_TICK`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TickRequest {
    /// The current time, in microseconds since the Unix epoch.
    pub now_us: i64,
}

/// One new value for one resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceUpdate {
    /// The provider (device) name; it must fall in the plugin's granted namespace.
    pub provider: String,
    /// The service name.
    pub service: String,
    /// The resource name.
    pub resource: String,
    /// The value.
    pub value: Value,
    /// When it was measured, in microseconds since the Unix epoch; the host uses the receive time when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_us: Option<i64>,
}

/// A model document for one provider: declares resources (kind, type, unit, metadata, action parameters),
/// with the same JSON shape as the HTTP API's `PUT /providers/{name}` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderModel {
    /// The provider name; it must fall in the plugin's granted namespace.
    pub provider: String,
    /// The document (`{"services": {...}}`).
    pub model: Value,
}

/// A message for the host to send on one of its transports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboundMessage {
    /// Which transport sends it (see [`transport`]).
    pub transport: String,
    /// Where to: an MQTT topic, a CoAP path, an XMPP node, a UDP port; it must be granted to the plugin.
    pub address: String,
    /// The bytes to send.
    pub payload: Payload,
    /// Transport details (MQTT QoS and retain, CoAP method, UDP peer address, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

impl OutboundMessage {
    /// A message for `transport` at `address`.
    pub fn new(transport: &str, address: &str, payload: impl Into<Payload>) -> Self {
        OutboundMessage {
            transport: transport.to_owned(),
            address: address.to_owned(),
            payload: payload.into(),
            metadata: BTreeMap::new(),
        }
    }

    /// An MQTT publish on `topic`.
    pub fn mqtt(topic: &str, payload: impl Into<Payload>) -> Self {
        OutboundMessage::new(transport::MQTT, topic, payload)
    }

    /// Adds a metadata entry.
    pub fn with_metadata(mut self, key: &str, value: &str) -> Self {
        self.metadata.insert(key.to_owned(), value.to_owned());
        self
    }
}

/// How important a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the plugin handled (a malformed payload, ...).
    Warn,
    /// Something the plugin could not handle.
    Error,
}

/// A log line the host writes to its log, tagged with the plugin id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// The level.
    pub level: LogLevel,
    /// The text. The host truncates long lines.
    pub message: String,
}

/// What a plugin returns from a call: its effects, applied by the host in this order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Output {
    /// Model documents to merge before the updates (declare kinds, types, units, action parameters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ProviderModel>,
    /// New resource values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub updates: Vec<ResourceUpdate>,
    /// Messages to send.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbound: Vec<OutboundMessage>,
    /// Log lines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<LogLine>,
    /// Calls of other plugins (of kind `app`) whose results become resource values: how an adapter hands a
    /// payload to an integrator's decoder. The host makes them after this output's updates are committed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<AppCall>,
}

/// A call of a plugin of kind `app` on an adapter's behalf, whose result is written as resources.
///
/// The host hands `params` to the app's [`exports::ON_CALL`] (as [`CallRequest::params`], with
/// [`CallRequest::plugin`] naming the adapter), and writes each key of the object the app returns as resource
/// `{provider}/{service}/{key}`, measured at `timestamp_us`, as the adapter's own writes: inside its granted
/// providers and allowed by the policy for `plugin:<adapter>`, which also needs `act` on `plugin:<app>`. A
/// refused, failed or non-object result is counted and logged as one of the adapter's rejects; the adapter's
/// other effects stand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppCall {
    /// The app's plugin id.
    pub app: String,
    /// Its parameters.
    #[serde(default)]
    pub params: serde_json::Map<String, Value>,
    /// The provider the result's values belong to.
    pub provider: String,
    /// Their service.
    pub service: String,
    /// When they were measured (microseconds since the Unix epoch); unset means when the host applies them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_us: Option<i64>,
}

impl Output {
    /// An empty output.
    pub fn new() -> Self {
        Output::default()
    }

    /// Whether the output has no effect at all.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
            && self.updates.is_empty()
            && self.outbound.is_empty()
            && self.logs.is_empty()
            && self.calls.is_empty()
    }

    /// Adds a resource update without a measurement time (the host uses the receive time).
    pub fn update(&mut self, provider: &str, service: &str, resource: &str, value: impl Into<Value>) -> &mut Self {
        self.updates.push(ResourceUpdate {
            provider: provider.to_owned(),
            service: service.to_owned(),
            resource: resource.to_owned(),
            value: value.into(),
            timestamp_us: None,
        });
        self
    }

    /// Adds a resource update measured at `timestamp_us` (microseconds since the Unix epoch).
    pub fn update_at(
        &mut self,
        provider: &str,
        service: &str,
        resource: &str,
        value: impl Into<Value>,
        timestamp_us: i64,
    ) -> &mut Self {
        self.update(provider, service, resource, value);
        if let Some(last) = self.updates.last_mut() {
            last.timestamp_us = Some(timestamp_us);
        }
        self
    }

    /// Adds a model document for `provider`.
    pub fn model(&mut self, provider: &str, model: Value) -> &mut Self {
        self.models.push(ProviderModel { provider: provider.to_owned(), model });
        self
    }

    /// Adds an outbound message.
    pub fn send(&mut self, message: OutboundMessage) -> &mut Self {
        self.outbound.push(message);
        self
    }

    /// Adds a call of app `call.app` whose result becomes resources (see [`AppCall`]).
    pub fn call_app(&mut self, call: AppCall) -> &mut Self {
        self.calls.push(call);
        self
    }

    /// Adds a log line.
    pub fn log(&mut self, level: LogLevel, message: impl Into<String>) -> &mut Self {
        self.logs.push(LogLine { level, message: message.into() });
        self
    }

    /// Appends everything from `other`.
    pub fn extend(&mut self, other: Output) {
        self.models.extend(other.models);
        self.updates.extend(other.updates);
        self.outbound.extend(other.outbound);
        self.logs.extend(other.logs);
        self.calls.extend(other.calls);
    }
}

/// The input of [`exports::ON_ACT`]: an ACT on an action resource of a provider the plugin owns. The host has
/// already checked the parameters against the action's declared parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActRequest {
    /// The provider name.
    pub provider: String,
    /// The service name.
    pub service: String,
    /// The action resource name.
    pub resource: String,
    /// The parameters.
    #[serde(default)]
    pub params: serde_json::Map<String, Value>,
    /// The current time, in microseconds since the Unix epoch.
    pub now_us: i64,
}

/// The input of [`exports::ON_CALL`]: a rule's `call app(...)` action, fired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRequest {
    /// The id of the rule that fired; empty when an adapter asked for the call (see `plugin`).
    #[serde(default)]
    pub rule: String,
    /// The adapter that asked for the call through [`Output::calls`] (a payload decoder's caller), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// The action's parameters, rendered by the rule engine.
    #[serde(default)]
    pub params: serde_json::Map<String, Value>,
    /// The rule instance's variable bindings (`$home` → `home-2`), without the `$`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bindings: BTreeMap<String, String>,
    /// The update that triggered the firing, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<CallTrigger>,
    /// The current time, in microseconds since the Unix epoch.
    pub now_us: i64,
}

/// The update that made a rule fire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallTrigger {
    /// `provider/service/resource`.
    pub path: String,
    /// Its new value.
    pub value: Value,
}

/// The output of [`exports::ON_ACT`] and [`exports::ON_CALL`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum ActResponse {
    /// The plugin carried out the action: `result` goes back to the caller, `output` (usually the outbound
    /// message that carries the command) is applied like any other output.
    Done {
        /// The action's result.
        #[serde(default)]
        result: Value,
        /// The effects.
        #[serde(default)]
        output: Output,
    },
    /// The plugin refused the action (bad parameters, unknown device, ...).
    Refused {
        /// Why.
        reason: String,
        /// Effects to apply anyway (usually log lines).
        #[serde(default)]
        output: Output,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_base64_on_the_wire() {
        let m = InboundMessage::mqtt("a/b", "hi", 5);
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(text, r#"{"transport":"mqtt","address":"a/b","payload":"aGk=","received_us":5}"#);
        assert_eq!(serde_json::from_str::<InboundMessage>(&text).unwrap(), m);
        assert!(serde_json::from_str::<Payload>("\"not base64!\"").is_err());
    }

    #[test]
    fn empty_output_is_an_empty_object() {
        assert_eq!(serde_json::to_string(&Output::new()).unwrap(), "{}");
        assert_eq!(serde_json::from_str::<Output>("{}").unwrap(), Output::new());
        let mut out = Output::new();
        out.update_at("p", "s", "r", 1.5, 7).log(LogLevel::Warn, "x");
        let back: Output = serde_json::from_str(&serde_json::to_string(&out).unwrap()).unwrap();
        assert_eq!(back, out);
        assert_eq!(back.updates[0].timestamp_us, Some(7));
    }

    #[test]
    fn act_response_is_tagged() {
        let done = ActResponse::Done { result: Value::Bool(true), output: Output::new() };
        assert_eq!(serde_json::to_string(&done).unwrap(), r#"{"status":"done","result":true,"output":{}}"#);
        let refused: ActResponse = serde_json::from_str(r#"{"status":"refused","reason":"no"}"#).unwrap();
        assert!(matches!(refused, ActResponse::Refused { ref reason, .. } if reason == "no"));
    }
}
