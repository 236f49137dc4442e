//! The official XMPP adapter: items published on XEP-0060 publish-subscribe nodes, which the hub's XMPP
//! transport delivers (address = node name, payload = the item's payload element as XML), become resource
//! updates; ACT on a SOX actuator becomes an item published on the device's data node.
//!
//! # SOX (Sensor over XMPP)
//!
//! A SOX device `D` publishes its description on node `D_meta` and its readings on node `D_data`.
//!
//! | what | becomes |
//! |---|---|
//! | device name `D` | provider [`names::safe`]`(D)`: `D` itself when it is a valid hub name, else its safe characters with `-` and 8 hex digits of a hash appended; `admin/friendly_name = D` |
//! | `<transducer id="t" .../>` in the `D_meta` item | sensor `sox/`[`names::safe`]`(t)`, declared with its unit (`units`) and metadata `id`, `name`, `minValue`, `maxValue` (numbers when they parse), `units`, `device_type` |
//! | the same with `canActuate="true"` | also action `sox-act/<safe t>` with parameter `value` (`number` when the meta gives a numeric range, else `string`) |
//! | `<transducerValue id="t" typedValue="v" timestamp="ts"/>` in a `D_data` item | an update of `sox/<safe t>`: `v` as a number, `true`/`false` or text (`rawValue` when there is no `typedValue`), measured at `ts` (RFC 3339, any offset), else when the hub received the item |
//! | `<transducerSetValue .../>` in a `D_data` item | nothing: a command, not a reading |
//! | ACT `sox-act/<safe t> {"value": v}` | `<data><transducerSetValue id="t" typedValue="v" timestamp="now"/></data>` published on `D_data`, through the connection (`server`) `D`'s items last came on |
//!
//! A new resource needs a type, and a SOX meta item does not say which type its values have; so a sensor's
//! declaration waits for the transducer's first value, and goes out, typed as the hub would infer it from that
//! value, just before the value's update (a transducer whose values the adapter has already seen is declared at
//! once). Data of a device whose meta was never seen maps all the same; the hub infers the types.
//!
//! # JSON nodes
//!
//! Nodes matching a `json_nodes` entry of the configuration (before the SOX suffixes are looked at) carry
//! XEP-0335 JSON containers; see [`json_nodes`]. Items of nodes that match nothing known are skipped, with one
//! debug line per batch.
//!
//! # Bad input
//!
//! A malformed item (not XML, a wrong root element, more than [`sox::MAX_ENTRIES`] entries, an absurdly long
//! device name) is skipped with a warning; an entry without an id or a value is skipped alone, with one
//! warning per item; the rest of the batch maps. Nothing here panics on input.
//!
//! # State
//!
//! One record per device (see [`devices`]), written only when something in it changes.

#![deny(missing_docs)]

pub mod act;
pub mod config;
pub mod devices;
pub mod json_nodes;
pub mod names;
pub mod sox;

use hub_plugin_sdk::prelude::*;
use serde_json::Map;

use crate::config::Config;
use crate::devices::Devices;
use crate::sox::Problems;

/// The service of the SOX sensors.
pub const SENSOR_SERVICE: &str = "sox";

/// The node suffix of a SOX device's meta node.
const META_SUFFIX: &str = "_meta";
/// The node suffix of a SOX device's data node.
const DATA_SUFFIX: &str = "_data";

/// The adapter.
pub struct XmppAdapter {
    config: Config,
    devices: Devices,
}

/// What became of one item.
enum Mapped {
    /// Mapped (possibly with some entries skipped).
    Done,
    /// Its node matches nothing this adapter maps.
    Unknown,
}

impl Adapter for XmppAdapter {
    fn init(ctx: &mut Context<'_>, config: Value) -> Result<Self, String> {
        let config = Config::parse(config)?;
        ctx.info(format!("mapping SOX nodes *_meta and *_data, and {} json_nodes entries", config.json_nodes.len()));
        Ok(XmppAdapter { config, devices: Devices::load(ctx) })
    }

