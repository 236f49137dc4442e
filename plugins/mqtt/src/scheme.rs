//! The default topic scheme: `hub/up/{provider}/{service}/{resource}` (one value),
//! `hub/model/{provider}` (a model document) and reading payloads. SenML packs are in [`crate::senml`].

use hub_plugin_sdk::prelude::*;
use serde_json::Map;

use crate::{
    names::{name_problem, value_problem},
    report::{Quoted, Sink},
    values::TimeFormat,
};

/// The root level of the default scheme.
pub const ROOT: &str = "hub";
/// `hub/up/{provider}/{service}/{resource}`.
pub const UP: &str = "up";
/// `hub/senml/{provider}`.
pub const SENML: &str = "senml";
/// `hub/model/{provider}`.
pub const MODEL: &str = "model";
/// `hub/down/{provider}/{service}/{resource}`, where commands go.
pub const DOWN: &str = "down";

/// The payload as UTF-8 text, or a warning: too large, or not UTF-8.
pub fn payload_text<'m>(sink: &mut Sink<'_, '_>, message: &'m InboundMessage, max_bytes: usize) -> Option<&'m str> {
    let bytes = message.payload.as_bytes();
    if bytes.len() > max_bytes {
        sink.skip(
            &message.address,
            format_args!("payload of {} bytes is over the {max_bytes}-byte limit", bytes.len()),
        );
        return None;
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => Some(text),
        Err(_) => {
            sink.skip(&message.address, format_args!("payload is not UTF-8 text"));
            None
        }
    }
}

/// The payload as a JSON document, or a warning.
pub fn payload_json(sink: &mut Sink<'_, '_>, message: &InboundMessage, max_bytes: usize) -> Option<Value> {
    let text = payload_text(sink, message, max_bytes)?;
    match serde_json::from_str(text) {
        Ok(value) => Some(value),
        Err(e) => {
            sink.skip(&message.address, format_args!("payload is not JSON: {e}"));
            None
        }
    }
}

/// Checks the three names of a topic; warns and returns `false` on the first bad one.
pub fn check_names(sink: &mut Sink<'_, '_>, topic: &str, names: [(&str, &str); 3]) -> bool {
    for (what, name) in names {
        if let Some(problem) = name_problem(name) {
            sink.skip(topic, format_args!("{what} {}: {problem}", Quoted(name)));
            return false;
        }
    }
    true
}

/// `hub/up/{provider}/{service}/{resource}`: a JSON value, or `{"value": v, "timestamp": t}` where `t` is
/// milliseconds since the Unix epoch (a number) or RFC 3339 text with an offset.
pub fn up(sink: &mut Sink<'_, '_>, message: &InboundMessage, levels: &[&str], max_bytes: usize) {
    let topic = message.address.as_str();
    let &[_, _, provider, service, resource] = levels else {
        sink.skip(topic, format_args!("expected hub/up/{{provider}}/{{service}}/{{resource}}"));
        return;
    };
    if !check_names(sink, topic, [("provider", provider), ("service", service), ("resource", resource)]) {
        return;
    }
    let Some(payload) = payload_json(sink, message, max_bytes) else { return };
    let (value, timestamp) = split_envelope(payload);
    let timestamp_us = match timestamp {
        None => message.received_us,
        Some(t) => match envelope_time(&t) {
            Ok(us) => us,
            Err(reason) => {
                sink.skip(topic, format_args!("timestamp {}: {reason}; the receive time is used", Short(&t)));
                message.received_us
            }
        },
    };
    if let Some(problem) = value_problem(service, resource, &value) {
        sink.skip(topic, format_args!("{problem}"));
        return;
    }
    sink.out.update_at(provider, service, resource, value, timestamp_us);
}

/// An object with exactly `value`, or `value` and `timestamp`, is an envelope; anything else is the value.
fn split_envelope(payload: Value) -> (Value, Option<Value>) {
    match payload {
        Value::Object(mut map)
            if map.contains_key("value") && (map.len() == 1 || (map.len() == 2 && map.contains_key("timestamp"))) =>
        {
            let timestamp = map.remove("timestamp");
            (map.remove("value").unwrap_or(Value::Null), timestamp)
        }
        other => (other, None),
    }
}

/// The envelope's timestamp rule: a number is milliseconds since the Unix epoch, text is RFC 3339.
fn envelope_time(t: &Value) -> Result<i64, &'static str> {
    match t {
        Value::Number(_) => TimeFormat::UnixMs.read(t),
        Value::String(_) => TimeFormat::Rfc3339.read(t),
        _ => Err("expected milliseconds since 1970 (a number) or RFC 3339 text"),
    }
}

/// `hub/model/{provider}`: a model document, the body of `PUT /api/v1/providers/{provider}`.
pub fn model(sink: &mut Sink<'_, '_>, message: &InboundMessage, levels: &[&str], max_bytes: usize) {
    let topic = message.address.as_str();
    let &[_, _, provider] = levels else {
        sink.skip(topic, format_args!("expected hub/model/{{provider}}"));
        return;
    };
    if let Some(problem) = name_problem(provider) {
        sink.skip(topic, format_args!("provider {}: {problem}", Quoted(provider)));
        return;
    }
    let Some(doc) = payload_json(sink, message, max_bytes) else { return };
    match check_model(&doc) {
        Ok(()) => {
            sink.out.model(provider, doc);
        }
        Err(reason) => sink.skip(topic, format_args!("not a model document: {reason}")),
    }
}

