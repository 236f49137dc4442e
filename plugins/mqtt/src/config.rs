//! The adapter's configuration: parsed strictly (unknown keys are errors), validated in full, and compiled into
//! patterns and templates once, at init. Every error names its key (`mappings[0].provider: ...`).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::{
    names::{is_name_byte, name_problem},
    pattern::{Glob, Slot, Template, TopicPattern},
    pointer::Pointer,
    values::{ParamType, TimeFormat, ValueKind},
};

/// The largest payload read by default; larger messages are skipped with a warning.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 256 * 1024;

/// The payload of an ACT that no template renders, and of ACT templates without a `payload`.
const DEFAULT_ACT_PAYLOAD: &str = r#"{"id": "{id}", "params": {params}}"#;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "enabled")]
    default_scheme: bool,
    #[serde(default = "default_max_payload_bytes")]
    max_payload_bytes: usize,
    #[serde(default)]
    mappings: Vec<RawMapping>,
    #[serde(default)]
    acts: Vec<RawAct>,
}

fn enabled() -> bool {
    true
}

fn default_max_payload_bytes() -> usize {
    DEFAULT_MAX_PAYLOAD_BYTES
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    topic: String,
    provider: String,
    service: String,
    #[serde(default)]
    timestamp: Option<RawTimestamp>,
    resources: Vec<RawResource>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimestamp {
    pointer: String,
    format: TimeFormat,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResource {
    name: String,
    #[serde(default)]
    pointer: String,
    #[serde(default, rename = "type")]
    kind: ValueKind,
    #[serde(default)]
    unit: Option<String>,
    #[serde(default)]
    service: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAct {
    provider: String,
    service: String,
    resource: String,
    #[serde(default)]
    params: BTreeMap<String, ParamType>,
    topic: String,
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    qos: Option<u8>,
    #[serde(default)]
    retain: Option<bool>,
    #[serde(default)]
    broker: Option<String>,
}

/// The compiled configuration.
#[derive(Debug)]
pub struct Config {
    /// Whether the `hub/up`, `hub/senml` and `hub/model` topics and the `hub/down` commands are on.
    pub default_scheme: bool,
    /// Larger payloads are skipped with a warning.
    pub max_payload_bytes: usize,
    /// Tried in order before the default scheme; the first match wins.
    pub mappings: Vec<Mapping>,
    /// Tried in order for each ACT; the first match wins.
    pub acts: Vec<ActTemplate>,
}

/// One mapping of a topic pattern onto resources.
#[derive(Debug)]
pub struct Mapping {
    /// Which topics it takes.
    pub topic: TopicPattern,
    /// The provider name, from the captures.
    pub provider: Template,
    /// The default service name, from the captures.
    pub service: Template,
    /// Where the measurement time is in the payload, and how it is written.
    pub timestamp: Option<(Pointer, TimeFormat)>,
    /// The resources each message carries.
    pub resources: Vec<MappedResource>,
}

/// One resource of a [`Mapping`].
#[derive(Debug)]
pub struct MappedResource {
    /// The resource name, from the captures.
    pub name: Template,
    /// A service other than the mapping's, from the captures.
    pub service: Option<Template>,
    /// Where the value is in the payload.
    pub pointer: Pointer,
    /// What the value is turned into.
    pub kind: ValueKind,
    /// The unit to declare.
    pub unit: Option<String>,
}

/// How an ACT on matching resources becomes an MQTT message.
#[derive(Debug)]
pub struct ActTemplate {
    /// Which providers.
    pub provider: Glob,
    /// The action's service.
    pub service: String,
    /// The action resource.
    pub resource: String,
    /// The declared parameters.
    pub params: BTreeMap<String, ParamType>,
    /// The topic to publish on.
    pub topic: Template,
    /// The payload.
    pub payload: Template,
    /// MQTT metadata for the outbound message (`qos`, `retain`, `broker`).
    pub metadata: BTreeMap<String, String>,
    /// Whether the topic or payload uses topic captures (which must then be remembered per provider).
    pub uses_captures: bool,
}

impl ActTemplate {
    /// Whether the template handles ACT `provider/service/resource`.
    pub fn handles(&self, provider: &str, service: &str, resource: &str) -> bool {
        self.service == service && self.resource == resource && self.provider.matches(provider)
    }

    /// The action's declaration in a model document.
    pub fn declaration(&self) -> Value {
        let parameters: serde_json::Map<String, Value> =
            self.params.iter().map(|(name, ty)| (name.clone(), Value::from(ty.model_type()))).collect();
        serde_json::json!({ "kind": "action", "type": "object", "parameters": parameters })
    }
}

impl Config {
    /// Parses and validates the configuration JSON (`null` means every default).
    pub fn parse(config: Value) -> Result<Config, String> {
        let config = if config.is_null() { Value::Object(serde_json::Map::new()) } else { config };
        let raw: RawConfig = serde_path_to_error::deserialize(config).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { "config".to_owned() } else { key };
            format!("{key}: {}", e.into_inner())
        })?;
        if !raw.default_scheme && raw.mappings.is_empty() {
            return Err("mappings: empty while default_scheme is false, so every message would be ignored".to_owned());
        }
        if raw.max_payload_bytes == 0 {
            return Err("max_payload_bytes: must be at least 1".to_owned());
        }
        let mappings =
            raw.mappings.into_iter().enumerate().map(|(i, m)| compile_mapping(i, m)).collect::<Result<Vec<_>, _>>()?;
        let mut capture_names: Vec<&str> = mappings.iter().flat_map(|m| m.topic.names()).map(|n| &**n).collect();
        capture_names.sort_unstable();
        capture_names.dedup();
        let acts = raw
            .acts
            .into_iter()
            .enumerate()
            .map(|(i, a)| compile_act(i, a, &capture_names))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Config { default_scheme: raw.default_scheme, max_payload_bytes: raw.max_payload_bytes, mappings, acts })
    }
}

