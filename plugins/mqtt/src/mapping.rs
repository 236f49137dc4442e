//! Configured mappings: a message on a matching topic becomes updates of the resources the mapping lists,
//! preceded (the first time this instance sees the provider) by a model document declaring their types, units
//! and the actions of the ACT templates that match the provider.

use hub_plugin_sdk::prelude::*;
use serde_json::Map;

use crate::{
    config::{Config, Mapping},
    memory::{Memory, fingerprint},
    names::{name_problem, value_problem},
    report::{Quoted, Sink},
    scheme::{Short, payload_text},
};

/// Strings reused from one message to the next.
#[derive(Default)]
pub struct Scratch {
    provider: String,
    service: String,
    name: String,
    other_service: String,
}

/// Everything one mapped message needs.
pub struct Matched<'a, 'm> {
    /// The configuration.
    pub config: &'a Config,
    /// Which mapping matched.
    pub mapping: &'a Mapping,
    /// Its position in the configuration (part of its declarations' fingerprint).
    pub index: usize,
    /// The message.
    pub message: &'m InboundMessage,
    /// The levels the topic pattern captured.
    pub captures: &'a [&'m str],
}

/// Applies a mapping to one message.
pub fn apply(matched: Matched<'_, '_>, memory: &mut Memory, sink: &mut Sink<'_, '_>, scratch: &mut Scratch) {
    let Matched { config, mapping, index, message, captures } = matched;
    let topic = message.address.as_str();
    let Scratch { provider, service, name, other_service } = scratch;
    mapping.provider.render_captures(provider, captures);
    if let Some(problem) = name_problem(provider) {
        sink.skip(topic, format_args!("provider {}: {problem}", Quoted(provider)));
        return;
    }
    mapping.service.render_captures(service, captures);
    if let Some(problem) = name_problem(service) {
        sink.skip(topic, format_args!("service {}: {problem}", Quoted(service)));
        return;
    }
    let Some(doc) = read_payload(sink, message, config.max_payload_bytes) else { return };
    let timestamp_us = match &mapping.timestamp {
        None => message.received_us,
        Some((pointer, format)) => match pointer.resolve(&doc).map(|t| (t, format.read(t))) {
            Some((_, Ok(us))) => us,
            Some((t, Err(reason))) => {
                sink.skip(topic, format_args!("timestamp {}: {reason}; the receive time is used", Short(t)));
                message.received_us
            }
            None => {
                sink.skip(topic, format_args!("no timestamp at {:?}; the receive time is used", pointer.as_str()));
                message.received_us
            }
        },
    };

    let declare = memory.first_declaration(fingerprint(("mapping", index, captures)));
    let mut declarations: Map<String, Value> = Map::new();

    for resource in &mapping.resources {
        resource.name.render_captures(name, captures);
        if let Some(problem) = name_problem(name) {
            sink.skip(topic, format_args!("resource {}: {problem}", Quoted(name)));
            continue;
        }
        let service: &str = match &resource.service {
            None => service,
            Some(template) => {
                template.render_captures(other_service, captures);
                if let Some(problem) = name_problem(other_service) {
                    sink.skip(topic, format_args!("service {}: {problem}", Quoted(other_service)));
                    continue;
                }
                other_service
            }
        };
        if declare && let Some(ty) = resource.kind.model_type() {
            let mut declaration = json!({ "type": ty });
            if let Some(unit) = &resource.unit {
                declaration["unit"] = Value::from(unit.as_str());
            }
            declare_resource(&mut declarations, service, name, declaration);
        }
        let Some(raw) = resource.pointer.resolve(&doc) else {
            let what =
                if doc.is_string() && !resource.pointer.is_root() { " (the payload is text, not JSON)" } else { "" };
            sink.skip(topic, format_args!("{service}/{name}: nothing at {:?}{what}", resource.pointer.as_str()));
            continue;
        };
        let value = match resource.kind.coerce(raw) {
            Ok(value) => value,
            Err(reason) => {
                sink.skip(topic, format_args!("{service}/{name}: {} {reason}", Short(raw)));
                continue;
            }
        };
        if let Some(problem) = value_problem(service, name, &value) {
            sink.skip(topic, format_args!("{service}/{name}: {problem}"));
            continue;
        }
        sink.out.update_at(provider, service, name, value, timestamp_us);
    }

    if declare {
        for act in config.acts.iter().filter(|a| a.provider.matches(provider)) {
            declare_resource(&mut declarations, &act.service, &act.resource, act.declaration());
        }
        if !declarations.is_empty() {
            sink.out.model(provider, json!({ "services": declarations }));
        }
    }
    let broker = message.metadata.get("broker").map(String::as_str);
    memory.note_broker(&config.acts, provider, broker);
    if config.acts.iter().any(|a| a.uses_captures)
        && let Some(warning) =
            memory.remember_captures(sink.ctx, &config.acts, provider, mapping.topic.names(), captures)
    {
        sink.skip(topic, format_args!("{warning}"));
    }
}

/// The payload as JSON; text that does not look like JSON (`on`, `21.5 C`) is a JSON string, so that
/// whole-payload pointers (`""`) read plain-text devices.
fn read_payload(sink: &mut Sink<'_, '_>, message: &InboundMessage, max_bytes: usize) -> Option<Value> {
    let text = payload_text(sink, message, max_bytes)?;
    match serde_json::from_str(text) {
        Ok(value) => Some(value),
        Err(_) if !text.trim_start().starts_with(['{', '[', '"']) => Some(Value::String(text.to_owned())),
        Err(e) => {
            sink.skip(&message.address, format_args!("payload is not JSON: {e}"));
            None
        }
    }
}

/// Adds `service/resource` with `declaration` to the `services` object of a model document.
pub fn declare_resource(declarations: &mut Map<String, Value>, service: &str, resource: &str, declaration: Value) {
    let service = declarations.entry(service).or_insert_with(|| json!({ "resources": {} }));
    if let Some(resources) = service.get_mut("resources").and_then(Value::as_object_mut) {
        resources.insert(resource.to_owned(), declaration);
    }
}
