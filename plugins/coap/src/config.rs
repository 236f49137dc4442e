//! The adapter's configuration (the manifest's `[config]`, or what an admin set), checked in full at `init`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::names;
use crate::values::cf;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The path prefix devices send readings under.
    pub up_path: String,
    /// The most records read from one SenML pack.
    pub max_records: usize,
    /// Observed device resources and where their notifications go.
    pub observe: Vec<ObserveEntry>,
    /// Providers that are CoAP devices: where ACT sends its request.
    pub devices: Vec<DeviceEntry>,
}

impl Default for Config {
    fn default() -> Self {
        Config { up_path: "/up".to_owned(), max_records: 1000, observe: Vec::new(), devices: Vec::new() }
    }
}

/// Where the notifications of one observed resource go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObserveEntry {
    /// The observed URI, as in the hub's `[[coap.observe]]` (`coap://host[:port]/path`).
    pub uri: String,
    /// The provider its values belong to.
    pub provider: String,
    /// The service (default `coap`); with SenML, left out when record names carry it.
    #[serde(default)]
    pub service: Option<String>,
    /// The resource (default: the last path segment of the URI); with SenML, left out when record names carry
    /// it.
    #[serde(default)]
    pub resource: Option<String>,
    /// How to read the payload.
    #[serde(default)]
    pub content: Content,
}

/// How a notification's payload is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Content {
    /// By its Content-Format (JSON when it has none).
    #[default]
    Auto,
    /// JSON, whatever the Content-Format says.
    Json,
    /// CBOR.
    Cbor,
    /// A SenML JSON pack.
    SenmlJson,
    /// A SenML CBOR pack.
    SenmlCbor,
    /// UTF-8 text (a number or `true`/`false` when it parses as one).
    Text,
}

impl Content {
    /// The Content-Format to read a payload as, given the one it arrived with.
    pub fn format(self, arrived: Option<u16>) -> Option<u16> {
        match self {
            Content::Auto => arrived,
            Content::Json => Some(cf::JSON),
            Content::Cbor => Some(cf::CBOR),
            Content::SenmlJson => Some(cf::SENML_JSON),
            Content::SenmlCbor => Some(cf::SENML_CBOR),
            Content::Text => Some(cf::TEXT),
        }
    }
}

/// A provider that is a CoAP device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceEntry {
    /// The provider name.
    pub provider: String,
    /// The request URI, a template: `{provider}`, `{service}`, `{resource}` and `{<parameter>}` are replaced
    /// (percent-encoded), e.g. `coap://10.0.0.8/actuators/{resource}?level={level}`.
    pub uri: String,
    /// `POST` (default), `PUT`, `GET` or `DELETE`.
    #[serde(default)]
    pub method: Option<String>,
    /// How the parameters are sent: 50 JSON (default), 60 CBOR, 0 text (a single parameter's value).
    #[serde(default = "default_format")]
    pub content_format: u16,
    /// Whether the request is confirmable (default true).
    #[serde(default = "yes")]
    pub confirmable: bool,
    /// The actions the device has, declared on the hub: `"service/resource"` → parameter types
    /// (`{"on": "boolean"}`). Empty: any action of the provider is forwarded.
    #[serde(default)]
    pub actions: BTreeMap<String, Value>,
}

fn default_format() -> u16 {
    cf::JSON
}

fn yes() -> bool {
    true
}

impl Config {
    /// Parses and checks the configuration; the error names the entry.
    pub fn parse(value: Value) -> Result<Config, String> {
        let value = if value.is_null() { Value::Object(Default::default()) } else { value };
        let config: Config = serde_json::from_value(value).map_err(|e| format!("config: {e}"))?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        if !self.up_path.starts_with('/') || self.up_path.ends_with('/') {
            return Err("config.up_path: must start with / and not end with / (e.g. \"/up\")".to_owned());
        }
        if self.max_records == 0 {
            return Err("config.max_records: must be greater than 0".to_owned());
        }
        for (i, entry) in self.observe.iter().enumerate() {
            let key = format!("config.observe[{i}]");
            if names::address_of(&entry.uri).is_none() {
                return Err(format!("{key}.uri: {:?} is not coap://host[:port]/path", entry.uri));
            }
            let named = [
                ("provider", Some(&entry.provider)),
                ("service", entry.service.as_ref()),
                ("resource", entry.resource.as_ref()),
            ];
            for (field, name) in named {
                if let Some(name) = name
                    && !names::is_valid(name)
                {
                    return Err(format!("{key}.{field}: {name:?} is not a valid name"));
                }
            }
        }
        for (i, device) in self.devices.iter().enumerate() {
            let key = format!("config.devices[{i}]");
            if !names::is_valid(&device.provider) {
                return Err(format!("{key}.provider: {:?} is not a valid name", device.provider));
            }
            if self.devices[..i].iter().any(|d| d.provider == device.provider) {
                return Err(format!("{key}.provider: {:?} is configured twice", device.provider));
            }
            crate::act::check_template(&device.uri).map_err(|e| format!("{key}.uri: {e}"))?;
            if let Some(method) = &device.method
                && !["POST", "PUT", "GET", "DELETE"].contains(&method.to_ascii_uppercase().as_str())
            {
                return Err(format!("{key}.method: must be POST, PUT, GET or DELETE"));
            }
            if ![cf::TEXT, cf::JSON, cf::CBOR].contains(&device.content_format) {
                return Err(format!("{key}.content_format: must be 0 (text), 50 (JSON) or 60 (CBOR)"));
            }
            for (action, parameters) in &device.actions {
                let parts: Vec<&str> = action.split('/').collect();
                if parts.len() != 2 || !parts.iter().all(|p| names::is_valid(p)) {
                    return Err(format!("{key}.actions: {action:?} is not service/resource"));
                }
                if !parameters.is_object() {
                    return Err(format!("{key}.actions.{action}: parameters must be an object of types"));
                }
            }
        }
        Ok(())
    }
}