fn compile_mapping(i: usize, raw: RawMapping) -> Result<Mapping, String> {
    let key = |field: &str| format!("mappings[{i}].{field}");
    let topic = TopicPattern::parse(&raw.topic).map_err(|e| format!("{}: {e}", key("topic")))?;
    let hint = known_hint(topic.names().iter().map(|n| &**n));
    let name_template = |key: String, text: &str| {
        let template = Template::parse(text, true, &hint, |name| topic.capture_index(name).map(Slot::Capture))
            .map_err(|e| format!("{key}: {e}"))?;
        check_name_template(&template).map_err(|e| format!("{key}: {e}"))?;
        Ok::<_, String>(template)
    };
    let provider = name_template(key("provider"), &raw.provider)?;
    let service = name_template(key("service"), &raw.service)?;
    let timestamp = match raw.timestamp {
        Some(t) => {
            Some((Pointer::parse(&t.pointer).map_err(|e| format!("{}: {e}", key("timestamp.pointer")))?, t.format))
        }
        None => None,
    };
    if raw.resources.is_empty() {
        return Err(format!("{}: a mapping needs at least one resource", key("resources")));
    }
    let mut resources = Vec::with_capacity(raw.resources.len());
    for (j, r) in raw.resources.into_iter().enumerate() {
        let rkey = |field: &str| key(&format!("resources[{j}].{field}"));
        let name = name_template(rkey("name"), &r.name)?;
        let service = r.service.map(|s| name_template(rkey("service"), &s)).transpose()?;
        let pointer = Pointer::parse(&r.pointer).map_err(|e| format!("{}: {e}", rkey("pointer")))?;
        if let Some(unit) = &r.unit
            && (unit.is_empty() || unit.len() > 64)
        {
            return Err(format!("{}: a unit is 1 to 64 bytes of text", rkey("unit")));
        }
        if r.unit.is_some() && r.kind == ValueKind::Json {
            return Err(format!("{}: a unit needs a declared type (float, int, string or bool)", rkey("unit")));
        }
        resources.push(MappedResource { name, service, pointer, kind: r.kind, unit: r.unit });
    }
    Ok(Mapping { topic, provider, service, timestamp, resources })
}

