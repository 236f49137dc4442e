//! A template hub adapter. Copy this folder, rename the crate and the manifest's `id`, and change the mapping.
//!
//! What it does:
//! - A JSON value published on `city/<device>/<resource>` becomes the resource `<prefix><device>/sensors/<resource>`
//!   (timestamped with the time the hub received it). Malformed topics and payloads are logged and skipped.
//! - The first time it sees a device it declares the device's `switch/set` action (parameter `on`, boolean).
//! - ACT `switch/set {"on": true}` publishes `{"on": true}` on `city/<device>/cmd`.
//! - Every tick it marks devices silent for longer than `stale_after_s` as `sensors/stale = true`.
//! - It remembers when it last heard from each device in its key-value state, so a restart or an upgrade
//!   keeps that knowledge.

use std::collections::BTreeMap;

use hub_plugin_sdk::prelude::*;

/// The state key holding `device -> last heard (µs)`.
const LAST_SEEN: &str = "last_seen";

/// The adapter's configuration (the manifest's `[config]` table).
pub struct Template {
    /// Prepended to the device name to make the provider name; must match the granted namespace.
    prefix: String,
    /// After how long without a message a device counts as stale.
    stale_after_us: i64,
}

impl Template {
    fn device_of<'a>(&self, provider: &'a str) -> Option<&'a str> {
        provider.strip_prefix(self.prefix.as_str())
    }
}

impl Adapter for Template {
    fn init(ctx: &mut Context<'_>, config: Value) -> Result<Self, String> {
        let prefix = config.get("prefix").and_then(Value::as_str).unwrap_or("tmpl-").to_owned();
        let stale_after_s = config.get("stale_after_s").and_then(Value::as_i64).unwrap_or(300);
        if stale_after_s <= 0 {
            return Err("config.stale_after_s must be a positive number of seconds".to_owned());
        }
        ctx.info(format!("mapping city/+/+ to {prefix}<device>"));
        Ok(Template { prefix, stale_after_us: stale_after_s.saturating_mul(1_000_000) })
    }

    fn on_messages(&mut self, ctx: &mut Context<'_>, batch: &[InboundMessage]) -> Output {
        let mut out = Output::new();
        let mut last_seen: BTreeMap<String, i64> = ctx.state_get_json(LAST_SEEN).unwrap_or_default();
        for message in batch {
            let mut parts = message.address.split('/');
            let (Some("city"), Some(device), Some(resource), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                ctx.warn(format!("ignored topic {}", message.address));
                continue;
            };
            let value = match message.payload.json::<Value>() {
                Ok(value) => value,
                Err(e) => {
                    ctx.warn(format!("{}: payload is not JSON: {e}", message.address));
                    continue;
                }
            };
            let provider = format!("{}{device}", self.prefix);
            if last_seen.insert(device.to_owned(), message.received_us).is_none() {
                out.model(
                    &provider,
                    json!({ "services": { "switch": { "resources": {
                        "set": { "kind": "action", "type": "object", "parameters": { "on": "boolean" } }
                    } } } }),
                );
            }
            out.update_at(&provider, "sensors", resource, value, message.received_us);
            out.update_at(&provider, "sensors", "stale", false, message.received_us);
        }
        ctx.state_set_json(LAST_SEEN, &last_seen);
        out
    }

    fn on_act(&mut self, _ctx: &mut Context<'_>, request: &ActRequest, out: &mut Output) -> Result<Value, String> {
        let device = self.device_of(&request.provider).ok_or("not a device of this adapter")?;
        if (request.service.as_str(), request.resource.as_str()) != ("switch", "set") {
            return Err(format!("unknown action {}/{}", request.service, request.resource));
        }
        let on = request.params.get("on").and_then(Value::as_bool).ok_or("parameter `on` must be a boolean")?;
        out.send(OutboundMessage::mqtt(&format!("city/{device}/cmd"), json!({ "on": on }).to_string()));
        Ok(json!({ "sent": { "on": on } }))
    }

    fn on_tick(&mut self, ctx: &mut Context<'_>) -> Output {
        let mut out = Output::new();
        let last_seen: BTreeMap<String, i64> = ctx.state_get_json(LAST_SEEN).unwrap_or_default();
        for (device, at) in &last_seen {
            if ctx.now_us().saturating_sub(*at) > self.stale_after_us {
                out.update(&format!("{}{device}", self.prefix), "sensors", "stale", true);
            }
        }
        out
    }
}

export_adapter!(Template);

#[cfg(test)]
mod tests {
    use super::*;
    use hub_plugin_sdk::testkit::TestKit;

    fn kit() -> TestKit<Template> {
        TestKit::new(json!({ "prefix": "t-", "stale_after_s": 60 })).unwrap()
    }

    #[test]
    fn readings_become_resources() {
        let mut kit = kit();
        let out = kit.messages(vec![
            InboundMessage::mqtt("city/7/temperature", "21.5", 1_000),
            InboundMessage::mqtt("city/7/humidity", "40", 2_000),
        ]);
        assert_eq!(out.models.len(), 1, "the switch action is declared once per new device");
        let temp = &out.updates[0];
        assert_eq!((temp.provider.as_str(), temp.resource.as_str()), ("t-7", "temperature"));
        assert_eq!(temp.value, json!(21.5));
        assert_eq!(temp.timestamp_us, Some(1_000));
    }

    #[test]
    fn malformed_input_is_logged_and_skipped() {
        let mut kit = kit();
        let out = kit
            .messages(vec![InboundMessage::mqtt("city/7", "1", 0), InboundMessage::mqtt("city/7/t", "{not json", 0)]);
        assert!(out.updates.is_empty());
        assert_eq!(out.logs.len(), 2);
    }

    #[test]
    fn act_publishes_a_command() {
        let mut kit = kit();
        let (result, out) = kit.act("t-7", "switch", "set", json!({ "on": true })).unwrap();
        assert_eq!(result, json!({ "sent": { "on": true } }));
        assert_eq!(out.outbound[0].address, "city/7/cmd");
        assert_eq!(out.outbound[0].payload.as_str(), Some(r#"{"on":true}"#));
        assert!(kit.act("t-7", "switch", "set", json!({ "on": "yes" })).is_err());
        assert!(kit.act("other-7", "switch", "set", json!({ "on": true })).is_err());
    }

    #[test]
    fn silent_devices_go_stale_and_state_survives_a_restart() {
        let mut kit = kit();
        kit.messages(vec![InboundMessage::mqtt("city/7/t", "1", 0)]);
        kit.set_now(61_000_000);
        let out = kit.tick();
        assert_eq!(out.updates[0].resource, "stale");
        assert_eq!(out.updates[0].value, json!(true));

        let mut restarted =
            TestKit::<Template>::with_state("t", json!({ "prefix": "t-", "stale_after_s": 60 }), kit.into_state())
                .unwrap();
        restarted.set_now(61_000_000);
        assert_eq!(restarted.tick().updates.len(), 1, "last-seen times survived the restart");
    }
}
