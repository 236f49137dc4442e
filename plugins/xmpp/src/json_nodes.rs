//! Plain XEP-0060 items on the nodes `json_nodes` names: an XEP-0335 JSON container whose object's top-level
//! keys become resources.
//!
//! ```xml
//! <json xmlns="urn:xmpp:json:0">{"temperature": 21.5, "wind": {"speed": 3, "dir": "N"}}</json>
//! ```
//!
//! on node `weather/fujisawa` with `{ node = "weather/*", provider = "wx-{node}", service = "weather" }` gives
//! `wx-weather_fujisawa-xxxxxxxx/weather/temperature = 21.5` and `.../weather/wind = {"speed": 3, "dir": "N"}`,
//! timestamped with the time the hub received the item.

use hub_plugin_sdk::prelude::*;

use crate::config::JsonNode;
use crate::names;
use crate::sox::{self, MAX_ENTRIES, MAX_ID_BYTES, Problems};

/// Maps one item of a `json_nodes` node; skipped keys are counted in `problems`.
pub fn map(
    entry: &JsonNode,
    message: &InboundMessage,
    out: &mut Output,
    problems: &mut Problems,
) -> Result<(), String> {
    let doc = sox::parse(message.payload.as_bytes())?;
    let root = sox::root(&doc, "json")?;
    if root.children().any(|n| n.is_element()) {
        return Err("the <json> container holds elements, not JSON text".to_owned());
    }
    let text: String = root.children().filter_map(|n| n.text()).collect();
    let value: Value =
        serde_json::from_str(text.trim()).map_err(|e| format!("the <json> container does not hold JSON: {e}"))?;
    let Value::Object(object) = value else {
        return Err("the <json> container holds JSON that is not an object".to_owned());
    };
    if object.len() > MAX_ENTRIES {
        return Err(format!("an object of {} keys (at most {MAX_ENTRIES} are read from an item)", object.len()));
    }
    let provider = entry.provider(&message.address);
    for (key, value) in object {
        if value.is_null() {
            problems.add(|| format!("key {:?} is null", names::shown(&key, 64)));
        } else if key.is_empty() || key.len() > MAX_ID_BYTES {
            problems.add(|| format!("a key of {} bytes (1 to {MAX_ID_BYTES})", key.len()));
        } else {
            out.update_at(&provider, &entry.service, &names::safe(&key), value, message.received_us);
        }
    }
    Ok(())
}