fn compile_act(i: usize, raw: RawAct, capture_names: &[&str]) -> Result<ActTemplate, String> {
    let key = |field: &str| format!("acts[{i}].{field}");
    let provider = Glob::parse(&raw.provider).map_err(|e| format!("{}: {e}", key("provider")))?;
    for (field, value) in [("service", &raw.service), ("resource", &raw.resource)] {
        if let Some(problem) = name_problem(value) {
            return Err(format!("{}: {value:?}: {problem}", key(field)));
        }
    }
    for name in raw.params.keys() {
        if let Some(problem) = name_problem(name) {
            return Err(format!("{}: {name:?}: {problem}", key("params")));
        }
    }
    let names = ["provider", "service", "resource"].into_iter().chain(capture_names.iter().copied());
    let topic_hint = known_hint(names.clone());
    let topic_slot = |name: &str| match name {
        "provider" => Some(Slot::Provider),
        "service" => Some(Slot::Service),
        "resource" => Some(Slot::Resource),
        _ => capture_names.contains(&name).then(|| Slot::Named(name.into())),
    };
    let topic =
        Template::parse(&raw.topic, true, &topic_hint, topic_slot).map_err(|e| format!("{}: {e}", key("topic")))?;
    if topic.texts().any(|t| t.contains(['+', '#', '\0'])) || topic.literal() == Some("") {
        return Err(format!("{}: a topic to publish on is not empty and has no `+`, `#` or NUL", key("topic")));
    }
    let params = &raw.params;
    let payload_hint = known_hint(
        ["id", "params"]
            .into_iter()
            .chain(names)
            .map(str::to_owned)
            .chain(params.keys().map(|p| format!("params.{p}")))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str),
    );
    let payload_slot = |name: &str| match name {
        "id" => Some(Slot::Id),
        "params" => Some(Slot::Params),
        _ => match name.strip_prefix("params.") {
            Some(param) => params.contains_key(param).then(|| Slot::Param(param.into())),
            None => topic_slot(name),
        },
    };
    let payload_text = raw.payload.as_deref().unwrap_or(DEFAULT_ACT_PAYLOAD);
    let payload = Template::parse(payload_text, false, &payload_hint, payload_slot)
        .map_err(|e| format!("{}: {e}", key("payload")))?;
    let mut metadata = BTreeMap::new();
    match raw.qos {
        None => {}
        Some(q @ (0 | 1)) => {
            metadata.insert("qos".to_owned(), q.to_string());
        }
        Some(_) => return Err(format!("{}: the hub publishes with QoS 0 or 1", key("qos"))),
    }
    if let Some(retain) = raw.retain {
        metadata.insert("retain".to_owned(), retain.to_string());
    }
    if let Some(broker) = raw.broker {
        if broker.is_empty() {
            return Err(format!("{}: a broker name cannot be empty", key("broker")));
        }
        metadata.insert("broker".to_owned(), broker);
    }
    let uses_captures = topic.slots().chain(payload.slots()).any(|s| matches!(s, Slot::Named(_)));
    Ok(ActTemplate {
        provider,
        service: raw.service,
        resource: raw.resource,
        params: raw.params,
        topic,
        payload,
        metadata,
        uses_captures,
    })
}

/// A name template's literal pieces must be name characters, and a template without placeholders a whole name.
fn check_name_template(template: &Template) -> Result<(), String> {
    if let Some(text) = template.literal() {
        return match name_problem(text) {
            Some(problem) => Err(format!("{text:?}: {problem}")),
            None => Ok(()),
        };
    }
    match template.texts().find(|t| !t.bytes().all(is_name_byte)) {
        Some(text) => Err(format!("{text:?}: a name uses only A-Z, a-z, 0-9, '.', '-' and '_'")),
        None => Ok(()),
    }
}

