//! ACT on a SOX actuator: a `transducerSetValue` published on the device's data node.
//!
//! `sox-act/<resource> {"value": v}` on provider `P` publishes, on node `<original device name>_data`,
//!
//! ```xml
//! <data><transducerSetValue id="<original transducer id>" typedValue="<v>" timestamp="<now, RFC 3339 UTC>"/></data>
//! ```
//!
//! with the metadata `server` set to the connection the device's items last arrived on (when known).

use hub_plugin_sdk::prelude::*;

use crate::devices::Record;
use crate::names;
use crate::sox;

/// The service of the actuators' action resources.
pub const SERVICE: &str = "sox-act";

/// The action's one parameter.
pub const PARAMETER: &str = "value";

/// Builds the publish for `request` on the device of `record`, stamped `now_us`; returns what the caller gets
/// back.
pub fn publish(record: &Record, request: &ActRequest, now_us: i64, out: &mut Output) -> Result<Value, String> {
    let id = record.actuators.get(&request.resource).ok_or_else(|| {
        format!(
            "{}/{}/{} is not an actuator of device {:?} (its meta says no canActuate=\"true\" transducer has that id)",
            request.provider,
            request.service,
            request.resource,
            names::shown(&record.name, 64)
        )
    })?;
    let value = match request.params.get(PARAMETER) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(other) => {
            return Err(format!("parameter {PARAMETER:?} must be a string, a number or a boolean, not {other}"));
        }
        None => return Err(format!("missing parameter {PARAMETER:?}")),
    };
    if let Some(extra) = request.params.keys().find(|k| *k != PARAMETER) {
        return Err(format!("unknown parameter {extra:?} (the only one is {PARAMETER:?})"));
    }
    let timestamp = sox::rfc3339_utc(now_us).ok_or_else(|| format!("the time {now_us} µs is out of range"))?;
    let xml = format!(
        r#"<data><transducerSetValue id="{}" typedValue="{}" timestamp="{timestamp}"/></data>"#,
        names::xml_attribute(id).map_err(|e| format!("transducer id: {e}"))?,
        names::xml_attribute(&value).map_err(|e| format!("parameter {PARAMETER:?}: {e}"))?,
    );
    let node = format!("{}_data", record.name);
    let mut message = OutboundMessage::new(transport::XMPP, &node, xml);
    if let Some(server) = &record.server {
        message.metadata.insert("server".to_owned(), server.clone());
    }
    out.send(message);
    Ok(json!({ "sent": { "node": node, "id": id, "typedValue": value, "timestamp": timestamp } }))
}
