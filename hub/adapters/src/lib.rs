//! The official protocol adapters, embedded in the hub binary.
//!
//! The build script compiles each adapter in `plugins/` for `wasm32-unknown-unknown` and embeds its module and
//! manifest, so `hub serve` can install them with no step of its own. They are ordinary sandboxed plugins: the
//! runtime checks them, limits them and counts them like any other. What an adapter may do by default is
//! [`Official::default_grant`]; an admin narrows or widens it (within the manifest) with
//! `PUT /api/v1/plugins/{id}/grant`.

use hub_runtime::{Capabilities, PubSub, Udp};

/// One official adapter.
#[derive(Debug)]
pub struct Official {
    /// The plugin id (`mqtt`, ...).
    pub id: &'static str,
    /// Its manifest, with the module's sha256 filled in.
    pub manifest: &'static str,
    /// The WebAssembly module.
    pub wasm: &'static [u8],
    /// The module's SHA-256, lowercase hex.
    pub sha256: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/official.rs"));

/// Where this hub's host transports listen, for the adapters whose capabilities name a port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostPorts {
    /// The UDP port of the GWMP listener (LoRa gateways), when it runs.
    pub gwmp: Option<u16>,
}

impl Official {
    /// The adapter called `id`, if it is an official one.
    pub fn get(id: &str) -> Option<&'static Official> {
        OFFICIAL.iter().find(|o| o.id == id)
    }

    /// The ids of every official adapter.
    pub fn ids() -> impl Iterator<Item = &'static str> {
        OFFICIAL.iter().map(|o| o.id)
    }

    /// The manifest to install on this hub. UDP ports in an official manifest stand for the hub's GWMP
    /// listener, wherever it is configured: they are set to `ports.gwmp` (and removed when GWMP is off), so the
    /// LoRaWAN adapter requests exactly the port its gateways send to.
    pub fn manifest_for(&self, ports: HostPorts) -> Result<String, String> {
        let mut table: toml::Table = toml::from_str(self.manifest).map_err(|e| format!("{}: {e}", self.id))?;
        let udp =
            table.get_mut("capabilities").and_then(toml::Value::as_table_mut).filter(|caps| caps.contains_key("udp"));
        let Some(capabilities) = udp else {
            return Ok(self.manifest.to_owned());
        };
        match ports.gwmp {
            Some(port) => {
                let mut udp = toml::Table::new();
                udp.insert("ports".into(), toml::Value::Array(vec![toml::Value::Integer(i64::from(port))]));
                capabilities.insert("udp".into(), toml::Value::Table(udp));
            }
            None => {
                capabilities.remove("udp");
            }
        }
        toml::to_string(&table).map_err(|e| format!("{}: {e}", self.id))
    }

    /// What the hub grants the adapter when it installs it: the documented default scheme, nothing more.
    pub fn default_grant(&self, ports: HostPorts) -> Capabilities {
        let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        match self.id {
            "mqtt" => Capabilities {
                providers: strings(&["*"]),
                mqtt: PubSub {
                    subscribe: strings(&["hub/up/#", "hub/senml/+", "hub/model/+"]),
                    publish: strings(&["hub/down/#"]),
                },
                ..Capabilities::default()
            },
            "coap" => Capabilities {
                providers: strings(&["*"]),
                coap: PubSub { subscribe: strings(&["/up", "/up/*", "//*"]), publish: strings(&["//*"]) },
                ..Capabilities::default()
            },
            "lorawan" => Capabilities {
                providers: strings(&["lora-*"]),
                udp: Udp { ports: ports.gwmp.into_iter().collect() },
                mqtt: PubSub {
                    subscribe: strings(&["application/+/device/+/event/up", "v3/+/devices/+/up"]),
                    publish: Vec::new(),
                },
                ..Capabilities::default()
            },
            "xmpp" => Capabilities {
                providers: strings(&["*"]),
                xmpp: PubSub { subscribe: strings(&["*_meta", "*_data"]), publish: strings(&["*_data"]) },
                ..Capabilities::default()
            },
            _ => Capabilities::default(),
        }
    }

    /// `grant` carried over to this hub's ports: the UDP ports of a grant that had any become `ports.gwmp`;
    /// everything else an admin chose is kept.
    pub fn regrant(&self, grant: &Capabilities, ports: HostPorts) -> Capabilities {
        let mut grant = grant.clone();
        if !grant.udp.ports.is_empty() {
            grant.udp.ports = ports.gwmp.into_iter().collect();
        }
        grant
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_official_adapter_parses_and_its_default_grant_is_within_its_request() {
        assert_eq!(Official::ids().collect::<Vec<_>>(), ["mqtt", "coap", "lorawan", "xmpp"]);
        for ports in [HostPorts { gwmp: Some(1700) }, HostPorts { gwmp: Some(41_700) }, HostPorts { gwmp: None }] {
            for official in OFFICIAL {
                let manifest = hub_runtime::Manifest::parse(&official.manifest_for(ports).unwrap()).unwrap();
                assert_eq!(manifest.id, official.id);
                assert_eq!(manifest.sha256, official.sha256);
                let grant = official.default_grant(ports);
                assert!(grant.validate().is_empty(), "{}", official.id);
                assert_eq!(grant.check_subset_of(&manifest.capabilities), vec![], "{} with {ports:?}", official.id);
                assert!(official.wasm.starts_with(b"\0asm"), "{} is not a wasm module", official.id);
            }
        }
        assert!(Official::get("nope").is_none());
    }

    #[test]
    fn the_lorawan_adapter_follows_the_gwmp_port() {
        let lorawan = Official::get("lorawan").unwrap();
        let here = HostPorts { gwmp: Some(41_700) };
        let manifest = hub_runtime::Manifest::parse(&lorawan.manifest_for(here).unwrap()).unwrap();
        assert_eq!(manifest.capabilities.udp.ports, [41_700]);
        assert_eq!(lorawan.default_grant(here).udp.ports, [41_700]);
        // The embedded manifest's other requests and its configuration survive the rewrite.
        let original = hub_runtime::Manifest::parse(lorawan.manifest).unwrap();
        assert_eq!(original.capabilities.udp.ports, [1700]);
        assert_eq!(manifest.capabilities.mqtt, original.capabilities.mqtt);
        assert_eq!(manifest.config, original.config);
        // A grant moved to another port keeps what the admin narrowed.
        let mut narrowed = lorawan.default_grant(HostPorts { gwmp: Some(1700) });
        narrowed.mqtt.subscribe.clear();
        let moved = lorawan.regrant(&narrowed, here);
        assert_eq!(moved.udp.ports, [41_700]);
        assert!(moved.mqtt.subscribe.is_empty());
        // Without GWMP the adapter requests no UDP port at all.
        let off = hub_runtime::Manifest::parse(&lorawan.manifest_for(HostPorts::default()).unwrap()).unwrap();
        assert!(off.capabilities.udp.ports.is_empty());
        // Adapters without UDP keep their manifest text as embedded.
        let mqtt = Official::get("mqtt").unwrap();
        assert_eq!(mqtt.manifest_for(here).unwrap(), mqtt.manifest);
    }
}