fn known_hint<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        " (the topic pattern captures nothing)".to_owned()
    } else {
        format!(" (known: {})", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(config: Value) -> String {
        Config::parse(config).unwrap_err()
    }

    fn mapping(overrides: Value) -> Value {
        let mut m = json!({
            "topic": "building/{floor}/{room}/env",
            "provider": "room-{floor}-{room}",
            "service": "env",
            "resources": [{"name": "temperature", "pointer": "/temp", "type": "float", "unit": "°C"}]
        });
        for (k, v) in overrides.as_object().unwrap() {
            m[k] = v.clone();
        }
        json!({ "mappings": [m] })
    }

    #[test]
    fn defaults() {
        let c = Config::parse(Value::Null).unwrap();
        assert!(c.default_scheme);
        assert_eq!(c.max_payload_bytes, DEFAULT_MAX_PAYLOAD_BYTES);
        assert!(c.mappings.is_empty() && c.acts.is_empty());
        let from_manifest = Config::parse(json!({"default_scheme": true, "max_payload_bytes": 262144})).unwrap();
        assert!(from_manifest.default_scheme);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (json!({"default_schema": true}), "default_schema: unknown field `default_schema`"),
            (json!({"default_scheme": "yes"}), "default_scheme: invalid type"),
            (json!({"default_scheme": false}), "mappings: empty while default_scheme is false"),
            (
                mapping(json!({"provider": "room-{flor}"})),
                "mappings[0].provider: unknown segment {flor} (known: floor, room)",
            ),
            (mapping(json!({"provider": "room {floor}"})), "mappings[0].provider: \"room \": a name uses only"),
            (mapping(json!({"service": ""})), "mappings[0].service: \"\": a name cannot be empty"),
            (mapping(json!({"topic": "a/#/b"})), "mappings[0].topic: `#` is only allowed as the last level"),
            (mapping(json!({"resources": []})), "mappings[0].resources: a mapping needs at least one resource"),
            (
                mapping(json!({"resources": [{"name": "t", "type": "double"}]})),
                "mappings[0].resources[0].type: unknown variant `double`",
            ),
            (mapping(json!({"resources": [{"name": "t", "pointer": "temp"}]})), "mappings[0].resources[0].pointer:"),
            (
                mapping(json!({"resources": [{"name": "{sensor}"}]})),
                "mappings[0].resources[0].name: unknown segment {sensor}",
            ),
            (
                mapping(json!({"resources": [{"name": "t", "unit": "K"}]})),
                "mappings[0].resources[0].unit: a unit needs a declared type",
            ),
            (
                mapping(json!({"timestamp": {"pointer": "/ts", "format": "unix_ns"}})),
                "mappings[0].timestamp.format: unknown variant `unix_ns`",
            ),
            (mapping(json!({"extra": 1})), "mappings[0].extra: unknown field `extra`"),
            (mapping(json!({"provider": null})), "mappings[0].provider: invalid type: null"),
            (json!({"mappings": [{"topic": "a"}]}), "mappings[0]: missing field `provider`"),
        ];
        for (config, expected) in cases {
            let e = err(config.clone());
            assert!(e.starts_with(expected), "{config}\n  got:      {e}\n  expected: {expected}");
        }
    }

    #[test]
    fn act_templates_are_checked() {
        let with_act = |act: Value| {
            let mut c = mapping(json!({}));
            c["acts"] = json!([act]);
            c
        };
        let act = |overrides: Value| {
            let mut a = json!({"provider": "room-*", "service": "hvac", "resource": "setpoint",
                "params": {"value": "float"}, "topic": "building/{floor}/{room}/cmd"});
            for (k, v) in overrides.as_object().unwrap() {
                a[k] = v.clone();
            }
            with_act(a)
        };
        let c = Config::parse(act(json!({"payload": "{\"sp\": {params.value}, \"req\": \"{id}\"}"}))).unwrap();
        assert!(c.acts[0].uses_captures);
        assert_eq!(
            c.acts[0].declaration(),
            json!({"kind": "action", "type": "object", "parameters": {"value": "number"}})
        );
        let cases = [
            (
                act(json!({"topic": "building/{flor}/cmd"})),
                "acts[0].topic: unknown segment {flor} (known: provider, service, resource, floor, room)",
            ),
            (act(json!({"topic": "building/+/cmd"})), "acts[0].topic: a topic to publish on"),
            (act(json!({"payload": "{params.other}"})), "acts[0].payload: unknown segment {params.other}"),
            (act(json!({"payload": "{nope}"})), "acts[0].payload: unknown segment {nope}"),
            (act(json!({"provider": "room/*"})), "acts[0].provider:"),
            (act(json!({"service": "h vac"})), "acts[0].service:"),
            (act(json!({"params": {"v": "decimal"}})), "acts[0].params.v: unknown variant `decimal`"),
            (act(json!({"params": {"bad name": "float"}})), "acts[0].params: \"bad name\""),
            (act(json!({"qos": 2})), "acts[0].qos:"),
            (act(json!({"broker": ""})), "acts[0].broker:"),
        ];
        for (config, expected) in cases {
            let e = err(config.clone());
            assert!(e.starts_with(expected), "{config}\n  got:      {e}\n  expected: {expected}");
        }
        let plain = Config::parse(act(json!({"topic": "dev/{provider}/{service}/{resource}", "qos": 1}))).unwrap();
        assert!(!plain.acts[0].uses_captures);
        assert_eq!(plain.acts[0].metadata.get("qos").map(String::as_str), Some("1"));
    }
}