/// Checks the shape of a model document (`{"services": {s: {"resources": {r: {...}}}}}`): names, known keys,
/// kinds and types. The hub checks the rest (redeclarations, values against types) and refuses the document
/// alone.
pub fn check_model(doc: &Value) -> Result<(), String> {
    const KINDS: [&str; 4] = ["sensor", "state", "property", "action"];
    const TYPES: [&str; 6] = ["number", "integer", "boolean", "string", "object", "array"];
    const RESOURCE_KEYS: [&str; 7] = ["kind", "type", "unit", "metadata", "parameters", "value", "timestamp"];
    let doc = only_keys(doc, "the document", &["services"])?;
    let Some(services) = doc.get("services") else { return Ok(()) };
    let services = services.as_object().ok_or("services: expected an object")?;
    for (service, body) in services {
        if let Some(problem) = name_problem(service) {
            return Err(format!("service {}: {problem}", Quoted(service)));
        }
        let body = only_keys(body, service, &["resources"])?;
        let Some(resources) = body.get("resources") else { continue };
        let resources = resources.as_object().ok_or_else(|| format!("{service}.resources: expected an object"))?;
        for (resource, decl) in resources {
            let at = format!("{service}/{resource}");
            if let Some(problem) = name_problem(resource) {
                return Err(format!("resource {}: {problem}", Quoted(&at)));
            }
            let decl = only_keys(decl, &at, &RESOURCE_KEYS)?;
            let text = |key: &str, allowed: &[&str]| match decl.get(key) {
                None => Ok(()),
                Some(Value::String(s)) if allowed.is_empty() || allowed.contains(&s.as_str()) => Ok(()),
                Some(other) => Err(format!("{at}.{key}: {} is not one of {allowed:?}", Short(other))),
            };
            text("kind", &KINDS)?;
            text("type", &TYPES)?;
            text("unit", &[])?;
            if let Some(ts) = decl.get("timestamp")
                && TimeFormat::Rfc3339.read(ts).is_err()
            {
                return Err(format!("{at}.timestamp: expected RFC 3339 text"));
            }
            if decl.get("metadata").is_some_and(|m| !m.is_object()) {
                return Err(format!("{at}.metadata: expected an object"));
            }
            if let Some(params) = decl.get("parameters") {
                let params = params.as_object().ok_or_else(|| format!("{at}.parameters: expected an object"))?;
                for (name, ty) in params {
                    if let Some(problem) = name_problem(name) {
                        return Err(format!("{at}.parameters: {}: {problem}", Quoted(name)));
                    }
                    if !ty.as_str().is_some_and(|t| TYPES.contains(&t)) {
                        return Err(format!("{at}.parameters.{name}: {} is not one of {TYPES:?}", Short(ty)));
                    }
                }
            }
        }
    }
    Ok(())
}

fn only_keys<'v>(value: &'v Value, what: &str, allowed: &[&str]) -> Result<&'v Map<String, Value>, String> {
    let map = value.as_object().ok_or_else(|| format!("{what}: expected an object"))?;
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(key) => Err(format!("{what}: unknown key {} (expected {allowed:?})", Quoted(key))),
        None => Ok(map),
    }
}

/// A JSON value for a log line, cut short.
pub struct Short<'v>(pub &'v Value);

impl std::fmt::Display for Short<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const MAX: usize = 64;
        let text = self.0.to_string();
        if text.len() <= MAX {
            return f.write_str(&text);
        }
        let mut cut = MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        write!(f, "{}…", &text[..cut])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn envelopes_are_exactly_value_and_timestamp() {
        assert_eq!(split_envelope(json!({"value": 1})), (json!(1), None));
        assert_eq!(split_envelope(json!({"value": 1, "timestamp": 5})), (json!(1), Some(json!(5))));
        assert_eq!(split_envelope(json!({"value": 1, "unit": "C"})), (json!({"value": 1, "unit": "C"}), None));
        assert_eq!(split_envelope(json!({"timestamp": 5})), (json!({"timestamp": 5}), None));
        assert_eq!(split_envelope(json!({"value": {"a": 1}})), (json!({"a": 1}), None));
    }

    #[test]
    fn model_documents_are_checked() {
        let good = json!({"services": {"hvac": {"resources": {
            "setpoint": {"kind": "action", "type": "object", "parameters": {"value": "number"}},
            "temp": {"type": "number", "unit": "°C", "metadata": {"floor": 3}, "value": 20.5,
                     "timestamp": "2026-01-01T00:00:00Z"}
        }}}});
        assert_eq!(check_model(&good), Ok(()));
        assert_eq!(check_model(&json!({})), Ok(()));
        for bad in [
            json!([]),
            json!({"services": {}, "extra": 1}),
            json!({"services": []}),
            json!({"services": {"bad name": {}}}),
            json!({"services": {"s": {"resources": {"r": {"kind": "gauge"}}}}}),
            json!({"services": {"s": {"resources": {"r": {"type": "float"}}}}}),
            json!({"services": {"s": {"resources": {"r": {"colour": "red"}}}}}),
            json!({"services": {"s": {"resources": {"r": {"parameters": {"x": "double"}}}}}}),
            json!({"services": {"s": {"resources": {"r": {"timestamp": 5}}}}}),
            json!({"services": {"s": {"resources": {"r/x": {}}}}}),
        ] {
            assert!(check_model(&bad).is_err(), "{bad}");
        }
    }
}
