//! The official CoAP adapter: what devices send to the hub's CoAP endpoint, and what the hub observes on them,
//! becomes resource updates; ACT on a CoAP device becomes a request to it.
//!
//! - `POST`/`PUT /up/{provider}/{service}/{resource}` with JSON (50), CBOR (60), text (0) or no Content-Format:
//!   a value, or the envelope `{"value": .., "timestamp": ..}` (RFC 3339 text, or milliseconds since the
//!   epoch, as in the MQTT adapter).
//! - SenML JSON (110) and SenML CBOR (112) packs at `/up`, `/up/{provider}`, `/up/{provider}/{service}` or the
//!   full path: the path's segments come first, then `bn` + `n`, and together they must name
//!   `provider/service/resource`.
//! - Notifications of observed resources (addresses `//host:port/path`) map through `config.observe` (uri →
//!   provider, service, resource, content), or, without an entry, through the transport's `provider` hint to
//!   `{hint}/coap/{last path segment}`.
//! - ACT on a provider listed in `config.devices` sends a CoAP request to the device's URI template, with the
//!   parameters as JSON, CBOR or text; the device's declared `actions` are published as the provider's model.
//!
//! Bad input (an undecodable payload, a bad name, a wrong type, a malformed record) is logged as a warning and
//! skipped; the rest of the batch, and of a SenML pack, applies. Nothing here panics on input.

pub mod act;
pub mod cbor;
pub mod config;
pub mod names;
pub mod senml;
pub mod values;

use hub_plugin_sdk::prelude::*;

use crate::config::{Config, Content, ObserveEntry};
use crate::values::cf;

/// The state key holding the model documents last declared, so they are sent again only when they change.
const DECLARED: &str = "declared";

/// The service of observed values that name none.
const DEFAULT_SERVICE: &str = "coap";

/// The adapter.
pub struct CoapAdapter {
    config: Config,
}

impl Adapter for CoapAdapter {
    fn init(ctx: &mut Context<'_>, config: Value) -> Result<Self, String> {
        let config = Config::parse(config)?;
        ctx.info(format!(
            "mapping {}/..., {} observed resources, {} devices",
            config.up_path,
            config.observe.len(),
            config.devices.len()
        ));
        Ok(CoapAdapter { config })
    }

    fn on_messages(&mut self, ctx: &mut Context<'_>, batch: &[InboundMessage]) -> Output {
        let mut out = Output::new();
        self.declare(ctx, &mut out);
        for message in batch {
            if let Err(reason) = self.map(ctx, message, &mut out) {
                ctx.warn(format!("{}: {reason}", message.address));
            }
        }
        out
    }

    fn on_act(&mut self, _ctx: &mut Context<'_>, request: &ActRequest, out: &mut Output) -> Result<Value, String> {
        let device = self
            .config
            .devices
            .iter()
            .find(|d| d.provider == request.provider)
            .ok_or_else(|| format!("{} is not a CoAP device (no config.devices entry)", request.provider))?;
        act::request(device, request, out)
    }

    fn on_tick(&mut self, ctx: &mut Context<'_>) -> Output {
        let mut out = Output::new();
        self.declare(ctx, &mut out);
        out
    }
}

impl CoapAdapter {
    /// Declares the devices' actions once (and again when the configuration changes them).
    fn declare(&self, ctx: &mut Context<'_>, out: &mut Output) {
        let mut models = Vec::new();
        for device in self.config.devices.iter().filter(|d| !d.actions.is_empty()) {
            let mut services = serde_json::Map::new();
            for (action, parameters) in &device.actions {
                let Some((service, resource)) = action.split_once('/') else { continue };
                let entry = services.entry(service.to_owned()).or_insert_with(|| json!({ "resources": {} }));
                entry["resources"][resource] = json!({ "kind": "action", "type": "object", "parameters": parameters });
            }
            models.push((device.provider.clone(), json!({ "services": services })));
        }
        let fingerprint = serde_json::to_string(&models).unwrap_or_default();
        if ctx.state_get(DECLARED).as_deref() == Some(fingerprint.as_bytes()) {
            return;
        }
        for (provider, model) in models {
            out.model(&provider, model);
        }
        ctx.state_set(DECLARED, fingerprint.as_bytes());
    }

