//! The hub's official MQTT adapter (plugin id `mqtt`): pure guest code that turns the MQTT messages the host
//! delivers into resource updates and model documents, and ACT requests into MQTT commands.
//!
//! - **Default topic scheme** (config `default_scheme`, on by default): `hub/up/{provider}/{service}/{resource}`
//!   carries one value, `hub/senml/{provider}` a SenML pack, `hub/model/{provider}` a model document; ACT
//!   publishes `{"id", "params"}` on `hub/down/{provider}/{service}/{resource}`.
//! - **Mappings** (config `mappings`) adapt existing devices: a topic pattern with named captures, templates
//!   for the provider, service and resource names, JSON pointers into the payload, type coercion, units and
//!   timestamps. **ACT templates** (config `acts`) render the command topic and payload from the provider's
//!   captures, which plugin state keeps across restarts.
//! - Every update is checked against the hub's rules before it is emitted, so one bad message is skipped with a
//!   (rate-limited) warning and never costs the rest of its batch. Nothing panics on input.
//!
//! `docs/adapters/mqtt.md` is the user's reference.

mod act;
mod config;
mod mapping;
mod memory;
mod names;
mod pattern;
mod pointer;
mod report;
mod scheme;
mod senml;
mod values;

#[cfg(test)]
mod tests;

use hub_plugin_sdk::prelude::*;

use crate::{
    act::ActIds,
    config::Config,
    mapping::{Matched, Scratch},
    memory::Memory,
    report::{MAX_UPDATES_PER_CALL, Quoted, Sink},
};

/// The MQTT adapter.
pub struct MqttAdapter {
    config: Config,
    memory: Memory,
    ids: ActIds,
}

impl Adapter for MqttAdapter {
    fn init(ctx: &mut Context<'_>, config: Value) -> Result<Self, String> {
        let config = Config::parse(config)?;
        ctx.info(format!(
            "default topic scheme {}, {} mappings, {} ACT templates",
            if config.default_scheme { "on" } else { "off" },
            config.mappings.len(),
            config.acts.len()
        ));
        Ok(MqttAdapter { memory: Memory::load(ctx), ids: ActIds::load(ctx), config })
    }

    fn on_messages(&mut self, ctx: &mut Context<'_>, batch: &[InboundMessage]) -> Output {
        let MqttAdapter { config, memory, .. } = self;
        let mut sink = Sink::new(ctx);
        sink.out.updates.reserve(batch.len());
        let mut levels: Vec<&str> = Vec::with_capacity(16);
        let mut captures: Vec<&str> = Vec::with_capacity(8);
        let mut scratch = Scratch::default();
        for message in batch {
            let topic = message.address.as_str();
            if message.transport != transport::MQTT {
                sink.skip(topic, format_args!("not an MQTT message (transport {})", Quoted(&message.transport)));
                continue;
            }
            if sink.full() {
                sink.skip(topic, format_args!("skipped: this call already returns {MAX_UPDATES_PER_CALL} updates"));
                continue;
            }
            levels.clear();
            levels.extend(topic.split('/'));
            let matched = config.mappings.iter().enumerate().find(|(_, m)| m.topic.matches(&levels, &mut captures));
            if let Some((index, mapping)) = matched {
                let matched = Matched { config, mapping, index, message, captures: &captures };
                mapping::apply(matched, memory, &mut sink, &mut scratch);
                continue;
            }
            if !config.default_scheme || levels.first() != Some(&scheme::ROOT) {
                sink.unmatched(topic);
                continue;
            }
            let max = config.max_payload_bytes;
            match levels.get(1).copied() {
                Some(scheme::UP) => scheme::up(&mut sink, message, &levels, max),
                Some(scheme::SENML) => {
                    senml::pack(&mut sink, memory, message, &levels, max);
                }
                Some(scheme::MODEL) => scheme::model(&mut sink, message, &levels, max),
                _ => {
                    sink.unmatched(topic);
                    continue;
                }
            }
            if let Some(provider) = levels.get(2).filter(|p| names::name_problem(p).is_none()) {
                let broker = message.metadata.get("broker").map(String::as_str);
                memory.note_broker(&config.acts, provider, broker);
            }
        }
        sink.finish()
    }

    fn on_act(&mut self, ctx: &mut Context<'_>, request: &ActRequest, out: &mut Output) -> Result<Value, String> {
        act::act(&self.config, &mut self.memory, &mut self.ids, ctx, request, out)
    }
}

export_adapter!(MqttAdapter);
