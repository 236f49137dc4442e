//! The adapter's configuration (the manifest's `[config]`, or what an admin set), checked in full at `init`.
//!
//! ```json
//! { "json_nodes": [{ "node": "weather/*", "provider": "wx-{node}", "service": "weather" }] }
//! ```
//!
//! `node` is a node glob (`*` stands for any run of characters); in `provider` (default `"{node}"`), `{node}`
//! becomes the node name made name-safe; `service` defaults to `"json"`.

use serde::Deserialize;
use serde_json::Value;

use crate::names;

/// The longest node glob accepted, in bytes.
const MAX_GLOB_BYTES: usize = 1024;

/// The placeholder a provider template may hold.
const NODE_PLACEHOLDER: &str = "{node}";

/// The configuration, checked.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Nodes whose items are XEP-0335 JSON containers, in the order given; the first match maps a node.
    pub json_nodes: Vec<JsonNode>,
}

/// One `json_nodes` entry: which nodes carry JSON containers, and where their keys go.
#[derive(Debug, Clone)]
pub struct JsonNode {
    /// The node glob.
    pub node: String,
    /// The provider template, split at each `{node}`.
    provider_parts: Vec<String>,
    /// The service every key of the object becomes a resource of.
    pub service: String,
}

impl JsonNode {
    /// Whether this entry maps `node`.
    pub fn matches(&self, node: &str) -> bool {
        names::glob_matches(&self.node, node)
    }

    /// The provider of `node`'s items: the template with `{node}` replaced by the node made name-safe (and the
    /// whole made name-safe again, should that make it too long).
    pub fn provider(&self, node: &str) -> String {
        let filled = self.provider_parts.join(&names::safe(node));
        match names::safe(&filled) {
            std::borrow::Cow::Borrowed(_) => filled,
            std::borrow::Cow::Owned(safe) => safe,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    json_nodes: Vec<RawJsonNode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJsonNode {
    node: String,
    #[serde(default = "default_provider")]
    provider: String,
    #[serde(default = "default_service")]
    service: String,
}

fn default_provider() -> String {
    NODE_PLACEHOLDER.to_owned()
}

fn default_service() -> String {
    "json".to_owned()
}

impl Config {
    /// Parses and checks the configuration JSON (`null` means every default); an error names the key, e.g.
    /// `json_nodes[0].service: "a b" is not a valid name`.
    pub fn parse(config: Value) -> Result<Config, String> {
        let config = match config {
            Value::Null => Value::Object(serde_json::Map::new()),
            Value::Object(_) => config,
            other => return Err(format!("config: must be a table of settings, not {other}")),
        };
        let raw: RawConfig = serde_path_to_error::deserialize(config).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { "config".to_owned() } else { key };
            format!("{key}: {}", e.into_inner())
        })?;
        let json_nodes =
            raw.json_nodes.into_iter().enumerate().map(|(i, raw)| json_node(i, raw)).collect::<Result<_, _>>()?;
        Ok(Config { json_nodes })
    }

    /// The `json_nodes` entry that maps `node`, if any.
    pub fn json_node(&self, node: &str) -> Option<&JsonNode> {
        self.json_nodes.iter().find(|entry| entry.matches(node))
    }
}

fn json_node(i: usize, raw: RawJsonNode) -> Result<JsonNode, String> {
    let key = |field: &str| format!("json_nodes[{i}].{field}");
    if raw.node.is_empty() || raw.node.len() > MAX_GLOB_BYTES {
        return Err(format!("{}: a node glob is 1 to {MAX_GLOB_BYTES} bytes", key("node")));
    }
    if raw.node.chars().any(char::is_control) {
        return Err(format!("{}: {:?} holds a control character", key("node"), raw.node));
    }
    let provider: Vec<String> = raw.provider.split(NODE_PLACEHOLDER).map(str::to_owned).collect();
    if provider.iter().any(|part| part.contains(['{', '}'])) {
        return Err(format!("{}: {:?}: the only placeholder is {NODE_PLACEHOLDER}", key("provider"), raw.provider));
    }
    // With a one-character node the template must already be a valid name; longer nodes are cut to fit.
    let sample = provider.join("x");
    if !names::is_valid(&sample) {
        return Err(format!(
            "{}: {:?} does not make a valid provider name (A-Z a-z 0-9 . - _, 1 to 128 bytes, starting with a \
             letter, a digit or _)",
            key("provider"),
            raw.provider
        ));
    }
    if !names::is_valid(&raw.service) {
        return Err(format!("{}: {:?} is not a valid name", key("service"), raw.service));
    }
    Ok(JsonNode { node: raw.node, provider_parts: provider, service: raw.service })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_templates() {
        assert!(Config::parse(Value::Null).unwrap().json_nodes.is_empty());
        assert!(Config::parse(json!({ "json_nodes": [] })).unwrap().json_nodes.is_empty());
        let config = Config::parse(json!({ "json_nodes": [
            { "node": "weather/*", "provider": "wx-{node}", "service": "weather" },
            { "node": "*" }
        ] }))
        .unwrap();
        let entry = config.json_node("weather/藤沢").unwrap();
        assert_eq!(entry.service, "weather");
        assert_eq!(entry.provider("weather/藤沢"), format!("wx-{}", names::safe("weather/藤沢")));
        let fallback = config.json_node("plain").unwrap();
        assert_eq!((fallback.provider("plain"), fallback.service.as_str()), ("plain".to_owned(), "json"));
        let long = "n".repeat(200);
        let provider = fallback.provider(&long);
        assert!(names::is_valid(&provider), "{provider}");
        let fixed = Config::parse(json!({ "json_nodes": [{ "node": "a", "provider": "one", "service": "s" }] }));
        assert_eq!(fixed.unwrap().json_nodes[0].provider("a"), "one");
    }
}