    fn map(&self, ctx: &mut Context<'_>, message: &InboundMessage, out: &mut Output) -> Result<(), String> {
        if message.transport != transport::COAP {
            return Err(format!("not a CoAP message (transport {:?})", message.transport));
        }
        let content_format = match message.metadata.get("content_format") {
            None => None,
            Some(text) => Some(text.parse::<u16>().map_err(|_| format!("content_format {text:?} is not a number"))?),
        };
        if message.address.starts_with("//") {
            return self.notification(ctx, message, content_format, out);
        }
        let rest = message
            .address
            .strip_prefix(self.config.up_path.as_str())
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
            .ok_or_else(|| format!("not under {}", self.config.up_path))?;
        let segments: Vec<&str> = if rest.is_empty() { Vec::new() } else { rest[1..].split('/').collect() };
        self.apply(ctx, message, content_format, &segments, out)
    }

    /// Maps a payload arriving under base name `segments` (provider, service, resource, or a prefix of them
    /// for SenML).
    fn apply(
        &self,
        ctx: &mut Context<'_>,
        message: &InboundMessage,
        content_format: Option<u16>,
        segments: &[&str],
        out: &mut Output,
    ) -> Result<(), String> {
        let payload = message.payload.as_bytes();
        let senml = match content_format {
            Some(cf::SENML_JSON) => Some(
                serde_json::from_slice::<Value>(payload).map_err(|e| format!("SenML JSON pack is not JSON: {e}"))?,
            ),
            Some(cf::SENML_CBOR) => Some(cbor::decode(payload).map_err(|e| format!("SenML CBOR pack: {e}"))?),
            _ => None,
        };
        if let Some(pack) = senml {
            let cbor = content_format == Some(cf::SENML_CBOR);
            let mut warnings = Vec::new();
            let resolved =
                senml::resolve(pack, cbor, segments, message.received_us, self.config.max_records, &mut |w| {
                    warnings.push(w)
                });
            for warning in warnings {
                ctx.warn(format!("{}: {warning}", message.address));
            }
            for update in resolved? {
                out.update_at(&update.provider, &update.service, &update.resource, update.value, update.timestamp_us);
            }
            return Ok(());
        }
        let (provider, service, resource) = names::triple(segments)?;
        let reading = values::reading(values::decode(content_format, payload)?, message.received_us)?;
        out.update_at(&provider, &service, &resource, reading.value, reading.timestamp_us);
        Ok(())
    }

    fn notification(
        &self,
        ctx: &mut Context<'_>,
        message: &InboundMessage,
        content_format: Option<u16>,
        out: &mut Output,
    ) -> Result<(), String> {
        let configured = message.metadata.get("uri");
        let entry = self.config.observe.iter().find(|e| {
            configured == Some(&e.uri) || names::address_of(&e.uri).as_deref() == Some(message.address.as_str())
        });
        let last_segment = || {
            let path = message.address.split('?').next().unwrap_or_default();
            path.rsplit('/').next().filter(|s| names::is_valid(s)).map(str::to_owned)
        };
        let (provider, service, resource, content) = match entry {
            Some(ObserveEntry { provider, service, resource, content, .. }) => {
                (provider.clone(), service.clone(), resource.clone(), *content)
            }
            None => {
                let hint = message
                    .metadata
                    .get("provider")
                    .ok_or("no config.observe entry for this URI and no provider hint")?;
                (hint.clone(), None, None, Content::Auto)
            }
        };
        let format = content.format(content_format);
        let senml = matches!(format, Some(cf::SENML_JSON | cf::SENML_CBOR));
        let parts: Vec<String> = if senml {
            [Some(provider), service, resource].into_iter().flatten().collect()
        } else {
            let resource = resource
                .or_else(last_segment)
                .ok_or("the URI's last path segment is not a valid resource name; set resource in config.observe")?;
            vec![provider, service.unwrap_or_else(|| DEFAULT_SERVICE.to_owned()), resource]
        };
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        self.apply(ctx, message, format, &parts, out)
    }
}

export_adapter!(CoapAdapter);

#[cfg(test)]
mod tests;
