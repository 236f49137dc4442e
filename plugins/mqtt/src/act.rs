//! ACT: an action on a provider this plugin owns becomes an MQTT message, rendered by the first matching ACT
//! template, else published on `hub/down/{provider}/{service}/{resource}` as `{"id", "params"}`.

use hub_plugin_sdk::prelude::*;

use crate::{
    config::{ActTemplate, Config},
    memory::Memory,
    pattern::Slot,
    report::Quoted,
    scheme::{DOWN, ROOT},
};

/// The state key holding the reserved request ids (see [`ActIds`]).
const ID_RESERVATION_KEY: &str = "act_ids";
/// How many ids (microseconds) one reservation covers.
const ID_BLOCK: i64 = 60_000_000;
/// The longest MQTT topic.
const MAX_TOPIC_BYTES: usize = 65_535;

/// Request ids: microseconds since the epoch, strictly increasing, unique across restarts even if the clock
/// goes back. State holds a reservation; every id issued is below it, a new instance starts above it, and it
/// moves forward by a block at a time, so it costs one state write per minute of ids at most.
#[derive(Debug)]
pub struct ActIds {
    next: i64,
    reserved_until: i64,
}

impl ActIds {
    /// Starts above every id an earlier instance may have issued.
    pub fn load(ctx: &mut Context<'_>) -> ActIds {
        let reserved: i64 = ctx.state_get_json(ID_RESERVATION_KEY).unwrap_or(0);
        ActIds { next: reserved, reserved_until: reserved }
    }

    /// The next id.
    pub fn next(&mut self, ctx: &mut Context<'_>) -> String {
        let id = self.next.max(ctx.now_us());
        self.next = id.saturating_add(1);
        if id >= self.reserved_until {
            self.reserved_until = id.saturating_add(ID_BLOCK);
            ctx.state_set_json(ID_RESERVATION_KEY, &self.reserved_until);
        }
        id.to_string()
    }
}

/// Carries out one ACT: the command goes into `out`, the result (`{"id", "topic"}`) back to the caller.
pub fn act(
    config: &Config,
    memory: &mut Memory,
    ids: &mut ActIds,
    ctx: &mut Context<'_>,
    request: &ActRequest,
    out: &mut Output,
) -> Result<Value, String> {
    let (provider, service, resource) = (&request.provider, &request.service, &request.resource);
    let (topic, id, mut message) = match config.acts.iter().find(|t| t.handles(provider, service, resource)) {
        Some(template) => {
            let (topic, payload, id) = render(template, memory, ids, ctx, request)?;
            let mut message = OutboundMessage::mqtt(&topic, payload);
            message.metadata = template.metadata.clone();
            (topic, id, message)
        }
        None if config.default_scheme => {
            let topic = format!("{ROOT}/{DOWN}/{provider}/{service}/{resource}");
            let id = ids.next(ctx);
            let payload = json!({ "id": id, "params": request.params }).to_string();
            (topic.clone(), id, OutboundMessage::mqtt(&topic, payload))
        }
        None => {
            return Err(format!(
                "no ACT template handles {provider}/{service}/{resource} and the default scheme is off"
            ));
        }
    };
    if !message.metadata.contains_key("broker")
        && let Some(bridge) = memory.broker(provider)
    {
        message.metadata.insert("broker".to_owned(), bridge.to_owned());
    }
    out.send(message);
    Ok(json!({ "id": id, "topic": topic }))
}

/// Renders a template's topic and payload; returns them with the request id.
fn render(
    template: &ActTemplate,
    memory: &mut Memory,
    ids: &mut ActIds,
    ctx: &mut Context<'_>,
    request: &ActRequest,
) -> Result<(String, String, String), String> {
    let provider = request.provider.as_str();
    let captures = match template.uses_captures {
        true => Some(memory.captures(ctx, provider).ok_or_else(|| {
            format!("no topic captures are known for {provider}: it has not published on a mapped topic yet")
        })?),
        false => None,
    };
    let capture = |name: &str| {
        captures
            .as_ref()
            .and_then(|c| c.get(name))
            .map(|v| &**v)
            .ok_or_else(|| format!("the capture {{{name}}} is not known for {provider}"))
    };
    let mut topic = String::new();
    template.topic.render(&mut topic, |slot, buf| {
        match slot {
            Slot::Provider => buf.push_str(provider),
            Slot::Service => buf.push_str(&request.service),
            Slot::Resource => buf.push_str(&request.resource),
            Slot::Named(name) => buf.push_str(capture(name)?),
            Slot::Capture(_) | Slot::Id | Slot::Params | Slot::Param(_) => {}
        }
        Ok::<(), String>(())
    })?;
    if topic.is_empty() || topic.len() > MAX_TOPIC_BYTES || topic.contains(['+', '#', '\0']) {
        return Err(format!("the rendered topic {} cannot be published on", Quoted(&topic)));
    }
    let id = ids.next(ctx);
    let mut payload = String::new();
    template.payload.render(&mut payload, |slot, buf| {
        match slot {
            Slot::Id => push_escaped(buf, &id),
            Slot::Provider => push_escaped(buf, provider),
            Slot::Service => push_escaped(buf, &request.service),
            Slot::Resource => push_escaped(buf, &request.resource),
            Slot::Named(name) => push_escaped(buf, capture(name)?),
            Slot::Params => buf.push_str(&Value::Object(request.params.clone()).to_string()),
            Slot::Param(name) => {
                let value = request.params.get(&**name).ok_or_else(|| format!("missing parameter {name:?}"))?;
                buf.push_str(&value.to_string());
            }
            Slot::Capture(_) => {}
        }
        Ok::<(), String>(())
    })?;
    Ok((topic, payload, id))
}

/// Appends `text` escaped as the inside of a JSON string, so `"{name}"` in a payload stays valid JSON.
fn push_escaped(buf: &mut String, text: &str) {
    let quoted = Value::from(text).to_string();
    buf.push_str(quoted.get(1..quoted.len() - 1).unwrap_or_default());
}