    fn on_messages(&mut self, ctx: &mut Context<'_>, batch: &[InboundMessage]) -> Output {
        let mut out = Output::new();
        let mut unknown: Option<(usize, &str)> = None;
        for message in batch {
            let mut problems = Problems::default();
            match self.map(ctx, message, &mut out, &mut problems) {
                Ok(Mapped::Done) => {}
                Ok(Mapped::Unknown) => {
                    let (count, _) = unknown.get_or_insert((0, &message.address));
                    *count += 1;
                }
                Err(reason) => ctx.warn(format!("{}: item skipped: {reason}", node(message))),
            }
            if let Some(first) = problems.first {
                let more = problems.count - 1;
                let more = if more > 0 { format!(" (and {more} more)") } else { String::new() };
                ctx.warn(format!("{}: entries skipped: {first}{more}", node(message)));
            }
        }
        if let Some((count, first)) = unknown {
            ctx.debug(format!(
                "{count} items on nodes that are neither SOX (*_meta, *_data) nor json_nodes skipped, the first on {}",
                names::shown(first, 200)
            ));
        }
        for warning in self.devices.flush(ctx) {
            ctx.warn(warning);
        }
        out
    }

    fn on_act(&mut self, ctx: &mut Context<'_>, request: &ActRequest, out: &mut Output) -> Result<Value, String> {
        if request.service != act::SERVICE {
            return Err(format!(
                "{}/{}/{} is not an action of this adapter (SOX actuators are in service {})",
                request.provider,
                request.service,
                request.resource,
                act::SERVICE
            ));
        }
        let record = self
            .devices
            .record(ctx, &request.provider)
            .ok_or_else(|| format!("{} is not a SOX device this adapter has seen", request.provider))?;
        act::publish(&record, request, ctx.now_us(), out)
    }
}

/// The node a message came on, shortened for a log line.
fn node(message: &InboundMessage) -> std::borrow::Cow<'_, str> {
    names::shown(&message.address, 200)
}

impl XmppAdapter {
    fn map(
        &mut self,
        ctx: &mut Context<'_>,
        message: &InboundMessage,
        out: &mut Output,
        problems: &mut Problems,
    ) -> Result<Mapped, String> {
        if message.transport != transport::XMPP {
            return Err(format!("not an XMPP message (transport {:?})", names::shown(&message.transport, 64)));
        }
        let node = message.address.as_str();
        if let Some(entry) = self.config.json_node(node) {
            json_nodes::map(entry, message, out, problems)?;
        } else if let Some(device) = node.strip_suffix(META_SUFFIX) {
            self.meta(ctx, device_name(device)?, message, out, problems)?;
        } else if let Some(device) = node.strip_suffix(DATA_SUFFIX) {
            self.data(ctx, device_name(device)?, message, out, problems)?;
        } else {
            return Ok(Mapped::Unknown);
        }
        Ok(Mapped::Done)
    }

    /// A `D_meta` item: the device's model document.
    fn meta(
        &mut self,
        ctx: &mut Context<'_>,
        name: &str,
        message: &InboundMessage,
        out: &mut Output,
        problems: &mut Problems,
    ) -> Result<(), String> {
        let payload = message.payload.as_bytes();
        let fingerprint = names::fnv1a64(payload);
        if self.devices.meta_fingerprint(name) == Some(fingerprint) {
            // The same meta again (a re-publish, or the last item sent on subscribing): declared already.
            self.devices.touch(ctx, name, server(message));
            return Ok(());
        }
        let doc = sox::parse(payload)?;
        let meta = sox::read_meta(sox::root(&doc, "device")?, problems)?;
        let (mut device, _) = self.devices.touch(ctx, name, server(message));
        device.device.meta_fingerprint = Some(fingerprint);
        let mut sensors = Map::new();
        let mut actions = Map::new();
        let mut actuators = std::collections::BTreeMap::new();
        for transducer in &meta.transducers {
            let declaration = declaration(transducer, meta.device_type);
            let resource: String = match device.transducer(transducer.id).1 {
                Some(memo) => {
                    match memo.value_type {
                        Some(value_type) => {
                            sensors.insert(memo.resource.to_string(), typed(declaration.clone(), value_type));
                            memo.pending = None;
                        }
                        None => memo.pending = Some(declaration.clone()),
                    }
                    memo.resource.to_string()
                }
                None => names::safe(transducer.id).into_owned(),
            };
            if transducer.can_actuate {
                let numeric = [transducer.min_value, transducer.max_value]
                    .into_iter()
                    .flatten()
                    .any(|v| sox::number(v).is_some());
                let mut action = declaration;
                action.insert("kind".to_owned(), json!("action"));
                action.insert("type".to_owned(), json!("object"));
                action.insert(
                    "parameters".to_owned(),
                    json!({ act::PARAMETER: if numeric { "number" } else { "string" } }),
                );
                actions.insert(resource.clone(), Value::Object(action));
                actuators.insert(resource, transducer.id.to_owned());
            }
        }
        device.set_actuators(actuators);
        let mut services = Map::new();
        services.insert("admin".to_owned(), json!({ "resources": { "friendly_name": { "value": name } } }));
        if !sensors.is_empty() {
            services.insert(SENSOR_SERVICE.to_owned(), json!({ "resources": sensors }));
        }
        if !actions.is_empty() {
            services.insert(act::SERVICE.to_owned(), json!({ "resources": actions }));
        }
        out.model(&device.device.provider, json!({ "services": services }));
        Ok(())
    }

    /// A `D_data` item: one update per `transducerValue`.
    fn data(
        &mut self,
        ctx: &mut Context<'_>,
        name: &str,
        message: &InboundMessage,
        out: &mut Output,
        problems: &mut Problems,
    ) -> Result<(), String> {
        let doc = sox::parse(message.payload.as_bytes())?;
        let readings = sox::read_data(sox::root(&doc, "data")?, message.received_us, problems)?;
        let (mut device, first_sight) = self.devices.touch(ctx, name, server(message));
        if first_sight {
            out.update_at(&device.device.provider, "admin", "friendly_name", name, message.received_us);
        }
        let mut declarations: Option<Map<String, Value>> = None;
        for reading in readings {
            let value_type = value_type(&reading.value);
            match device.transducer(reading.id) {
                (provider, Some(memo)) => {
                    memo.value_type.get_or_insert(value_type);
                    if let Some(declaration) = memo.pending.take() {
                        declarations
                            .get_or_insert_default()
                            .insert(memo.resource.to_string(), typed(declaration, value_type));
                    }
                    out.update_at(provider, SENSOR_SERVICE, &memo.resource, reading.value, reading.timestamp_us);
                }
                (provider, None) => {
                    let resource = names::safe(reading.id);
                    out.update_at(provider, SENSOR_SERVICE, &resource, reading.value, reading.timestamp_us);
                }
            }
        }
        // The declarations whose first value just arrived, as one model document (the host applies model
        // documents before updates).
        if let Some(resources) = declarations {
            out.model(&device.device.provider, json!({ "services": { SENSOR_SERVICE: { "resources": resources } } }));
        }
        Ok(())
    }
}

/// The device name of a SOX node, checked.
fn device_name(name: &str) -> Result<&str, String> {
    if name.is_empty() {
        return Err("the node names no device (nothing before the suffix)".to_owned());
    }
    if name.len() > sox::MAX_ID_BYTES {
        return Err(format!("a device name of {} bytes (at most {})", name.len(), sox::MAX_ID_BYTES));
    }
    Ok(name)
}

/// The `server` an item arrived on (the transport's connection name).
fn server(message: &InboundMessage) -> Option<&str> {
    message.metadata.get("server").map(String::as_str).filter(|s| !s.is_empty())
}

/// A transducer's declaration without its type: kind, unit and metadata.
fn declaration(transducer: &sox::Transducer<'_>, device_type: Option<&str>) -> Map<String, Value> {
    let mut metadata = Map::new();
    metadata.insert("id".to_owned(), json!(transducer.id));
    let text = |v: &str| sox::number(v).map_or_else(|| json!(v), Value::Number);
    for (key, value) in [("name", transducer.name), ("units", transducer.units), ("device_type", device_type)] {
        if let Some(value) = value {
            metadata.insert(key.to_owned(), json!(value));
        }
    }
    for (key, value) in [("minValue", transducer.min_value), ("maxValue", transducer.max_value)] {
        if let Some(value) = value {
            metadata.insert(key.to_owned(), text(value));
        }
    }
    let mut declaration = Map::new();
    declaration.insert("kind".to_owned(), json!("sensor"));
    if let Some(units) = transducer.units {
        declaration.insert("unit".to_owned(), json!(units));
    }
    declaration.insert("metadata".to_owned(), Value::Object(metadata));
    declaration
}

/// A sensor declaration with its type.
fn typed(mut declaration: Map<String, Value>, value_type: &'static str) -> Value {
    declaration.insert("type".to_owned(), json!(value_type));
    Value::Object(declaration)
}

/// The type the hub infers for a new resource from `value` (a SOX value: number, boolean or string).
fn value_type(value: &Value) -> &'static str {
    match value {
        Value::Number(_) => "number",
        Value::Bool(_) => "boolean",
        _ => "string",
    }
}

export_adapter!(XmppAdapter);

#[cfg(test)]
mod tests;
